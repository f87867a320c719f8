"""Axis: the loaded model's axis report, calibration thresholds and capping config."""

import altair as alt
import pandas as pd
import streamlit as st

from dashboard import data
from dashboard.context import deployment, guard
from dashboard.render import metrics, table

st.title("Assistant Axis")
dep = guard(deployment)
if dep is None:
    st.stop()
rep = guard(data.axis_report, dep)
if rep is None:
    st.stop()
report, meta = rep["report"], rep["meta"]
at = report.get("at_monitor_layer", {})
st.caption(f"model `{dep.model_id}` · axis folder `{dep.axis_dir or '-'}` · "
           + ("settings of the running replica" if dep.origin == "redis" else "no running replica seen: read from the files")
           + ("" if rep["missing"] else " · axis report published by the replica in Redis" if rep["origin"] == "redis"
              else " · axis report read from the axis folder on this host"))
if rep["missing"]:
    st.warning(rep["missing"])
metrics([("monitor layer", f"{dep.layer} of {meta.get('n_layers', '?')}", None),
         ("|cos(PC1, axis)|", f"{at.get('abs_cos_pc1_axis', float('nan')):.3f}", None),
         ("held-out AUROC", f"{at.get('auroc_heldout', float('nan')):.3f}", None),
         ("roles used", report.get("n_roles_used", "-"), None),
         ("default projection", f"{report.get('default_projection', float('nan')):+.2f}", None)])
st.caption(f"monitor layer rule: {report.get('monitor_layer_rule', '-')}")

c1, c2 = st.columns(2)
with c1:
    ve = at.get("variance_explained") or []
    if ve:
        df = pd.DataFrame({"PC": [f"PC{i + 1}" for i in range(len(ve))], "variance explained": ve})
        st.altair_chart(alt.Chart(df).mark_bar(color="#1565c0").encode(
            x=alt.X("PC:N", sort=None), y=alt.Y("variance explained:Q", axis=alt.Axis(format="%")),
            tooltip=["PC", alt.Tooltip("variance explained:Q", format=".1%")]).properties(
            height=280, title=f"Variance explained by the role PCs (layer {dep.layer})"), width="stretch", key="ve")
with c2:
    per = report.get("per_layer", {})
    if per:
        long = [dict(layer=i, value=v, measure=k.replace("abs_cos_pc1_axis", "|cos(PC1, axis)|")
                     .replace("abs_cos_pc2_axis", "|cos(PC2, axis)|").replace("auroc_heldout", "held-out AUROC")
                     .replace("auroc_fit", "fit AUROC"))
                for k, vals in per.items() for i, v in enumerate(vals) if v is not None]
        chart = alt.Chart(pd.DataFrame(long)).mark_line(point=True).encode(
            x=alt.X("layer:Q"), y=alt.Y("value:Q", scale=alt.Scale(domain=[0, 1])), color="measure:N",
            tooltip=["layer:Q", "measure:N", alt.Tooltip("value:Q", format=".3f")])
        rule = alt.Chart(pd.DataFrame({"layer": [dep.layer]})).mark_rule(strokeDash=[4, 3]).encode(x="layer:Q")
        st.altair_chart((chart + rule).properties(height=280, title="Per layer (dashed: monitor layer)"),
                        width="stretch", key="per-layer")

