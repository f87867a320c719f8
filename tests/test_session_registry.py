"""The in-memory session registry: a session continued from the store is looked up outside the lock."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from monitor.drift import DriftConfig, Thresholds
from monitor.sessions import SessionRegistry


def registry(lookup) -> SessionRegistry:
    return SessionRegistry(Thresholds(-1.0, -2.0, -3.0), DriftConfig(), "observe", can_cap=False, lookup=lookup)


def test_a_slow_lookup_does_not_hold_up_other_sessions():
    slow = threading.Event()

    def lookup(sid):
        if sid == "long-history":
            slow.wait(10)  # a long stored session being read from the database
            return {"next_turn": 7, "source": "live"}
        return None

    reg = registry(lookup)
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(reg.get, "long-history")
        other = pool.submit(reg.get, "new-one")
        try:
            fresh = other.result(5)  # before the fix: waited for the other session's lookup
        finally:
            slow.set()
        assert fresh.next_turn == 0
        assert first.result(10).next_turn == 7  # continued where the store left it


def test_concurrent_first_requests_of_one_session_share_it():
    gate = threading.Barrier(4)

    def lookup(sid):
        return {"next_turn": 3, "source": "live"}

    reg = registry(lookup)

    def get(_):
        gate.wait(5)
        return reg.get("same")

    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(get, range(4)))
    assert len({id(s) for s in got}) == 1 and got[0].next_turn == 3
