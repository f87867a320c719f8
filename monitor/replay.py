"""Scores through the drift tracker: the one rule for which score a token contributes, and the one
replay of a session's scores. Pure: no I/O, no torch.

The rule (:func:`tracked_score`): the tracker follows each token's score *before* capping acted on it,
wherever there is one. Floored, a capped session would otherwise look safe however far the model
itself keeps drifting. The engine feeds live tokens by it; everything that feeds stored or streamed
scores to a tracker replays them through :func:`replay`: a session continued from the store, the
dashboard's session view, the CSV export, the audit (CLI and API), the evaluation, the alert study and
the alert calibration. So a stored session replayed anywhere gives the states and alerts the engine gave.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from monitor.drift import DriftConfig, DriftEvent, DriftTracker, Thresholds, TurnSummary


def tracked_score(score: float, pre_cap_score: float | None) -> float:
    """The score the drift tracker follows for one token: its pre-cap score where there is one."""
    return float(score if pre_cap_score is None else pre_cap_score)


def tracked_scores(scores: Sequence[float], pre_cap_scores: Sequence[float | None] | None) -> list[float]:
    """:func:`tracked_score` of every token of a turn (``pre_cap_scores`` None, shorter, or holding None
    where capping did not act)."""
    pre = pre_cap_scores or ()
    return [tracked_score(s, pre[k] if k < len(pre) else None) for k, s in enumerate(scores)]


def scored_turns(turns: Iterable[dict[str, Any]]) -> list[tuple[int, list[float]]]:
    """Stored turns (``{"turn", "scores", "pre_cap_scores"?}``, as the store and the evaluation keep them)
    as ``(turn, tracked scores)``, in order; turns without scores (user turns) are left out."""
    return [(int(t["turn"]), tracked_scores(t["scores"], t.get("pre_cap_scores")))
            for t in turns if t.get("scores")]


@dataclass(frozen=True)
class TokenState:
    """The tracker after one token: what the dashboard draws and the CSV export writes."""

    running: float | None
    drift: float | None  # None while the session's opening reference is incomplete
    reference: float | None
    state: str
    detector: str | None = None  # the detector the state comes from (DriftTracker.reading) and its statistic
    statistic: float | None = None


@dataclass
class TurnReplay:
    """One replayed turn: the tracker's events (token indices within the turn), its summary, and with
    ``per_token`` the tracker's state after each of its tokens."""

    turn: int
    events: list[DriftEvent]
    summary: TurnSummary
    tokens: list[TokenState] = field(default_factory=list)


def replay(tracker: DriftTracker, turns: Iterable[tuple[int, Sequence[float]]],
           per_token: bool = False) -> Iterator[TurnReplay]:
    """Feed ``(turn, tracked scores)`` to ``tracker`` turn by turn, as the engine feeds it (each turn
    opened, its scores in order, then ended), yielding each turn as it ends. ``per_token`` also records
    the tracker's state after every token (one update per token; the events are the same)."""
    for turn, scores in turns:
        tokens: list[TokenState] = []
        if per_token:
            events = tracker.update([], turn)
            for s in scores:
                events += tracker.update([s], turn)
                tokens.append(TokenState(tracker.running, tracker.drift, tracker.reference, tracker.state, *tracker.reading))
        else:
            events = tracker.update(list(scores), turn)
        yield TurnReplay(turn, events, tracker.end_turn(), tokens)


def token_states(turns: list[dict[str, Any]], thresholds: Thresholds, config: DriftConfig) -> list[list[TokenState]]:
    """Per stored turn (in the list's order), the tracker's state after each of its tokens: a session's
    stored scores replayed under policy ``observe`` (states only). A turn without scores gets ``[]``."""
    tracker = DriftTracker(thresholds, config, policy="observe")
    by_turn = {r.turn: r.tokens for r in replay(tracker, scored_turns(turns), per_token=True)}
    return [by_turn.get(int(t["turn"]), []) if t.get("scores") else [] for t in turns]
