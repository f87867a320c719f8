"""Streamlit pieces shared by the session, audit and compare views."""

from __future__ import annotations

import zlib

import pandas as pd
import streamlit as st

from dashboard import charts, data
from dashboard.context import ago
from monitor.store.export import session_csv, session_json

STATE_BADGE = {"ok": "🟢 ok", "watch": "🟡 watch", "warning": "🟠 warning", "critical": "🔴 critical"}
DELIVERY_BADGE = {"delivered": "✅ delivered", "pending": "⏳ pending", "retrying": "🔁 retrying",
                  "dead": "☠️ dead-lettered"}


def rows_key(name: str, ids: list[str]) -> str:
    """A table's widget key that changes with its rows: a row selection never outlives the rows it
    was made on (a live refresh that adds a row on top must not shift it onto another one)."""
    return f"{name}-{zlib.crc32(chr(31).join(ids).encode()):08x}"


def when(ts: float | None) -> pd.Timestamp | None:
    return pd.to_datetime(ts, unit="s", utc=True) if ts else None


def header(view: data.SessionView) -> None:
    s = view.session
    last = view.tokens[-1] if view.tokens else None
    state = s.get("state") or (last["state"] if last else "ok")
    running = last["running"] if view.live and last else s.get("running")
    c = st.columns(6)
    c[0].metric("state", STATE_BADGE.get(state, state))
    c[1].metric("running score", "-" if running is None else f"{running:+.2f}")
    c[2].metric("turns", len(view.turns))
    c[3].metric("scored tokens", len(view.tokens))
    c[4].metric("capped", "yes" if s.get("capped") or view.interventions else "no")
    c[5].metric("open alerts", sum(1 for a in view.alerts if not a.get("acknowledged")))
    bits = [f"source **{s.get('source', 'live')}**", f"model `{s.get('model_id') or '?'}`",
            f"layer {s.get('layer')}", f"policy {s.get('policy') or '-'}", f"updated {ago(s.get('updated_at'))}"]
    if s.get("interrupted"):
        bits.append("⚠️ **interrupted** (generation was cut off)")
    if view.generating:
        bits.append("🔴 **generating**: the newest turn comes from the live tail")
    elif view.live:
        bits.append("the newest turn comes from the live tail (not stored yet)")
    st.caption(" · ".join(bits))


def session(view: data.SessionView, dep: data.Deployment, key: str = "s", domain=None, compact: bool = False) -> None:
    """A session: header, trajectory chart, heatmap, alerts, interventions, export."""
    if not compact:
        header(view)
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
    with st.expander("Token table (exact values)"):
        st.dataframe(pd.DataFrame(view.tokens), hide_index=True, width="stretch", key=f"{key}-tokens")
    left, right = st.columns(2)
    with left:
        st.markdown("**Alerts**")
        if view.alerts:
            df = pd.DataFrame([dict(level=a["level"], turn=a["turn"], token=a["token_index"], running=a["score"],
                                    threshold=a["threshold"], delivery=DELIVERY_BADGE.get(a["delivery_status"]),
                                    acknowledged=a["acknowledged"], time=when(a["created_at"]),
                                    event_id=a["event_id"]) for a in view.alerts])
            st.dataframe(df, hide_index=True, width="stretch", key=f"{key}-alerts")
        else:
            st.caption("none")
    with right:
        st.markdown("**Interventions**")
        if view.interventions:
            df = pd.DataFrame([dict(config=i["config_id"], turn=i["turn"], from_token=i["token_index"],
                                    layers=", ".join(map(str, i["layers"])), time=when(i["created_at"]))
                               for i in view.interventions])
            st.dataframe(df, hide_index=True, width="stretch", key=f"{key}-interventions")
        else:
            st.caption("none")
    stored = view.stored
    if stored:
        a, b, _ = st.columns([1, 1, 4])
        a.download_button("Export JSON", session_json(stored), f"{view.id}.json", "application/json", key=f"{key}-json")
        b.download_button("Export CSV", session_csv(stored), f"{view.id}.csv", "text/csv", key=f"{key}-csv")
