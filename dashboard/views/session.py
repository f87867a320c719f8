"""Session view: trajectory chart, token heatmap, alerts, interventions and export; erasing it."""

import streamlit as st

from dashboard import data, erasure, render
from dashboard.context import deployment, guard, store, streams

st.title("Session")
dep = guard(deployment)
recent = guard(store().list_sessions, active_since=0.0, limit=200) or []  # latest activity first
sid = st.query_params.get("id")
ids = [r["id"] for r in recent]
if sid and sid not in ids:
    ids.insert(0, sid)
c1, c2 = st.columns([5, 1])
choice = c1.selectbox("session", ids, index=ids.index(sid) if sid in ids else None, accept_new_options=True,
                      placeholder="pick a session or type any session id",
                      help="The list holds the 200 most recently active sessions; type any other id and press Enter.")
choice = choice.strip() if choice else choice
live = c2.toggle("live", value=True, help="refresh every 2 seconds while the session generates")
if choice and choice != sid:
    st.query_params["id"] = choice
if not choice:
    st.info("Pick a session, or open one from the Sessions page.")
    st.stop()
if dep is None:
    st.stop()


@st.fragment(run_every=2 if live else None)
def body() -> None:
    view = guard(data.session_view, store(), streams(), choice, dep)
    if view is None:
        st.warning(f"No session {choice!r} in the store or the live tail.")
        return
    erasure.notice((view.stored or {}).get("erasures", []))
    render.session(view, dep)


st.subheader(choice)
body()
erasure.panel(choice)
