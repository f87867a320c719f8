"""A stored session as a file: the JSON trace, or CSV with one row per scored token.

Shared by ``axiswatch sessions export`` and the dashboard's export buttons; takes the dict
:meth:`monitor.store.Store.get_session` returns. The CSV's ``running``, ``drift`` and ``state``
columns replay the session's stored scores through the engine's drift tracker (:func:`replay`),
with the deployment's thresholds and drift config.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from monitor.drift import DriftConfig, DriftTracker, Thresholds
from monitor.errors import InputError

CSV_COLUMNS = ["session_id", "turn", "role", "token_index", "token", "score", "pre_cap_score", "capped",
               "running", "drift", "state"]

Drift = tuple[Thresholds, DriftConfig]


def _cell(text: str) -> str:
    """Text a spreadsheet would run as a formula gets a leading apostrophe (CSV injection)."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _num(v: float | None) -> str:
    return "" if v is None else f"{v:.6g}"


def replay(turns: list[dict[str, Any]], thresholds: Thresholds, config: DriftConfig) -> list[list[tuple]]:
    """Per stored turn, per token: ``(running, drift, state)`` after that token, from a drift tracker
    fed the turns in order as the engine fed it: each token's pre-cap score where the turn has them
    (capping floors the post-cap score), else its score. Pure: no store, no settings."""
    tracker = DriftTracker(thresholds, config, policy="observe")
    out = []
    for t in turns:
        scores, pre = t.get("scores") or [], t.get("pre_cap_scores") or []
        rows = []
        for k, sc in enumerate(scores):
            before = pre[k] if k < len(pre) and pre[k] is not None else None
            tracker.update([sc if before is None else before], t["turn"])
            rows.append((tracker.running, tracker.drift, tracker.state))
        if scores:
            tracker.end_turn()
        out.append(rows)
    return out


def deployment_drift(settings) -> Drift:
    """The thresholds and drift config a service on these :class:`~monitor.settings.Settings` runs with:
    its axis folder's alert calibration (``axis.json``, no tensors loaded) with the settings' overrides."""
    path = settings.axis_dir() / "axis.json"
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"axis metadata {path} cannot be read: {e}") from None
    return settings.drift_setup(meta.get("calibration", {}))


def session_json(session: dict[str, Any]) -> str:
    return json.dumps(session, default=str, indent=1)


def session_csv(session: dict[str, Any], drift: Drift | None = None) -> str:
    """One row per scored token. ``drift``: the deployment's thresholds and config (see
    :func:`deployment_drift`) for the running, drift and state columns; None (an axis without an alert
    calibration and no thresholds set): those three columns are empty."""
    tracked = replay(session["turns"], *drift) if drift is not None else [[] for _ in session["turns"]]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(CSV_COLUMNS)
    for t, states in zip(session["turns"], tracked):
        pre, capped = t.get("pre_cap_scores"), t.get("capped")
        for k, (tok, score) in enumerate(zip(t.get("tokens") or [], t.get("scores") or [])):
            running, dr, state = states[k] if k < len(states) else (None, None, "")
            w.writerow([_cell(session["id"]), t["turn"], t["role"], k, _cell(tok), f"{score:.6g}",
                        _num(pre[k]) if pre else "", int(bool(capped[k])) if capped else 0,
                        _num(running), _num(dr), state])
    return buf.getvalue()
