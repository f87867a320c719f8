"""Alerts: a feed across sessions with the webhook delivery state; acknowledge."""

from urllib.parse import quote

import pandas as pd
import streamlit as st

from dashboard import data
from dashboard.context import ago, guard, store
from dashboard.render import DELIVERY_BADGE, rows_key, when

st.title("Alerts")
f = st.columns([1.5, 1.5, 1.5, 1])
status = f[0].selectbox("delivery", ["any", "pending", "delivered", "retrying", "dead"])
level = f[1].selectbox("level", ["any", "watch", "warning", "critical"])
only_open = f[2].toggle("unacknowledged only", value=False)
live = f[3].toggle("live", value=True, help="refresh every 2 seconds")


@st.fragment(run_every=2 if live else None)
def feed() -> None:
    rows = guard(data.alerts_feed, store(), status=None if status == "any" else status,
                 level=None if level == "any" else level, unacknowledged=only_open)
    if rows is None:
        return
    m = st.columns(4)
    m[0].metric("alerts shown", len(rows))
    m[1].metric("unacknowledged", sum(not a["acknowledged"] for a in rows))
    m[2].metric("dead-lettered", sum(a["delivery_status"] == "dead" for a in rows))
    m[3].metric("newest", ago(rows[0]["created_at"]) if rows else "-")
    if not rows:
        st.info("No alerts match.")
        return
    df = pd.DataFrame([{
        "time": when(a["created_at"]), "level": {"watch": "🟡", "warning": "🟠", "critical": "🔴"}[a["level"]]
        + " " + a["level"], "session": a["session_id"], "turn": a["turn"], "token": a["token_index"],
        "running score": a["score"], "threshold": a["threshold"], "policy": a["policy"],
        "delivery": DELIVERY_BADGE.get(a["delivery_status"], a["delivery_status"]), "attempts": a["attempts"],
        "last error": a["last_error"] or "", "acknowledged": a["acknowledged"], "event_id": a["event_id"],
        "open": f"/session?id={quote(a['session_id'])}"} for a in rows])
    key = rows_key("alerts", list(df["event_id"]))
    event = st.dataframe(df, hide_index=True, width="stretch", key=key, on_select="rerun",
                         selection_mode="multi-row",
                         column_order=["time", "level", "session", "turn", "token", "running score", "threshold",
                                       "delivery", "attempts", "last error", "acknowledged", "open"],
                         column_config={"running score": st.column_config.NumberColumn(format="%+.2f"),
                                        "threshold": st.column_config.NumberColumn(format="%+.2f"),
                                        "time": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm:ss"),
                                        "open": st.column_config.LinkColumn("session view", display_text="open ›")})
    picked = [df.iloc[i]["event_id"] for i in (event.selection.rows if event is not None else [])]
    todo = [e for e in picked if not df.set_index("event_id").loc[e, "acknowledged"]]
    if st.button(f"Acknowledge {len(todo)} selected", disabled=not todo, key="ack"):
        for e in todo:
            guard(store().acknowledge_alert, e)
        st.session_state.pop(key, None)  # the selection is done with
        st.toast(f"acknowledged {len(todo)} alert(s)")
        st.rerun()
    st.caption("Select rows to acknowledge them. Delivery: ✅ delivered to the webhook, 🔁 retrying with backoff, "
               "☠️ dead-lettered (replay with `axiswatch alerts replay`), ⏳ pending or no webhook configured.")


feed()
