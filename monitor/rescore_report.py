"""The rescore document and its summary: what ``axiswatch sessions rescore --json`` prints, ``--out`` saves
and the dashboard's Rescore page reads. Pure: no I/O, no torch, no database.

A document is ``{"kind": "axiswatch.rescore", "version": 1, "created_at", "database", "model", "axis":
{"path", "fingerprint", "monitor_layer", "model_id"}, "detector", "detectors": [...], "sessions": [...],
"summary": {...}}``; each session is :meth:`monitor.rescore.SessionRescore.as_dict` (its kept, added and
dropped alerts, its turns recorded against rescored), the summary :func:`summarise` of them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from monitor.errors import InputError
from monitor.records import STATES
from monitor.rescore import DOCUMENT_KIND, DOCUMENT_VERSION, LEVELS, OUTCOMES

COUNTS = ("recorded", "rescored", *OUTCOMES)


def _zero() -> dict[str, int]:
    return dict.fromkeys(COUNTS, 0)


def _at_least(peak: str | None, level: str) -> bool:
    return peak in STATES and STATES.index(peak) >= STATES.index(level)


def summarise(sessions: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Counts over rescored sessions (documents' ``sessions``; skipped ones are only counted):

    - ``sessions``, ``rescored``, ``skipped``; ``changed`` (an alert added or dropped), ``with_added``,
      ``with_dropped``;
    - ``alerts``: recorded, rescored, kept, added and dropped alerts; ``by_level``: the same per level;
    - ``sessions_at``: per level, the sessions whose peak state (the worst state any turn ended in or any
      alert reached) was at least that level, recorded and rescored;
    - ``peaks``: sessions whose peak went ``up``, ``down`` or stayed the ``same``."""
    done = [s for s in sessions if not s.get("skipped")]
    by_level = {lvl: _zero() for lvl in LEVELS}
    for s in done:
        for outcome in OUTCOMES:
            for a in s[outcome]:
                by_level[a["level"]][outcome] += 1
    for c in by_level.values():
        c["recorded"], c["rescored"] = c["kept"] + c["dropped"], c["kept"] + c["added"]
    total = {k: sum(c[k] for c in by_level.values()) for k in COUNTS}
    moves = {"up": 0, "down": 0, "same": 0}
    for s in done:
        a, b = STATES.index(s["recorded_peak"]), STATES.index(s["rescored_peak"])
        moves["up" if b > a else "down" if b < a else "same"] += 1
    return {"sessions": len(sessions), "rescored": len(done), "skipped": len(sessions) - len(done),
            "changed": sum(bool(s["added"] or s["dropped"]) for s in done),
            "with_added": sum(bool(s["added"]) for s in done), "with_dropped": sum(bool(s["dropped"]) for s in done),
            "alerts": total, "by_level": by_level,
            "sessions_at": {lvl: {"recorded": sum(_at_least(s["recorded_peak"], lvl) for s in done),
                                  "rescored": sum(_at_least(s["rescored_peak"], lvl) for s in done)} for lvl in LEVELS},
            "peaks": moves}


