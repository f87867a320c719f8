"""Drift tracking and policy: pure per-session state over per-token Assistant-Axis scores.

No I/O, no torch, no Redis: the engine feeds token scores in, gets events out,
and publishes them. Scores are raw projections on the unit axis at the monitor
layer (higher = more Assistant-like).

Per session a :class:`DriftTracker` keeps an exponentially weighted running
score (``running = alpha * score + (1 - alpha) * running``, initialised to the
first score) that carries across turns, and its **drift**, the statistic the
thresholds apply to:

- baseline ``session`` (the default): ``drift = running - reference``, where the
  reference is the mean score of the session's opening, its first assistant
  reply (extended into later replies until it holds ``reference_tokens``
  tokens). Drift is a fall *within a conversation*: on our default model a
  poem or a story projects far below a coding answer from its first token (the
  projection measures the voice of a reply as much as the persona behind it),
  while drifting conversations start like any other and fall turn after turn.
  Until the reference is complete there is no drift and the state stays ``ok``;
- baseline ``absolute``: ``drift = running`` (thresholds in raw projection
  units, from the first token on).

States, from ``drift``:

- ``ok`` while ``drift >= watch``; ``watch`` below ``watch``; ``warning``
  below ``warning``; ``critical`` below ``critical``.
- Escalation is immediate. De-escalation needs ``drift >= threshold +
  hysteresis`` for every level left behind (critical -> ok needs
  ``watch + hysteresis``), held for ``recover_tokens`` consecutive tokens, so a
  score oscillating around a threshold does not flap and a session does not
  look healthy after a few calm tokens. The default hysteresis is a quarter of
  the alerting band (``0.25 * (watch - critical)``), in the thresholds' own
  units, so it fits every model and layer the thresholds were calibrated for.

Events (:class:`DriftEvent`), in order, per token:

- ``state`` on every state change;
- ``alert`` when the state escalates (policy ``flag`` or ``cap`` only), not
  before the session has ``min_tokens`` scored tokens and not within
  ``cooldown_tokens`` of the previous alert unless the new level is higher.
  An escalation held back by ``min_tokens`` is deferred, not dropped: it fires
  at the first token allowed, at the state then current, if that is still
  above ``ok`` (a session that starts out critical is alerted). One held back
  by the cooldown is dropped (that episode was alerted already).
- ``cap`` once per session with policy ``cap``, at the first alert at level
  ``warning`` or ``critical``; :attr:`DriftTracker.capping` stays on for the
  rest of the session (the engine caps from the next token on).
- ``resolve`` when the state falls below the level of an alert still open
  (so after the hysteresis and the ``recover_tokens`` dwell): its ``level`` is
  the new state, and every open alert above it is resolved.

:meth:`DriftTracker.snapshot` is the whole state as a JSON-safe dict (stored with each turn);
:meth:`DriftTracker.restore` continues from it exactly, as if the process had never stopped.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, cast

from monitor.detectors import Detector, Thresholds
from monitor.drift_config import (
    BASELINES,
    DriftConfig,
    Policy,
    make_detectors,
    parse_policy,
    thresholds_from_calibration,
)
from monitor.errors import InputError
from monitor.records import STATES

__all__ = ["BASELINES", "DriftConfig", "DriftEvent", "DriftTracker", "Thresholds", "TurnSummary", "make_detectors",
           "parse_policy", "reading", "snapshot_reading", "thresholds_from_calibration"]

State = Literal["ok", "watch", "warning", "critical"]
EventKind = Literal["state", "alert", "cap", "resolve"]

_OK, _WATCH, _WARNING, _CRITICAL = 0, 1, 2, 3
_STATES = cast("tuple[State, State, State, State]", STATES)  # index = level


@dataclass
class DriftEvent:
    """A state change, alert or capping switch at ``token_index`` (within ``turn``).

    ``old_state``/``new_state``: the tracker state before/after this token.
    ``level``: the new state (state events) or the alerted level (alert, cap).
    ``detector``: the detector whose statistic set the level (``drift``, ``level``).
    ``running``: that detector's running score; ``drift``: its statistic, the value its thresholds apply to.
    ``threshold``: for escalations, alerts and caps the threshold of ``level``;
    for de-escalations the bar cleared (the threshold just above the new state
    plus the hysteresis). Like ``running``, it is in raw projection units (the
    session's reference plus the relative threshold), so ``running < threshold``
    on every escalation.
    """

    kind: EventKind
    turn: int
    token_index: int
    old_state: State
    new_state: State
    running: float
    threshold: float
    level: State
    drift: float = 0.0
    detector: str = "drift"


def reading(statistics: Sequence[tuple[str, float | None]], level: int, leader: int) -> tuple[str | None, float | None]:
    """The statistic a session's state comes from, ``(detector, value)``, to show beside the state: the
    leading detector's while the state is above ``ok``; while ``ok``, the first detector (in the tracker's
    order, the primary first) whose statistic is set. ``statistics``: ``(name, value)`` per detector."""
    if not statistics:
        return None, None
    if level != _OK and 0 <= leader < len(statistics):
        return statistics[leader]
    return next(((n, v) for n, v in statistics if v is not None), (statistics[0][0], None))


def snapshot_reading(snap: dict | None) -> tuple[str | None, float | None]:
    """:func:`reading` of a stored :meth:`DriftTracker.snapshot` (``(None, None)`` for none). A first
    release's snapshot (``v`` 1: one statistic) reads as its drift."""
    if not isinstance(snap, dict):
        return None, None
    if snap.get("v") == 1:
        snap = _upgrade_v1(snap, "drift")
    dets = snap.get("detectors")
    if not isinstance(dets, dict):
        return None, None
    stats = [(str(n), d.get("value") if isinstance(d, dict) else None) for n, d in dets.items()]
    return reading(stats, int(snap.get("level") or 0), int(snap.get("leader") or 0))


