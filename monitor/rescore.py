"""What-if re-scoring, the pure part: the alerts a replay raises against the alerts a session recorded,
each one kept, added or dropped, per session and in sum; the detectors a replay runs; the rescore
document that ``axiswatch sessions rescore --json`` prints (``--out`` saves it for the dashboard).
No I/O, no torch, no database: :mod:`monitor.rescore_run` teacher-forces the stored conversations and
calls these.

**The matching rule** (:func:`compare_alerts`). Another axis, detector or thresholds moves the token at
which a statistic crosses, and teacher forcing may split a reply into tokens a little differently from
the generation, so token indices are not compared. An alert is *the same alert* when it is raised in
the same turn, at the same level, by the same detector; at which token of the turn does not matter. A
recorded alert without a detector (stored before there were several) matches one of either detector.
Within one (turn, level, detector) the alerts pair off in token order, one to one (a session can
alert twice at one level in one turn: after the first resolved and the cooldown passed). Then:

- **kept**: recorded, and raised again;
- **dropped**: recorded, not raised by the replay;
- **added**: raised by the replay, not recorded.

A session recorded under policy ``observe`` recorded no alerts: every alert of its replay is added.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from monitor.detectors import Cusum, Detector, Level, Thresholds
from monitor.drift import DriftConfig, DriftTracker, make_detectors
from monitor.errors import InputError
from monitor.records import STATES
from monitor.replay import replay, tracked_scores

LEVELS = STATES[1:]  # the levels an alert is raised at
DOCUMENT_KIND, DOCUMENT_VERSION = "axiswatch.rescore", 1
DETECTOR_CHOICES = ("axis", "drift", "level", "cusum")
OUTCOMES = ("kept", "added", "dropped")


@dataclass(frozen=True)
class Alert:
    """One alert, recorded (``event_id`` set) or raised by a replay: ``score`` is the running score that
    crossed, ``threshold`` the bar it crossed (raw projection units, as stored)."""

    turn: int
    token_index: int
    level: str
    detector: str | None = None  # None: stored before there were several detectors
    score: float | None = None
    threshold: float | None = None
    event_id: str | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Alert:
        """A stored alert (``Store.get_session``'s ``alerts``) or one of a rescore document."""
        return cls(int(d["turn"]), int(d["token_index"]), str(d["level"]), d.get("detector"),
                   d.get("score"), d.get("threshold"), d.get("event_id"))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Comparison:
    """One session's alerts sorted into :data:`OUTCOMES` (:func:`compare_alerts`); a kept alert is the
    pair (recorded, rescored)."""

    kept: list[tuple[Alert, Alert]] = field(default_factory=list)
    added: list[Alert] = field(default_factory=list)
    dropped: list[Alert] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.added or self.dropped)


def _order(a: Alert) -> tuple[int, int]:
    return a.turn, a.token_index


def compare_alerts(recorded: Iterable[Alert], rescored: Iterable[Alert]) -> Comparison:
    """Kept, added and dropped alerts by the module's matching rule: same turn, level and detector (a
    recorded alert without a detector matches either), paired in token order within each."""
    rec, new = sorted(recorded, key=_order), sorted(rescored, key=_order)
    out = Comparison()
    taken: set[int] = set()

    def pair(named: bool) -> None:
        for r in rec:
            if (r.detector is not None) != named or any(r is k for k, _ in out.kept):
                continue
            j = next((j for j, a in enumerate(new) if j not in taken and a.turn == r.turn and a.level == r.level
                      and (r.detector is None or a.detector == r.detector)), None)
            if j is not None:
                taken.add(j)
                out.kept.append((r, new[j]))

    pair(True)  # alerts that name their detector first: one without a name takes what they leave
    pair(False)
    out.kept.sort(key=lambda p: _order(p[0]))
    out.dropped = [r for r in rec if not any(r is k for k, _ in out.kept)]
    out.added = [a for j, a in enumerate(new) if j not in taken]
    return out


# ---------------------------------------------------------------- the replay
def detectors_for(choice: str, thresholds: Thresholds, config: DriftConfig,
                  override: Thresholds | None = None) -> list[Detector]:
    """The detectors a rescore replays with (``choice`` one of :data:`DETECTOR_CHOICES`):

    - ``axis``: what ``serve`` runs with this axis and these settings, the drift and, where the axis
      calibrated one, the absolute level beside it; ``override`` replaces the drift's thresholds;
    - ``drift``: the drift alone (``AXISWATCH_LEVEL_DETECTOR=off``); ``override`` replaces its thresholds;
    - ``level``: the absolute level alone, on the axis' level thresholds or ``override``;
    - ``cusum``: the CUSUM of the fall below the session's opening (slack 10; no axis calibrates it, so
      ``override`` is required).

    ``thresholds`` and ``config`` are the axis' calibration with the deployment's settings
    (:meth:`monitor.settings.Settings.drift_setup`); an ``override`` for ``axis``/``drift`` is expected
    to be in them already (the hysteresis follows the thresholds)."""
    if choice == "axis":
        return make_detectors(thresholds, config)
    if choice == "drift":
        return make_detectors(thresholds, DriftConfig(**{**config.as_dict(), "level_thresholds": None}))
    if choice == "level":
        if override is None and config.level_thresholds is None:
            raise InputError("--detector level: the axis calibrated no level detector; give --thresholds "
                             "watch,warning,critical (raw projection units)")
        th = override or Thresholds(*config.level_thresholds)  # type: ignore[misc]
        return [Level(th, config.level_alpha, None if override else config.hysteresis, max(config.min_tokens, 1))]
    if choice == "cusum":
        if override is None:
            raise InputError("--detector cusum: no axis calibrates the CUSUM; give --thresholds "
                             "watch,warning,critical (minus the accumulated fall, e.g. -40,-80,-120)")
        return [Cusum(override, reference_tokens=config.reference_tokens)]
    raise InputError(f"unknown detector {choice!r}: choose one of {', '.join(DETECTOR_CHOICES)}")