roles = report.get("roles_along_axis") or []
if roles:
    df = pd.DataFrame(roles).sort_values("projection", ascending=False, kind="stable")
    df["end"] = df["projection"].map(lambda p: "Assistant side (>= 0)" if p >= 0 else "role side (< 0)")
    half = (len(df) + 1) // 2  # at most: both ends together are every role
    n = st.slider("roles shown at each end", 5, half, min(20, half)) if half > 5 else half
    shown = pd.concat([df.head(n), df.tail(n)]).drop_duplicates("role")
    bars = alt.Chart(shown).mark_bar().encode(
        y=alt.Y("role:N", sort=alt.EncodingSortField("projection", order="descending"), title=None,
                axis=alt.Axis(labelOverlap=False, labelLimit=180)),
        x=alt.X("projection:Q", title="projection of the role vector on the axis"),
        color=alt.Color("end:N", scale=alt.Scale(domain=["Assistant side (>= 0)", "role side (< 0)"],
                                                 range=["#1565c0", "#c62828"]), title=None),
        tooltip=["role", alt.Tooltip("projection:Q", format="+.2f")])
    default = alt.Chart(pd.DataFrame({"projection": [report.get("default_projection", 0.0)],
                                      "label": ["default Assistant"]})).mark_rule(color="#2e7d32", strokeWidth=2).encode(
        x="projection:Q", tooltip=["label", alt.Tooltip("projection:Q", format="+.2f")])
    which = f"all {len(df)}" if len(shown) == len(df) else f"{len(shown)} of {len(df)}, the {n} at each end"
    st.altair_chart((bars + default).properties(height=18 * len(shown) + 40, title=f"Roles along the axis: {which} "
                                                "(green: the default Assistant)"), width="stretch", key="roles")
    if len(shown) < len(df):
        st.caption(f"Shown: the {n} roles nearest the Assistant and the {n} farthest from it; the "
                   f"{len(df) - len(shown)} in between are left out (the slider shows more).")

def threshold_rows(dep) -> list[dict]:
    """One row per detector and level: the statistic, its threshold, and how the calibration set it."""
    th, drift = dep.thresholds, dep.drift
    if drift.get("baseline", "session") == "session":
        name, what = "drift", "running score minus the session's opening reply"
        rules = ("10% of benign calibration conversations fall this far below their opening",
                 "1% of them (half the 2% false-alert budget)",
                 "below every benign conversation, and at least the axis gap (default minus in-role median)")
    else:
        name, what = "level", "running score (absolute)"
        rules = ("the configured or calibrated watch level", "warning level", "critical level")
    rows = [dict(detector=name, state=s, below=v, rule=f"{what}: {r}")
            for s, v, r in zip(("watch", "warning", "critical"), (th.watch, th.warning, th.critical), rules)]
    level = drift.get("level_thresholds")
    if level:
        rules = ("10% of benign calibration conversations go this low", "1% of them (the other half of the budget)",
                 "below every benign conversation and at most the median in-role answer")
        rows += [dict(detector="level", state=s, below=v, rule=f"running score (EWMA {drift.get('level_alpha')}), "
                      f"absolute, armed from the min_tokens-th token (first reply included): {r}")
                 for s, v, r in zip(("watch", "warning", "critical"), level, rules)]
    return rows


c3, c4 = st.columns([3, 2])
with c3:
    st.subheader("Alert rule: detectors and thresholds")
    table(pd.DataFrame(threshold_rows(dep)), "thresholds", {"detector": 60, "state": 65, "below": 95, "rule": 230},
          column_config={"below": st.column_config.NumberColumn("statistic below", format="%+.3f")})
    st.caption("A session's state is the highest level any detector's statistic reaches; it drops only when every "
               "detector has cleared its bar. Settings: " + ", ".join(f"{k} {v}" for k, v in dep.drift.items()
                                                                     if k != "level_thresholds")
               + f" · policy {dep.policy}")
with c4:
    st.subheader("Capping config")
    cap = dep.capping
    if not cap:
        st.info("No capping config: policy cap cannot act.")
    else:
        st.markdown(f"`{cap.get('id')}`: floors at layers {', '.join(map(str, cap.get('layers', [])))}")
        table(pd.DataFrame({"layer": cap.get("layers", []), "tau (floor)": cap.get("taus", [])}), "taus")
        prov = cap.get("provenance") or {}
        if prov:
            st.caption(" · ".join(f"{k}: {v:.3f}" if isinstance(v, float) else f"{k}: {v}" for k, v in prov.items()))