@dataclass
class TurnSummary:
    turn: int
    mean: float | None  # None for a turn with no scored tokens
    n_tokens: int
    state: State
    running: float | None
    drift: float | None = None  # None until the session's reference is complete
    reference: float | None = None
    detector: str | None = None  # the detector whose statistic holds the state (None while ok)
    statistics: dict[str, float | None] | None = None  # every detector's statistic at the turn's end


class DriftTracker:
    """Per-session drift state, carried across turns, over one or more detectors (:mod:`monitor.detectors`).

    Call :meth:`update` with each batch of token scores of the open turn (as
    often as needed), then :meth:`end_turn`. Turn numbers must increase. The state is the highest level
    any detector's statistic reaches; it drops only when every detector has cleared the bar.
    ``detectors``: default :func:`make_detectors` of ``thresholds`` and ``config``.
    """

    def __init__(self, thresholds: Thresholds, config: DriftConfig | None = None, policy: str = "flag",
                 detectors: Sequence[Detector] | None = None) -> None:
        self.thresholds = thresholds
        # the detectors from the config as given: a hysteresis left unset is each detector's own default
        self.detectors: list[Detector] = list(detectors) if detectors is not None \
            else make_detectors(thresholds, config or DriftConfig())
        self.config = (config or DriftConfig()).resolved(thresholds)
        self.policy: Policy = parse_policy(policy)
        if not self.detectors or len({d.name for d in self.detectors}) != len(self.detectors):
            raise InputError("a drift tracker needs one or more detectors with distinct names")
        self._bars = [(math.inf, d.thresholds.watch, d.thresholds.warning, d.thresholds.critical)
                      for d in self.detectors]  # per detector, index = level
        self._level = _OK
        self._leader = 0  # index of the detector whose statistic set the level
        self._n = 0  # scored tokens in the session
        self._pending = False  # an escalation held back by min_tokens
        self._alert_level = _OK
        self._alert_n = -1  # session token count at the last alert; -1: none yet
        self._open_bits = 0  # bit k set: an alert at level k is not yet resolved
        self._calm = 0  # consecutive tokens past the bar below the current level
        self._capping = False
        self._turn: int | None = None  # the open turn
        self._last_turn: int | None = None
        self._turn_n, self._turn_sum = 0, 0.0  # tokens and score sum of the open turn
        self._turn_means: list[float] = []

    _SAVED = ("_level", "_leader", "_n", "_pending", "_alert_level", "_alert_n", "_open_bits", "_calm",
              "_capping", "_last_turn", "_turn_means")

    def snapshot(self) -> dict:
        """The tracker's whole state between turns, JSON-safe: :meth:`restore` continues from it exactly."""
        if self._turn is not None:
            raise InputError(f"turn {self._turn} is still open; snapshot between turns")
        return {"v": 2, **{k[1:]: getattr(self, k) for k in self._SAVED}, "turn_means": list(self._turn_means),
                "detectors": {d.name: d.snapshot() for d in self.detectors}}

    def restore(self, snap: dict) -> None:
        """Continue from a :meth:`snapshot` (of a tracker with the same thresholds, config and detectors).
        A snapshot of the first tracker (``v`` 1: one statistic, stored by earlier releases) restores into
        the primary detector; the others start afresh."""
        if isinstance(snap, dict) and snap.get("v") == 1:
            snap = _upgrade_v1(snap, self.detectors[0].name)
        if not isinstance(snap, dict) or snap.get("v") != 2 or any(k[1:] not in snap for k in self._SAVED) \
                or not isinstance(snap.get("detectors"), dict):
            raise InputError(f"not a drift tracker snapshot: {snap!r}"[:200])
        restored = []  # every detector's state is checked before anything is set: a bad snapshot changes nothing
        for d in self.detectors:
            fresh = copy.copy(d)
            if d.name in snap["detectors"]:
                fresh.restore(snap["detectors"][d.name])
            restored.append(fresh)
        self.detectors = restored
        for k in self._SAVED:
            setattr(self, k, snap[k[1:]])
        self._leader = min(int(self._leader), len(self.detectors) - 1)
        self._turn_means = list(snap["turn_means"])
        self._turn = None

    @property
    def state(self) -> State:
        return _STATES[self._level]

    @property
    def primary(self) -> Detector:
        return self.detectors[0]

    @property
    def running(self) -> float | None:
        """The primary detector's running score."""
        return self.primary.running

    @property
    def reference(self) -> float | None:
        """The session's opening reference (0 for baseline ``absolute``); None until it is complete."""
        return self.primary.reference

    @property
    def drift(self) -> float | None:
        """The primary detector's statistic (``running - reference``); None before the reference."""
        return self.primary.value

    @property
    def detector(self) -> str | None:
        """The detector whose statistic holds the current state (None while ``ok``)."""
        return self.detectors[self._leader].name if self._level != _OK else None

    @property
    def statistics(self) -> dict[str, float | None]:
        """Every detector's statistic, by name."""
        return {d.name: d.value for d in self.detectors}

    @property
    def reading(self) -> tuple[str | None, float | None]:
        """The statistic the state comes from, ``(detector, value)`` (:func:`reading`)."""
        return reading([(d.name, d.value) for d in self.detectors], self._level, self._leader)

    @property
    def n_tokens(self) -> int:
        return self._n

    @property
    def capping(self) -> bool:
        return self._capping

    @property
    def open_alert_level(self) -> State:
        """The highest level with an alert not yet resolved (``ok``: none)."""
        return _STATES[self._open_bits.bit_length() - 1 if self._open_bits else _OK]

    @property
    def turn_means(self) -> list[float]:
        """Means of the ended turns that had scored tokens, in order."""
        return list(self._turn_means)

    def _open(self, turn: int) -> None:
        if self._turn is None:
            if self._last_turn is not None and turn <= self._last_turn:
                raise InputError(f"turn {turn} comes after ended turn {self._last_turn}; turn numbers must increase")
            self._turn, self._turn_n, self._turn_sum = turn, 0, 0.0
        elif turn != self._turn:
            raise InputError(f"turn {self._turn} is still open; call end_turn() before scoring turn {turn}")

    def _event(self, kind: EventKind, turn: int, ti: int, old: int, new: int, level: int, k: int,
               threshold: float) -> DriftEvent:
        d = self.detectors[k]
        assert d.running is not None and d.value is not None  # an event comes from an armed detector
        return DriftEvent(kind, turn, ti, _STATES[old], _STATES[new], d.running, threshold + (d.reference or 0.0),
                          _STATES[level], d.value, d.name)

    def update(self, scores: Sequence[float], turn: int) -> list[DriftEvent]:
        """Process the token scores of ``turn`` in order; return the events they caused."""
        self._open(turn)
        events: list[DriftEvent] = []
        dets, bars = self.detectors, self._bars
        hysts = [d.hysteresis for d in dets]
        recover = self.config.recover_tokens
        min_tokens, cooldown = self.config.min_tokens, self.config.cooldown_tokens
        alerts = self.policy != "observe"
        isfinite = math.isfinite
        level, n, ti, total, calm = self._level, self._n, self._turn_n, self._turn_sum, self._calm
        try:
            for s in scores:
                s = float(s)
                if not isfinite(s):
                    raise InputError(f"token score {s} at turn {turn}, token {ti} is not finite")
                n += 1
                total += s
                raw, lead, armed = _OK, self._leader, False
                vals = [d.push(s) for d in dets]
                levels = [_OK] * len(dets)
                for k, v in enumerate(vals):
                    if v is None:
                        continue
                    armed = True
                    t = bars[k]
                    levels[k] = r = _CRITICAL if v < t[3] else _WARNING if v < t[2] else _WATCH if v < t[1] else _OK
                    if r > raw:
                        raw, lead = r, k
                if levels[self._leader] < raw:  # another detector is further out: it is the one holding the state
                    self._leader = lead
                if not armed:  # no statistic yet (the drift's reference is still open): nothing to compare
                    ti += 1
                    continue
                new = level
                if raw > level:
                    new, calm = raw, 0
                    self._leader = lead
                elif raw < level and all(v is None or v >= bars[k][level] + hysts[k] for k, v in enumerate(vals)):
                    calm += 1  # every detector past its bar: calm for one more token
                    if calm >= recover:  # held long enough: drop as far as every detector's bars allow
                        while new > raw and all(v is None or v >= bars[k][new] + hysts[k] for k, v in enumerate(vals)):
                            new -= 1
                        calm = 0
                        self._leader = lead
                else:
                    calm = 0
                if new != level:
                    old, k = level, self._leader
                    thr = bars[k][new] if new > level else bars[k][new + 1] + hysts[k]
                    events.append(self._event("state", turn, ti, old, new, new, k, thr))
                    level = new
                    if self._open_bits >> (new + 1):  # the open alerts above the new state are over
                        self._open_bits &= (1 << (new + 1)) - 1
                        events.append(self._event("resolve", turn, ti, old, new, new, k, thr))
                    if new > old:
                        self._pending = alerts
                    elif new == _OK:
                        self._pending = False
                    if self._pending:
                        self._pending = n < min_tokens  # held back until min_tokens; else decided now
                        if n >= min_tokens:
                            self._alert(events, turn, ti, old, level, n, cooldown)
                elif self._pending and n >= min_tokens:
                    self._pending = False
                    self._alert(events, turn, ti, level, level, n, cooldown)
                ti += 1
        finally:
            self._level, self._n, self._turn_n, self._turn_sum = level, n, ti, total
            self._calm = calm
        return events

    def _alert(self, events: list[DriftEvent], turn: int, ti: int, old: int, level: int, n: int, cooldown: int) -> None:
        if self._alert_n >= 0 and level <= self._alert_level and n - self._alert_n <= cooldown:
            return  # within the cooldown of an alert at this level or higher: dropped
        self._alert_level, self._alert_n = level, n
        self._open_bits |= 1 << level
        k = self._leader
        events.append(self._event("alert", turn, ti, old, level, level, k, self._bars[k][level]))
        if self.policy == "cap" and not self._capping and level >= _WARNING:
            self._capping = True
            events.append(self._event("cap", turn, ti, old, level, level, k, self._bars[k][level]))

    def end_turn(self) -> TurnSummary:
        """Close the open turn (the running score and state carry on) and summarise it."""
        if self._turn is None:
            raise InputError("no turn in progress: call update(scores, turn) before end_turn()")
        mean = self._turn_sum / self._turn_n if self._turn_n else None
        if mean is not None:
            self._turn_means.append(mean)
        for d in self.detectors:
            d.end_turn()
        summary = TurnSummary(self._turn, mean, self._turn_n, self.state, self.running, self.drift, self.reference,
                              self.detector, self.statistics)
        self._last_turn, self._turn = self._turn, None
        return summary


def _upgrade_v1(snap: dict, primary: str) -> dict:
    """A first-tracker snapshot (one EWMA statistic) as a v2 one: its running score and reference become the
    primary detector's state."""
    try:
        ref = snap["reference"]
        value = None if snap["running"] is None or ref is None else snap["running"] - ref
        det = {"running": snap["running"], "value": value}
        if primary == "drift":
            det.update(_reference=ref, ref_n=snap["ref_n"], ref_sum=snap["ref_sum"])
        else:  # baseline absolute: a level detector that has seen every scored token of the session
            det.update(value=snap["running"], n=snap["n"])
        out = {k: v for k, v in snap.items() if k not in ("running", "reference", "ref_n", "ref_sum")}
        return {**out, "v": 2, "leader": 0, "detectors": {primary: det}}
    except (KeyError, TypeError):
        return snap
