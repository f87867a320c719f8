"""Overview: every session with its drift state, live from Redis, history from the store."""

import time
from urllib.parse import quote

import pandas as pd
import streamlit as st

from dashboard import data
from dashboard.context import deployment, guard, store, streams
from dashboard.render import STATE_BADGE, metrics, rows_key, table, when

WINDOWS = {"last hour": 3600, "last 24 hours": 86_400, "last 7 days": 7 * 86_400, "all time": None}
SORTS = {"last activity": ("last activity", False), "running score (lowest first)": ("running", True),
         "state (worst first)": ("rank", False), "open alerts": ("open alerts", False)}

# the columns shown and their widths (px): within the 780 px of data a 1280 px window has. A text column
# holds its usual values on one line (a live session's id, sess_ and 20 hex digits, about 170 px; "🔴
# generating"); a longer id wraps in its cell, the rows growing to show it whole (render.table)
WIDTHS = {"session": 198, "state": 85, "statistic": 105, "turns": 42, "open alerts": 44,
          "source": 62, "activity": 100, "last activity": 94, "open": 50}

st.title("Sessions")
dep = guard(deployment)
if dep is not None:
    th = dep.thresholds
    st.caption(f"model `{dep.model_id}` · layer {dep.layer} · policy {dep.policy} · thresholds watch {th.watch:+.2f}, "
               f"warning {th.warning:+.2f}, critical {th.critical:+.2f}"
               + ("" if dep.origin == "redis" else " · no running replica seen: thresholds from the axis files"))
f = st.columns([2, 2, 1.3, 1.7, 1])
states = f[0].multiselect("state", list(STATE_BADGE), default=[], placeholder="all states")
sources = f[1].multiselect("source", ["live", "audit", "shadow"], default=[], placeholder="all sources")
window = f[2].selectbox("active in", list(WINDOWS), index=3)
sort = f[3].selectbox("sort by", list(SORTS))
live = f[4].toggle("live", value=True, help="refresh every 2 seconds")
if streams() is None:
    st.info("REDIS_URL is not set: showing the store only (no live tail).")


@st.fragment(run_every=2 if live else None)
def sessions() -> None:
    now = time.time()
    since = now - WINDOWS[window] if WINDOWS[window] else None
    rows = guard(data.overview, store(), streams(), states=states or None, sources=sources or None, since=since,
                 now=now)
    if rows is None:
        return
    metrics([("sessions", len(rows), None), ("generating now", sum(r["generating"] for r in rows), None),
             ("critical", sum(r["state"] == "critical" for r in rows), "sessions in state critical now"),
             ("warning", sum(r["state"] == "warning" for r in rows), "sessions in state warning now"),
             ("open alerts", sum(r["open_alerts"] for r in rows), None)])
    if not rows:
        st.info("No sessions yet. Send a chat to the probe service (see the README) or audit a transcript.")
        return
    df = pd.DataFrame([{
        "session": r["session_id"], "state": STATE_BADGE[r["state"]], "rank": data.STATE_RANK[r["state"]],
        "statistic": None if r["statistic"] is None else f"{r['detector']} {r['statistic']:+.2f}",
        "running": r["running"], "turns": r["turns"], "tokens": r["tokens"],
        "capped": r["capped"],
        "open alerts": r["open_alerts"], "source": r["source"],
        "activity": " ".join(flag for on, flag in ((r["generating"], "🔴 generating"), (r["capped"], "✂️ capped"),
                                                   (r["interrupted"], "⚠️ interrupted")) if on),
        "last activity": when(r["last_activity"]), "open": f"/session?id={quote(r['session_id'])}"} for r in rows])
    col, asc = SORTS[sort]
    df = df.sort_values(col, ascending=asc, na_position="last", kind="stable")
    event = table(df, rows_key("sessions", list(df["session"])), WIDTHS, on_select="rerun",
                  selection_mode="single-row", column_order=list(WIDTHS),
                  column_config={"statistic": st.column_config.TextColumn(
                                     help="the statistic the state comes from: drift (the running score minus the "
                                          "session's opening) or level (the session's slow running mean)"),
                                 "open alerts": st.column_config.NumberColumn("alerts", help="open alerts"),
                                 "last activity": st.column_config.DatetimeColumn(format="MM-DD HH:mm:ss"),
                                 "open": st.column_config.LinkColumn("view", display_text="open ›")})
    st.caption("Select a row (or use its link) to open the session.")
    picked = event.selection.rows if event is not None else []
    if picked:
        st.switch_page("views/session.py", query_params={"id": df.iloc[picked[0]]["session"]})


sessions()
