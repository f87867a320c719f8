"""Streamlit pieces shared by the pages: the metric row, tables that fit the page, the session view."""

from __future__ import annotations

import zlib

import pandas as pd
import streamlit as st

from dashboard import charts, data
from dashboard.context import ago
from monitor.replay import token_states
from monitor.store.export import session_csv, session_json

STATE_BADGE = {"ok": "🟢 ok", "watch": "🟡 watch", "warning": "🟠 warning", "critical": "🔴 critical"}
EMPTY = "—"  # how a table draws a missing value
DELIVERY_BADGE = {"delivered": "✅ delivered", "pending": "⏳ pending", "retrying": "🔁 retrying",
                  "dead": "☠️ dead-lettered"}


TIME = st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm:ss")
# column widths (px) of the session's tables: each sums to under 780, the data width of a 1280 px window
# (the token table's under 760: its expander's padding takes the rest)
TOKEN_WIDTHS = {"i": 50, "turn": 50, "t": 45, "token": 105, "score": 75, "pre_cap": 75, "capped": 60,
                "running": 75, "drift": 70, "reference": 75, "state": 75}
ALERT_WIDTHS = {"level": 100, "turn": 50, "token": 55, "running": 100, "threshold": 80, "delivery": 130,
                "status": 105, "time": 150}
LIFECYCLE = {"open": "🔔 open", "acknowledged": "👤 acknowledged", "resolved": "✔️ resolved"}


def rows_key(name: str, ids: list[str]) -> str:
    """A table's widget key that changes with its rows: a row selection never outlives the rows it
    was made on (a live refresh that adds a row on top must not shift it onto another one)."""
    return f"{name}-{zlib.crc32(chr(31).join(ids).encode()):08x}"


def when(ts: float | None) -> pd.Timestamp | None:
    return pd.to_datetime(ts, unit="s", utc=True) if ts else None


def metrics(items: list[tuple[str, str | int, str | None]]) -> None:
    """A row of metrics (label, value, help), each as wide as its text: the row wraps onto a second
    line on a narrow page instead of cutting a value off ("war...")."""
    with st.container(horizontal=True, gap="small", horizontal_alignment="distribute"):
        for label, value, tip in items:
            st.metric(label, value, help=tip, width="content")


def table(df: pd.DataFrame, key: str, widths: dict[str, int] | None = None, **kw):
    """A dataframe as wide as the page, never wider: ``widths`` (pixels) for the columns shown, their sum
    within the narrowest page we lay out for (a 1280 px window with the sidebar open); missing values
    drawn as an em dash, not "None"."""
    config = dict(kw.pop("column_config", None) or {})
    for name, w in (widths or {}).items():
        c = config.get(name)
        config[name] = {**(st.column_config.Column(c) if isinstance(c, str) else c or {}), "width": w}
    return st.dataframe(df, hide_index=True, width="stretch", placeholder=EMPTY, key=key, column_config=config, **kw)


def header(view: data.SessionView) -> None:
    s = view.session
    last = view.tokens[-1] if view.tokens else None
    now, peak = data.current_state(view), data.peak_state(view)
    running = last["running"] if view.live and last else s.get("running")
    open_alerts = sum(a.get("status", "open") == "open" and not a.get("acknowledged") for a in view.alerts)
    metrics([("state", STATE_BADGE.get(now, now),
              "the state now: the live tail's while a turn newer than the store is on show"),
             ("peak state", STATE_BADGE.get(peak, peak),
              "the worst state any of its turns ended in or any of its alerts reached"),
             ("running score", "-" if running is None else f"{running:+.2f}", None),
             ("turns", len(view.turns), None), ("scored tokens", len(view.tokens), None),
             ("capped", "yes" if s.get("capped") or view.interventions else "no", None),
             ("open alerts", open_alerts, "neither acknowledged nor resolved")])
    bits = [f"source **{s.get('source', 'live')}**", f"model `{s.get('model_id') or '?'}`",
            f"layer {s.get('layer')}", f"policy {s.get('policy') or '-'}", f"updated {ago(s.get('updated_at'))}"]
    if s.get("interrupted"):
        bits.append("⚠️ **interrupted** (generation was cut off)")
    if view.generating:
        bits.append("🔴 **generating**: the newest turn and the state come from the live tail")
    elif view.live:
        bits.append("the newest turn and the state come from the live tail (not stored yet)")
    st.caption(" · ".join(bits))


