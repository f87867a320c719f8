"""A stored session as a file: the JSON trace, or CSV with one row per scored token.

Shared by ``axiswatch sessions export`` and the dashboard's export buttons; takes the dict
:meth:`monitor.store.Store.get_session` returns. The CSV's ``running``, ``drift`` and ``state``
columns are the caller's: the session's stored scores replayed through the drift tracker with the
deployment's thresholds (:func:`monitor.replay.token_states`). Nothing here replays or reads settings.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from monitor.replay import TokenState

CSV_COLUMNS = ["session_id", "turn", "role", "token_index", "token", "score", "pre_cap_score", "capped",
               "running", "drift", "state"]


def _cell(text: str) -> str:
    """Text a spreadsheet would run as a formula gets a leading apostrophe (CSV injection)."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _num(v: float | None) -> str:
    return "" if v is None else f"{v:.6g}"


def session_json(session: dict[str, Any]) -> str:
    return json.dumps(session, default=str, indent=1)


def session_csv(session: dict[str, Any], states: list[list[TokenState]] | None = None) -> str:
    """One row per scored token. ``states``: per stored turn, the tracker's state after each token
    (:func:`monitor.replay.token_states` with the deployment's thresholds) for the running, drift and
    state columns; None (an axis without an alert calibration and no thresholds set): those three
    columns are empty."""
    tracked = states if states is not None else [[] for _ in session["turns"]]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(CSV_COLUMNS)
    for t, after in zip(session["turns"], tracked):
        pre, capped = t.get("pre_cap_scores"), t.get("capped")
        for k, (tok, score) in enumerate(zip(t.get("tokens") or [], t.get("scores") or [])):
            st = after[k] if k < len(after) else None
            running, dr, state = (st.running, st.drift, st.state) if st else (None, None, "")
            w.writerow([_cell(session["id"]), t["turn"], t["role"], k, _cell(tok), f"{score:.6g}",
                        _num(pre[k]) if pre else "", int(bool(capped[k])) if capped else 0,
                        _num(running), _num(dr), state])
    return buf.getvalue()
