"""Alerts: a feed across sessions with the webhook delivery state; acknowledge."""

import os
from urllib.parse import quote

import pandas as pd
import streamlit as st

from dashboard import data
from dashboard.context import ago, guard, store
from dashboard.render import DELIVERY_BADGE, LIFECYCLE, STATE_BADGE, metrics, rows_key, table, when

# the columns shown and their widths (px): within the 780 px of data a 1280 px window has;
# a delivery's attempts are in its cell, its last error in the expander under the table. The status holds
# "👤 acknowledged" on one line; a session id wraps in its cell, the rows growing to show it whole
# (render.table), and so does a dead-lettered delivery's badge
WIDTHS = {"time": 94, "level": 85, "session": 130, "turn": 36, "token": 43, "running score": 56,
          "threshold": 66, "delivery": 99, "status": 123, "open": 48}


def delivery(a: dict) -> str:
    badge = DELIVERY_BADGE.get(a["delivery_status"], a["delivery_status"])
    return f"{badge} ×{a['attempts']}" if a["attempts"] > 1 else badge


st.title("Alerts")
f = st.columns([1.5, 1.5, 1.5, 1])
status = f[0].selectbox("delivery", ["any", "pending", "delivered", "retrying", "dead"])
level = f[1].selectbox("level", ["any", "watch", "warning", "critical"])
only_open = f[2].toggle("open only", value=False, help="neither acknowledged nor resolved")
live = f[3].toggle("live", value=True, help="refresh every 2 seconds")


@st.fragment(run_every=2 if live else None)
def feed() -> None:
    rows = guard(data.alerts_feed, store(), status=None if status == "any" else status,
                 level=None if level == "any" else level, unacknowledged=only_open)
    if rows is None:
        return
    metrics([("alerts shown", len(rows), None), ("open", sum(a["status"] == "open" for a in rows), None),
             ("dead-lettered", sum(a["delivery_status"] == "dead" for a in rows), None),
             ("newest", ago(rows[0]["created_at"]) if rows else "-", None)])
    if not rows:
        st.info("No alerts match.")
        return
    df = pd.DataFrame([{
        "time": when(a["created_at"]), "level": STATE_BADGE.get(a["level"], a["level"]), "session": a["session_id"],
        "turn": a["turn"], "token": a["token_index"], "running score": a["score"], "threshold": a["threshold"],
        "policy": a["policy"], "delivery": delivery(a), "attempts": a["attempts"], "last error": a["last_error"] or "",
        "acknowledged": a["acknowledged"], "status": LIFECYCLE.get(a["status"], a["status"]), "event_id": a["event_id"],
        "open": f"/session?id={quote(a['session_id'])}"} for a in rows])
    key = rows_key("alerts", list(df["event_id"]))
    number = st.column_config.NumberColumn(format="%+.2f")
    event = table(df, key, WIDTHS, on_select="rerun", selection_mode="multi-row", column_order=list(WIDTHS),
                  column_config={"running score": st.column_config.NumberColumn("running", format="%+.2f"),
                                 "threshold": number, "time": st.column_config.DatetimeColumn(format="MM-DD HH:mm:ss"),
                                 "status": st.column_config.TextColumn(help="open, acknowledged (by whom: the "
                                                                       "session page) or resolved"),
                                 "delivery": st.column_config.TextColumn(help="webhook delivery (×: attempts)"),
                                 "open": st.column_config.LinkColumn("view", display_text="open ›")})
    errors = df[df["last error"] != ""]
    if len(errors):
        with st.expander(f"Delivery errors ({len(errors)})"):
            table(errors, "alert-errors", {"time": 150, "session": 180, "attempts": 70, "last error": 380},
                  column_order=["time", "session", "attempts", "last error"],
                  column_config={"time": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm:ss")})
    picked = [df.iloc[i]["event_id"] for i in (event.selection.rows if event is not None else [])]
    todo = [e for e in picked if not df.set_index("event_id").loc[e, "acknowledged"]]
    c = st.columns([2, 3, 2])
    who = c[0].text_input("acknowledge as", value=os.environ.get("AXISWATCH_DASHBOARD_USER", ""), key="ack-by",
                          placeholder="your name or e-mail", help="stored with the acknowledgement")
    note = c[1].text_input("note", key="ack-note", placeholder="optional: why, or what is being done")
    if c[2].button(f"Acknowledge {len(todo)} selected", disabled=not (todo and who.strip()), key="ack"):
        for e in todo:
            guard(store().acknowledge_alert, e, by=who.strip(), note=note)
        st.session_state.pop(key, None)  # the selection is done with
        st.toast(f"acknowledged {len(todo)} alert(s)")
        st.rerun()
    st.caption("Select rows and say who you are to acknowledge them. Delivery: ✅ delivered to the webhook, 🔁 retrying with backoff, "
               "☠️ dead-lettered (replay with `axiswatch alerts replay`), ⏳ pending or no webhook configured.")


feed()
