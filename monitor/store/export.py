"""A stored session as a file: the JSON trace, or CSV with one row per scored token.

Shared by ``axiswatch sessions export`` and the dashboard's export buttons; takes the dict
:meth:`monitor.store.Store.get_session` returns.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

CSV_COLUMNS = ["session_id", "turn", "role", "token_index", "token", "score", "pre_cap_score", "capped"]


def _cell(text: str) -> str:
    """Text a spreadsheet would run as a formula gets a leading apostrophe (CSV injection)."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def session_json(session: dict[str, Any]) -> str:
    return json.dumps(session, default=str, indent=1)


def session_csv(session: dict[str, Any]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(CSV_COLUMNS)
    for t in session["turns"]:
        pre, capped = t.get("pre_cap_scores"), t.get("capped")
        for k, (tok, score) in enumerate(zip(t.get("tokens") or [], t.get("scores") or [])):
            w.writerow([_cell(session["id"]), t["turn"], t["role"], k, _cell(tok), f"{score:.6g}",
                        f"{pre[k]:.6g}" if pre else "", int(bool(capped[k])) if capped else 0])
    return buf.getvalue()
