"""Erasing a session from the dashboard (an operator, on request): who and why, a confirmation, then the
store's erasure (the conversation goes, a tombstone keeps the session's chain verifiable); and the notice
an erased session shows."""

from __future__ import annotations

import os

import streamlit as st

from dashboard.context import guard, store, streams
from dashboard.render import when
from monitor.streams.forget import forget_sessions


def notice(erasures: list[dict]) -> None:
    """What was erased, when, by whom and why (the session's tombstones)."""
    for e in erasures:
        at = when(e["created_at"])
        st.warning(f"🗑️ Conversation erased ({e['scope']}) {at:%Y-%m-%d %H:%M} UTC by {e['by']}: {e['reason']}. "
                   f"{e['records']} records removed; the alerts and capping switches stay, and the session's audit "
                   "trail still verifies.")


def panel(session_id: str) -> None:
    """An expander that erases the session's conversation after the operator says who, why, and confirms."""
    with st.expander("Erase this session's conversation"):
        st.caption("Removes every message text, reply, token and score of this session, and the alerts' excerpts. "
                   "The alerts, capping switches and a tombstone (what was removed, when, why, by whom) stay; "
                   "`axiswatch sessions verify` still passes. This cannot be undone.")
        c = st.columns(2)
        who = c[0].text_input("erase as", value=os.environ.get("AXISWATCH_DASHBOARD_USER", ""), key="erase-by",
                              placeholder="your name or e-mail")
        why = c[1].text_input("reason", key="erase-reason", placeholder="e.g. erasure request #1234")
        sure = st.checkbox(f"I want to erase the conversation of {session_id}", key="erase-sure")
        if st.button("Erase", type="primary", key="erase", disabled=not (who.strip() and why.strip() and sure)):
            r = guard(store().erase_session, session_id, reason=why.strip(), by=who.strip())
            if r is not None and (rs := streams()) is not None:
                forget_sessions(rs, [session_id])  # the live tail would show the reply again
            if r is not None:
                st.toast(f"erased {r['counts']['turns']} turns of {session_id}" if r["erased"]
                         else f"{session_id}: nothing left to erase")