def given(view: data.SessionView) -> None:
    """The system prompt the session ran under, and every reply whose client history was edited."""
    seen = data.model_input(view.stored)
    for prompt in seen["system"]:
        st.info(f"**System prompt** {prompt}")
    for e in seen["edits"]:
        with st.expander(f"⚠️ Turn {e['turn']}: the client's history differs from the stored conversation from "
                         f"message {e['diverged_at']}; what the model was given from there"):
            for k, m in enumerate(e["messages"], start=e["diverged_at"]):
                st.markdown(f"`({k}) {m['role']}` {m['content']}")


def session(view: data.SessionView, dep: data.Deployment, key: str = "s", domain=None, compact: bool = False) -> None:
    """A session: header, trajectory chart, heatmap, alerts, interventions, export."""
    if not compact:
        header(view)
        given(view)
    if not view.tokens:
        st.info("No scored assistant tokens in this session yet.")
    st.altair_chart(charts.trajectory(view, dep.thresholds, domain=domain, height=300 if compact else 380),
                    width="stretch", key=f"{key}-chart")
    st.caption("grey: each token's score · blue: running score (EWMA) · purple bars: turn means · purple rings: "
               "pre-cap scores of capped tokens · red dashed: capping switched on · ▼/◆: alerts · "
               "bands: thresholds of the deployment in use")
    st.markdown("**Conversation** (hover a token for its exact score)")
    st.html(charts.heatmap(view, dep.thresholds))
    if compact:
        return
    num = st.column_config.NumberColumn(format="%+.3f")
    with st.expander("Token table (exact values)"):
        table(pd.DataFrame(view.tokens), f"{key}-tokens", TOKEN_WIDTHS,
              column_config=dict.fromkeys(("score", "pre_cap", "running", "drift", "reference"), num))
    st.markdown("**Alerts**")
    if view.alerts:
        df = pd.DataFrame([dict(level=STATE_BADGE.get(a["level"], a["level"]), turn=a["turn"], token=a["token_index"],
                                running=a["score"], threshold=a["threshold"],
                                delivery=DELIVERY_BADGE.get(a["delivery_status"], a["delivery_status"]),
                                status=LIFECYCLE.get(a.get("status", "open"), a.get("status")),
                                time=when(a["created_at"]), event_id=a["event_id"])
                           for a in view.alerts])
        table(df, f"{key}-alerts", ALERT_WIDTHS, column_order=list(ALERT_WIDTHS),
              column_config={"running": st.column_config.NumberColumn("running score", format="%+.2f"),
                             "threshold": st.column_config.NumberColumn(format="%+.2f"), "time": TIME})
        with st.expander("What each alert saw (the reply up to the alerted token), who acknowledged it"):
            for a in view.alerts:
                who = f" · acknowledged by {a['acknowledged_by']}" if a.get("acknowledged_by") else ""
                st.markdown(f"**{a['level']}** at turn {a['turn']} token {a['token_index']}{who}")
                st.text("..." + (a.get("excerpt") or "(no excerpt stored)")[-200:])
    else:
        st.caption("none")
    st.markdown("**Interventions**")
    if view.interventions:
        df = pd.DataFrame([dict(config=i["config_id"], turn=i["turn"], from_token=i["token_index"],
                                layers=", ".join(map(str, i["layers"])), time=when(i["created_at"]))
                           for i in view.interventions])
        table(df, f"{key}-interventions", {"config": 130, "turn": 60, "from_token": 90, "layers": 200, "time": 150},
              column_config={"from_token": "from token", "time": TIME})
    else:
        st.caption("none")
    stored = view.stored
    if stored:
        a, b, _ = st.columns([1, 1, 4])
        a.download_button("Export JSON", session_json(stored), f"{view.id}.json", "application/json", key=f"{key}-json")
        csv = session_csv(stored, token_states(stored["turns"], dep.thresholds, data.drift_config(dep)))
        b.download_button("Export CSV", csv, f"{view.id}.csv", "text/csv", key=f"{key}-csv")
