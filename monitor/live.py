"""The live-entry format: what a replica writes to a session's live tail while it generates
(``{prefix}:live:{session_id}``, :meth:`monitor.streams.Streams.publish_live_many`) and what
recovery (:mod:`monitor.workers.recovery`) and the dashboard read back. Pure: no Redis here.

A ``tokens`` entry holds one step's (or a few steps') new tokens of one turn, from token index
``start``: their ``scores``, text pieces (``tokens``), ``cap_flags`` and, where capping acted,
``pre_cap_scores`` (what the drift tracker saw); the session's ``state``, ``running`` score and
``capped`` flag after them; ``ended`` once the reply is complete and ``final`` once its turn record
is handed to the durable streams (nothing left to recover from the tail); the writing ``replica``,
the monitor ``layer`` and the ``model_id``."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LiveToken:
    index: int
    score: float
    piece: str
    capped: bool
    pre_cap_score: float


def tokens_entry(session_id: str, turn: int, start: int, tokens: list[LiveToken], *, state: str,
                 running: float | None, capped: bool, ended: bool, final: bool, replica: str, layer: int,
                 model_id: str, reading: tuple[str | None, float | None] = (None, None)) -> dict[str, Any]:
    """One live entry for these new tokens of a turn (``start``: the index of the first). ``reading``: the
    detector the state comes from and its statistic (``DriftTracker.reading``)."""
    any_capped = any(t.capped for t in tokens)
    return {"kind": "tokens", "session_id": session_id, "turn": turn, "start": start,
            "scores": [t.score for t in tokens], "tokens": [t.piece for t in tokens],
            "cap_flags": [t.capped for t in tokens],
            "pre_cap_scores": [t.pre_cap_score for t in tokens] if any_capped else None,
            "state": state, "running": running, "detector": reading[0], "statistic": reading[1],
            "capped": capped, "ended": ended or final, "final": final,
            "replica": replica, "layer": layer, "model_id": model_id}


def live_turns(entries: Iterable[Any], after: int | None) -> dict[int, dict]:
    """The live tail's turns numbered above ``after`` (None: all), in order: turn -> {"scores",
    "pre" (None where capping did not act), "capped", "pieces", "last"} (``last``: the turn's newest
    entry). ``entries``: stream entries (with ``.data``) of one session, oldest first.

    Only the contiguous run of tokens from index 0 counts: a gap means the tail was capped and what
    follows it is left out. A stored turn is the record and the tail only a display buffer."""
    out: dict[int, dict] = {}
    for e in entries:
        d = e.data
        turn = d.get("turn")
        if not isinstance(turn, int) or (after is not None and turn <= after):
            continue
        buf = out.setdefault(turn, {"scores": [], "pre": [], "capped": [], "pieces": [], "last": d})
        buf["last"] = d
        start = int(d.get("start", len(buf["scores"])))
        if start != len(buf["scores"]):
            continue
        scores = [float(x) for x in d.get("scores") or []]
        n = len(scores)
        pre, flags, pieces = d.get("pre_cap_scores"), d.get("cap_flags"), d.get("tokens") or []
        buf["scores"] += scores
        buf["pre"] += [float(pre[k]) if pre and k < len(pre) else None for k in range(n)]
        buf["capped"] += [bool(flags[k]) if flags and k < len(flags) else bool(d.get("capped")) for k in range(n)]
        buf["pieces"] += [pieces[k] if k < len(pieces) else "" for k in range(n)]
    return dict(sorted(out.items()))


def ended(entry: dict) -> bool:
    """Whether a live entry says its turn is over: ``ended`` (the reply is complete) or ``final``
    (its turn record is handed over, or its generation failed)."""
    return bool(entry.get("final") or entry.get("ended"))