def summarise_groups(sessions: Sequence[Mapping[str, Any]], group_of: Callable[[str], str]) -> dict[str, dict]:
    """:func:`summarise` per group (``group_of(session_id)``), the groups in order of first appearance."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for s in sessions:
        groups.setdefault(group_of(str(s["session_id"])), []).append(s)
    return {g: summarise(ss) for g, ss in groups.items()}


def document(sessions: Sequence[Mapping[str, Any]], **meta: Any) -> dict[str, Any]:
    """The rescore document of these sessions (``SessionRescore.as_dict()``) with ``meta`` (created_at,
    database, model, axis, detector, detectors, ...) and their summary."""
    return {"kind": DOCUMENT_KIND, "version": DOCUMENT_VERSION, **meta, "sessions": list(sessions),
            "summary": summarise(sessions)}


_SESSION_KEYS = ("session_id", "recorded_peak", "rescored_peak", "kept", "added", "dropped", "turns")


def read_document(raw: bytes | str | Mapping[str, Any], name: str = "rescore file") -> dict[str, Any]:
    """A rescore document from its JSON (bytes or text) or parsed form, checked: InputError naming what is
    wrong otherwise. The summary is computed again from the sessions (a hand-edited file cannot disagree)."""
    if isinstance(raw, (bytes, str)):
        try:
            doc = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InputError(f"{name}: not JSON ({e})") from None
    else:
        doc = dict(raw)
    if not isinstance(doc, dict) or doc.get("kind") != DOCUMENT_KIND:
        raise InputError(f"{name}: not a rescore document (write one with `axiswatch sessions rescore --out FILE`)")
    if doc.get("version") != DOCUMENT_VERSION:
        raise InputError(f"{name}: rescore document version {doc.get('version')!r}; this axiswatch reads "
                         f"version {DOCUMENT_VERSION}")
    sessions = doc.get("sessions")
    if not isinstance(sessions, list):
        raise InputError(f"{name}: 'sessions' must be a list")
    for i, s in enumerate(sessions):
        missing = [k for k in _SESSION_KEYS if not isinstance(s, dict) or k not in s]
        if missing:
            raise InputError(f"{name}: session {i} lacks {', '.join(missing)}")
        if s["recorded_peak"] not in STATES or s["rescored_peak"] not in STATES:
            raise InputError(f"{name}: session {s['session_id']!r} has an unknown peak state")
        for outcome in OUTCOMES:
            if not isinstance(s[outcome], list) or any(not isinstance(a, dict) or a.get("level") not in LEVELS
                                                       for a in s[outcome]):
                raise InputError(f"{name}: session {s['session_id']!r}: '{outcome}' must be a list of alerts "
                                 f"with a level ({', '.join(LEVELS)})")
    doc["summary"] = summarise(sessions)
    return doc


def level_rows(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The summary's alerts as table rows: one per level and a total, columns :data:`COUNTS`, plus the
    sessions that reached the level, recorded and rescored."""
    rows = [{"level": lvl, **summary["by_level"][lvl],
             "sessions_recorded": summary["sessions_at"][lvl]["recorded"],
             "sessions_rescored": summary["sessions_at"][lvl]["rescored"]} for lvl in LEVELS]
    rows.append({"level": "all", **summary["alerts"], "sessions_recorded": None, "sessions_rescored": None})
    return rows


def alert_label(a: Mapping[str, Any]) -> str:
    """``warning t5 drift`` (the token of the turn after ``@``): an alert in one line."""
    det = a.get("detector") or a.get("rescored_detector") or "-"
    return f"{a['level']} t{a['turn']}@{a['token_index']} {det}"


def session_rows(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per session of a document, for a table: its peak state recorded and rescored, and its alerts
    kept, added and dropped (a skipped session says why)."""
    return [{"session": s["session_id"], "source": s.get("source"), "policy": s.get("policy"),
             "recorded peak": s["recorded_peak"], "rescored peak": s["rescored_peak"],
             "kept": len(s["kept"]), "added": len(s["added"]), "dropped": len(s["dropped"]),
             "changed": bool(s["added"] or s["dropped"]), "skipped": s.get("skipped"),
             "notes": len(s.get("notes") or [])} for s in doc["sessions"]]


def alert_rows(session: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A session's alerts, kept, added and dropped, in turn order: where each was (or would be) raised, the
    running score and the bar it crossed, recorded and rescored."""
    rows = [{"outcome": "kept", "turn": a["turn"], "level": a["level"],
             "detector": a.get("rescored_detector") or a.get("detector"), "recorded token": a["token_index"],
             "rescored token": a.get("rescored_token_index"), "recorded running": a.get("score"),
             "rescored running": a.get("rescored_score")} for a in session["kept"]]
    rows += [{"outcome": "added", "turn": a["turn"], "level": a["level"], "detector": a.get("detector"),
              "recorded token": None, "rescored token": a["token_index"], "recorded running": None,
              "rescored running": a.get("score")} for a in session["added"]]
    rows += [{"outcome": "dropped", "turn": a["turn"], "level": a["level"], "detector": a.get("detector"),
              "recorded token": a["token_index"], "rescored token": None, "recorded running": a.get("score"),
              "rescored running": None} for a in session["dropped"]]
    token = lambda r: r["recorded token"] if r["recorded token"] is not None else r["rescored token"]  # noqa: E731
    return sorted(rows, key=lambda r: (r["turn"], token(r), STATES.index(r["level"])))