def parse_thresholds(text: str) -> Thresholds:
    """``"watch,warning,critical"`` (three numbers, watch > warning > critical)."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        vals = [float(p) for p in parts]
    except ValueError:
        vals = []
    if len(vals) != 3 or not all(math.isfinite(v) for v in vals):
        raise InputError(f"--thresholds takes three numbers watch,warning,critical (e.g. -40,-60,-64), not {text!r}")
    return Thresholds(*vals)


@dataclass
class TurnOutcome:
    """One scored turn, recorded and rescored: token counts, means of the tracked scores, end states."""

    turn: int
    recorded_tokens: int
    rescored_tokens: int
    recorded_mean: float | None
    rescored_mean: float | None
    recorded_state: str | None
    rescored_state: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def replay_alerts(tracker: DriftTracker, turns: Sequence[tuple[int, Sequence[float]]]
                  ) -> tuple[list[Alert], dict[int, str]]:
    """The alerts a fresh ``tracker`` (policy ``flag`` or ``cap``) raises over ``(turn, scores)`` from the
    session's first turn on, and each turn's end state (:func:`monitor.replay.replay`, as the engine)."""
    alerts: list[Alert] = []
    states: dict[int, str] = {}
    for r in replay(tracker, turns):
        alerts += [Alert(r.turn, ev.token_index, ev.level, ev.detector, ev.running, ev.threshold)
                   for ev in r.events if ev.kind == "alert"]
        states[r.turn] = r.summary.state
    return alerts, states


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _peak(states: Iterable[str | None]) -> str:
    return max((s for s in states if s in STATES), key=STATES.index, default="ok")


@dataclass
class SessionRescore:
    """One stored session rescored: its turns and alerts, recorded against rescored. ``skipped`` (why)
    for a session that could not be (nothing scored, erased, another model); ``notes`` for what a
    reader should know (rebuilt without the stored input, tokens split differently)."""

    session_id: str
    source: str = "live"
    policy: str | None = None
    model_id: str = ""
    created_at: float | None = None
    recorded_peak: str = "ok"
    rescored_peak: str = "ok"
    turns: list[TurnOutcome] = field(default_factory=list)
    comparison: Comparison = field(default_factory=Comparison)
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None

    def as_dict(self) -> dict[str, Any]:
        c = self.comparison
        return {"session_id": self.session_id, "source": self.source, "policy": self.policy,
                "model_id": self.model_id, "created_at": self.created_at, "skipped": self.skipped,
                "recorded_peak": self.recorded_peak, "rescored_peak": self.rescored_peak, "changed": c.changed,
                "kept": [{**r.as_dict(), "rescored_token_index": a.token_index, "rescored_score": a.score,
                          "rescored_threshold": a.threshold, "rescored_detector": a.detector} for r, a in c.kept],
                "added": [a.as_dict() for a in c.added], "dropped": [r.as_dict() for r in c.dropped],
                "turns": [t.as_dict() for t in self.turns], "notes": list(self.notes)}


def session_outcome(stored: Mapping[str, Any], rescored: Mapping[int, Sequence[float]], tracker: DriftTracker,
                    notes: Sequence[str] = ()) -> SessionRescore:
    """Compare a stored session (``Store.get_session``) with its rescored turns (stored turn number ->
    the new tracked scores of that reply), replayed through ``tracker`` (fresh; policy ``flag``)."""
    order = sorted(rescored)
    alerts, states = replay_alerts(tracker, [(t, rescored[t]) for t in order])
    by_turn = {int(t["turn"]): t for t in stored.get("turns", [])}
    turns = []
    for n in order:
        t = by_turn.get(n) or {}
        old = tracked_scores(t.get("scores") or [], t.get("pre_cap_scores"))
        turns.append(TurnOutcome(n, len(old), len(rescored[n]), _mean(old), _mean(rescored[n]), t.get("state"),
                                 states[n]))
    recorded = [Alert.from_dict(a) for a in stored.get("alerts", [])]
    peak = stored.get("peak_state") or _peak([*(t.get("state") for t in by_turn.values()), *(a.level for a in recorded)])
    return SessionRescore(
        str(stored["id"]), str(stored.get("source") or "live"), stored.get("policy"), str(stored.get("model_id") or ""),
        stored.get("created_at"), str(peak),
        _peak([*states.values(), *(a.level for a in alerts)]), turns, compare_alerts(recorded, alerts), list(notes))
