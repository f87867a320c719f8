"""Rescore: what another axis, detector or thresholds would have alerted on the stored sessions, against
what they recorded. It opens the document ``axiswatch sessions rescore --out FILE`` wrote (uploaded, or a
path on this host): the dashboard never runs the model, and a rescore changes nothing stored."""

from pathlib import Path
from urllib.parse import quote

import altair as alt
import pandas as pd
import streamlit as st

from dashboard.context import guard
from dashboard.render import STATE_BADGE, metrics, rows_key, table, when
from monitor.errors import InputError
from monitor.rescore_report import alert_rows, level_rows, read_document, session_rows

# column widths (px), each table's within the 780 px of data a 1280 px window has; a column as wide as its
# header (a header is never wrapped) and its usual values ("🔴 critical", "shadow"); the row selection's
# checkboxes take the rest
SESSION_WIDTHS = {"session": 180, "source": 62, "recorded peak": 104, "rescored peak": 104, "kept": 46, "added": 54,
                  "dropped": 68, "skipped": 70, "open": 50}
LEVEL_WIDTHS = {"level": 70, "recorded": 75, "rescored": 75, "kept": 60, "added": 60, "dropped": 70,
                "sessions_recorded": 130, "sessions_rescored": 130}
ALERT_WIDTHS = {"outcome": 100, "turn": 45, "level": 70, "detector": 70, "recorded token": 100,
                "rescored token": 100, "recorded running": 110, "rescored running": 110}
OUTCOME_BADGE = {"kept": "✔️ kept", "added": "➕ added", "dropped": "➖ dropped"}


def read_path(text: str) -> tuple[bytes, str]:
    path = Path(text).expanduser()
    if path.suffix != ".json":
        raise InputError(f"{path}: a rescore document is a .json file (axiswatch sessions rescore --out FILE.json)")
    try:
        return path.read_bytes(), str(path)
    except OSError as e:
        raise InputError(f"{path}: cannot be read ({e.strerror or e})") from None


st.title("What-if rescore")
st.markdown("Which alerts another axis, detector or thresholds would raise on stored sessions, against those they "
            "recorded: **kept** (the same turn, level and detector, at any token of the turn), **added**, "
            "**dropped**. Write one with `axiswatch sessions rescore --axis DIR --out rescore.json` (it reads the "
            "conversations back through the model; nothing stored changes) and open it here.")
c = st.columns([3, 2])
up = c[0].file_uploader("rescore document", type=["json"], key="rescore-upload")
typed = c[1].text_input("or its path on this host", value=st.query_params.get("file", ""), key="rescore-path",
                        placeholder="runs/rescore.json")
if up is not None:
    got = (up.getvalue(), up.name)
elif typed.strip():
    got = guard(read_path, typed.strip())
else:
    st.info("Upload a rescore document, or give its path.")
    st.stop()
doc = guard(read_document, *got) if got is not None else None
if doc is None:
    st.stop()

ax, summ = doc.get("axis") or {}, doc["summary"]
dets = " + ".join(f"{d['name']} ({d['thresholds']['watch']:+.1f} / {d['thresholds']['warning']:+.1f} / "
                  f"{d['thresholds']['critical']:+.1f})" for d in doc.get("detectors") or [])
written = when(doc.get("created_at"))
st.caption(f"axis `{ax.get('path', '?')}` · layer {ax.get('monitor_layer', '?')} · fingerprint "
           f"{ax.get('fingerprint', '?')} · {dets or 'detectors unknown'} · model `{doc.get('model', '?')}` · store "
           f"`{doc.get('database', '?')}`" + (f" · written {written:%Y-%m-%d %H:%M} UTC" if written is not None else ""))
a = summ["alerts"]
metrics([("sessions rescored", summ["rescored"], f"{summ['skipped']} skipped" if summ["skipped"] else None),
         ("sessions changed", summ["changed"], "sessions with an alert added or dropped"),
         ("alerts kept", a["kept"], None), ("added", a["added"], None), ("dropped", a["dropped"], None)])

st.subheader("Alerts by level")
table(pd.DataFrame(level_rows(summ)), "rescore-levels", LEVEL_WIDTHS,
      column_config={"sessions_recorded": st.column_config.NumberColumn(
                         "sessions (recorded)", help="sessions whose peak state reached this level or above"),
                     "sessions_rescored": st.column_config.NumberColumn(
                         "sessions (rescored)", help="the same, rescored")})

st.subheader("Sessions")
only = st.toggle("only sessions whose alerts change", value=summ["changed"] > 0, key="rescore-changed")
rows = [r for r in session_rows(doc) if not only or r["changed"] or r["skipped"]]
if not rows:
    st.info("No session's alerts change." if only else "The document holds no sessions.")
    st.stop()
df = pd.DataFrame(rows)
df["recorded peak"] = df["recorded peak"].map(STATE_BADGE)
df["rescored peak"] = df["rescored peak"].map(STATE_BADGE)
df["open"] = [f"/session?id={quote(s)}" for s in df["session"]]
event = table(df, rows_key("rescore-sessions", list(df["session"])), SESSION_WIDTHS, on_select="rerun",
              selection_mode="single-row", column_order=list(SESSION_WIDTHS),
              column_config={"open": st.column_config.LinkColumn("view", display_text="open ›",
                                                                 help="the stored session (this dashboard's store)")})
picked = event.selection.rows if event is not None else []
sid = df.iloc[picked[0]]["session"] if picked else df.iloc[0]["session"]
st.caption("Select a row to see its alerts below.")

session = next(s for s in doc["sessions"] if s["session_id"] == sid)
st.subheader(f"Session {sid}")
st.caption(f"source {session.get('source') or '-'} · policy {session.get('policy') or '-'} · peak state "
           f"{session['recorded_peak']} recorded, {session['rescored_peak']} rescored")
if session.get("skipped"):
    st.warning(f"Skipped: {session['skipped']}")
    st.stop()
for note in session.get("notes") or []:
    st.caption(f"note: {note}")
alerts = pd.DataFrame(alert_rows(session))
if alerts.empty:
    st.info("No alert recorded, none raised by the rescore.")
else:
    alerts["outcome"] = alerts["outcome"].map(OUTCOME_BADGE)
    table(alerts, rows_key("rescore-alerts", [sid]), ALERT_WIDTHS, column_order=list(ALERT_WIDTHS),
          column_config={k: st.column_config.NumberColumn(format="%+.2f") for k in ("recorded running",
                                                                                   "rescored running")})
means = [dict(turn=t["turn"], mean=t[f"{w}_mean"], scores=w) for t in session["turns"] for w in ("recorded", "rescored")
         if t[f"{w}_mean"] is not None]
if means:
    chart = alt.Chart(pd.DataFrame(means)).mark_line(point=True).encode(
        x=alt.X("turn:O", title="turn", axis=alt.Axis(labelAngle=0)),
        y=alt.Y("mean:Q", title="reply's mean score", scale=alt.Scale(zero=False)),
        color=alt.Color("scores:N", scale=alt.Scale(domain=["recorded", "rescored"], range=["#546e7a", "#1565c0"])),
        strokeDash=alt.StrokeDash("scores:N", scale=alt.Scale(domain=["recorded", "rescored"], range=[[5, 3], [1, 0]])),
        tooltip=["turn", "scores", alt.Tooltip("mean:Q", format="+.2f")])
    st.altair_chart(chart.properties(height=260, title="Each reply's mean score, recorded and rescored (another axis "
                                                       "scores on its own scale)"), width="stretch", key="rescore-means")
