"""Waiting in a test for something another process or thread does: one poll loop for every test."""

from __future__ import annotations

import time


def wait_until(cond, timeout_s: float = 30.0, what: str = "the condition", poll_s: float = 0.1):
    """Call ``cond`` until it returns something truthy and return that; raise ``TimeoutError`` naming
    ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (v := cond()):
            return v
        time.sleep(poll_s)
    raise TimeoutError(f"{what} not within {timeout_s} s")
