"""Durations as operators write them (``30d``, ``12h``, ``90m``, ``45s``, ``2w``): parsed to seconds. Pure."""

from __future__ import annotations

import re

from monitor.errors import InputError

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_FORM = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", re.IGNORECASE)


def parse_duration(text: str, what: str = "duration") -> float:
    """Seconds of ``text``: a positive number and a unit (s, m, h, d, w), e.g. ``30d``."""
    m = _FORM.fullmatch(text or "")
    if not m or float(m.group(1)) <= 0:
        raise InputError(f"{what} {text!r} is not a duration: write a positive number and a unit "
                         "(s, m, h, d or w), e.g. 30d or 12h")
    return float(m.group(1)) * UNITS[m.group(2).lower()]
