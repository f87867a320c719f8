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

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Literal, cast

from monitor.errors import InputError
from monitor.records import POLICIES, STATES

Policy = Literal["observe", "flag", "cap"]
State = Literal["ok", "watch", "warning", "critical"]
EventKind = Literal["state", "alert", "cap", "resolve"]

_OK, _WATCH, _WARNING, _CRITICAL = 0, 1, 2, 3
BASELINES = ("session", "absolute")
_STATES = cast("tuple[State, State, State, State]", STATES)  # index = level


def parse_policy(s: str) -> Policy:
    """``"observe"``, ``"flag"`` or ``"cap"`` (case and surrounding blanks ignored); else InputError."""
    p = str(s).strip().lower()
    if p not in POLICIES:
        raise InputError(f"unknown drift policy {s!r}: choose one of {', '.join(POLICIES)}")
    return cast(Policy, p)


@dataclass(frozen=True)
class Thresholds:
    """Raw projection values on the unit axis; ``watch > warning > critical``."""

    watch: float
    warning: float
    critical: float

    def __post_init__(self) -> None:
        vals = (self.watch, self.warning, self.critical)
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in vals):
            raise InputError(f"drift thresholds must be finite numbers, got watch={self.watch!r}, "
                             f"warning={self.warning!r}, critical={self.critical!r}")
        if not self.watch > self.warning > self.critical:
            raise InputError(f"drift thresholds must satisfy watch > warning > critical, got watch={self.watch}, "
                             f"warning={self.warning}, critical={self.critical}")

    def as_dict(self) -> dict[str, float]:
        return {"watch": float(self.watch), "warning": float(self.warning), "critical": float(self.critical)}

    @property
    def default_hysteresis(self) -> float:
        """A quarter of the alerting band: the margin used when none is configured."""
        return 0.25 * (self.watch - self.critical)


def thresholds_from_calibration(calibration: dict) -> tuple[Thresholds, dict]:
    """The calibrated thresholds and drift settings of an axis artifact (``calibration["alerting"]``,
    written by ``axiswatch calibrate-alerts``, which ``compute-axis`` runs as its last step).

    Returns the thresholds and the keyword arguments of :class:`DriftConfig` they were
    calibrated for (``alpha``, ``baseline``, ``reference_tokens``, ``min_tokens``): a threshold
    applies to one statistic only. Raises InputError when the axis has none."""
    al = calibration.get("alerting") if isinstance(calibration, dict) else None
    th = al.get("thresholds") if isinstance(al, dict) else None
    if not isinstance(th, dict):
        raise InputError("the axis artifact has no alert calibration: run 'axiswatch calibrate-alerts --axis <folder>' "
                         "or set AXISWATCH_THRESHOLD_WATCH / _WARNING / _CRITICAL")
    try:
        thresholds = Thresholds(float(th["watch"]), float(th["warning"]), float(th["critical"]))
    except (KeyError, TypeError, ValueError):
        raise InputError(f"the axis' alert calibration has malformed thresholds: {th!r}") from None
    knobs = {k: al[k] for k in ("alpha", "baseline", "reference_tokens", "min_tokens") if k in al}  # type: ignore[index,operator]  # al is the dict th came from
    return thresholds, knobs


@dataclass(frozen=True)
class DriftConfig:
    """Smoothing and alerting knobs.

    ``alpha``: EWMA weight of each new token, in (0, 1]. ``baseline``: ``session``
    (drift relative to the session's opening reference) or ``absolute`` (the running
    score itself). ``reference_tokens``: the least number of tokens the reference
    averages (the whole first reply, and more replies while it is shorter). ``hysteresis``: score
    margin (the thresholds' units, >= 0) the drift must clear above a threshold before the
    state drops below that level; None (the default): :attr:`Thresholds.default_hysteresis`,
    a quarter of the alerting band, since the projection scale differs per model and layer.
    ``recover_tokens``: consecutive tokens past that margin before the state drops (and the
    alerts above it resolve). ``min_tokens``: no alert before the session has seen this many
    scored tokens. ``cooldown_tokens``: after an alert, no alert at the same or a lower level
    for this many tokens.
    """

    alpha: float = 0.1
    hysteresis: float | None = None
    min_tokens: int = 16
    cooldown_tokens: int = 64
    baseline: str = "session"
    reference_tokens: int = 16
    recover_tokens: int = 32

    def __post_init__(self) -> None:
        if not (isinstance(self.alpha, (int, float)) and 0.0 < self.alpha <= 1.0):
            raise InputError(f"drift alpha must be in (0, 1], got {self.alpha!r}")
        if self.baseline not in BASELINES:
            raise InputError(f"drift baseline must be one of {', '.join(BASELINES)}, got {self.baseline!r}")
        h = self.hysteresis
        if h is not None and not (isinstance(h, (int, float)) and math.isfinite(h) and h >= 0):
            raise InputError(f"drift hysteresis must be a finite number >= 0, got {h!r}")
        for name in ("min_tokens", "cooldown_tokens", "reference_tokens", "recover_tokens"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise InputError(f"drift {name} must be an integer >= 0, got {v!r}")

    def resolved(self, thresholds: Thresholds) -> DriftConfig:
        """This config with the default hysteresis filled in for these thresholds."""
        return self if self.hysteresis is not None else replace(self, hysteresis=thresholds.default_hysteresis)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class DriftEvent:
    """A state change, alert or capping switch at ``token_index`` (within ``turn``).

    ``old_state``/``new_state``: the tracker state before/after this token.
    ``level``: the new state (state events) or the alerted level (alert, cap).
    ``running``: the running score; ``drift``: the statistic the thresholds apply to.
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


@dataclass
class TurnSummary:
    turn: int
    mean: float | None  # None for a turn with no scored tokens
    n_tokens: int
    state: State
    running: float | None
    drift: float | None = None  # None until the session's reference is complete
    reference: float | None = None


class DriftTracker:
    """Per-session drift state, carried across turns.

    Call :meth:`update` with each batch of token scores of the open turn (as
    often as needed), then :meth:`end_turn`. Turn numbers must increase.
    """

    def __init__(self, thresholds: Thresholds, config: DriftConfig | None = None, policy: str = "flag") -> None:
        self.thresholds = thresholds
        self.config = (config or DriftConfig()).resolved(thresholds)
        self.policy: Policy = parse_policy(policy)
        self._t = (math.inf, thresholds.watch, thresholds.warning, thresholds.critical)  # index = level
        self._level = _OK
        self._running: float | None = None
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
        # the session's opening reference (baseline "session"); fixed at the end of the turn that completes it
        self._reference: float | None = 0.0 if self.config.baseline == "absolute" else None
        self._ref_n, self._ref_sum = 0, 0.0

    _SAVED = ("_level", "_running", "_n", "_pending", "_alert_level", "_alert_n", "_open_bits", "_calm",
              "_capping", "_last_turn", "_turn_means", "_reference", "_ref_n", "_ref_sum")

    def snapshot(self) -> dict:
        """The tracker's whole state between turns, JSON-safe: :meth:`restore` continues from it exactly."""
        if self._turn is not None:
            raise InputError(f"turn {self._turn} is still open; snapshot between turns")
        return {"v": 1, **{k[1:]: getattr(self, k) for k in self._SAVED}, "turn_means": list(self._turn_means)}

    def restore(self, snap: dict) -> None:
        """Continue from a :meth:`snapshot` (of a tracker with the same thresholds and config)."""
        if not isinstance(snap, dict) or snap.get("v") != 1 or any(k[1:] not in snap for k in self._SAVED):
            raise InputError(f"not a drift tracker snapshot: {snap!r}"[:200])
        for k in self._SAVED:
            setattr(self, k, snap[k[1:]])
        self._turn_means = list(snap["turn_means"])
        self._turn = None

    @property
    def state(self) -> State:
        return _STATES[self._level]

    @property
    def running(self) -> float | None:
        return self._running

    @property
    def reference(self) -> float | None:
        """The session's opening reference (0 for baseline ``absolute``); None until it is complete."""
        return self._reference

    @property
    def drift(self) -> float | None:
        """``running - reference``: the statistic the thresholds apply to; None before the reference."""
        return None if self._running is None or self._reference is None else self._running - self._reference

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

    def update(self, scores: Sequence[float], turn: int) -> list[DriftEvent]:
        """Process the token scores of ``turn`` in order; return the events they caused."""
        self._open(turn)
        events: list[DriftEvent] = []
        t = self._t
        watch, warning, critical = t[1], t[2], t[3]
        a, b = self.config.alpha, 1.0 - self.config.alpha
        hyst, recover = float(self.config.hysteresis or 0.0), self.config.recover_tokens
        min_tokens, cooldown = self.config.min_tokens, self.config.cooldown_tokens
        alerts = self.policy != "observe"
        isfinite = math.isfinite
        ref = self._reference
        r, level, n, ti, total, calm = self._running, self._level, self._n, self._turn_n, self._turn_sum, self._calm
        try:
            for s in scores:
                s = float(s)
                if not isfinite(s):
                    raise InputError(f"token score {s} at turn {turn}, token {ti} is not finite")
                r = s if r is None else a * s + b * r
                n += 1
                total += s
                if ref is None:  # still the session's opening: it is the reference, not yet compared to one
                    self._ref_n += 1
                    self._ref_sum += s
                    ti += 1
                    continue
                d = r - ref
                raw = _CRITICAL if d < critical else _WARNING if d < warning else _WATCH if d < watch else _OK
                new = level
                if raw > level:
                    new, calm = raw, 0
                elif raw < level and d >= t[level] + hyst:  # past the bar: calm for one more token
                    calm += 1
                    if calm >= recover:  # held long enough: drop as far as the bars allow
                        while new > raw and d >= t[new] + hyst:
                            new -= 1
                        calm = 0
                else:
                    calm = 0
                if new != level:
                    old, thr = level, (t[new] if new > level else t[new + 1] + hyst)
                    events.append(DriftEvent("state", turn, ti, _STATES[old], _STATES[new], r, thr + ref, _STATES[new], d))
                    level = new
                    if self._open_bits >> (new + 1):  # the open alerts above the new state are over
                        self._open_bits &= (1 << (new + 1)) - 1
                        events.append(DriftEvent("resolve", turn, ti, _STATES[old], _STATES[new], r, thr + ref,
                                                 _STATES[new], d))
                    if new > old:
                        self._pending = alerts
                    elif new == _OK:
                        self._pending = False
                    if self._pending:
                        self._pending = n < min_tokens  # held back until min_tokens; else decided now
                        if n >= min_tokens:
                            self._alert(events, turn, ti, old, level, r, ref, n, cooldown)
                elif self._pending and n >= min_tokens:
                    self._pending = False
                    self._alert(events, turn, ti, level, level, r, ref, n, cooldown)
                ti += 1
        finally:
            self._running, self._level, self._n, self._turn_n, self._turn_sum = r, level, n, ti, total
            self._calm = calm
        return events

    def _alert(self, events: list[DriftEvent], turn: int, ti: int, old: int, level: int, r: float, ref: float, n: int,
               cooldown: int) -> None:
        if self._alert_n >= 0 and level <= self._alert_level and n - self._alert_n <= cooldown:
            return  # within the cooldown of an alert at this level or higher: dropped
        self._alert_level, self._alert_n = level, n
        self._open_bits |= 1 << level
        thr = self._t[level] + ref
        events.append(DriftEvent("alert", turn, ti, _STATES[old], _STATES[level], r, thr, _STATES[level], r - ref))
        if self.policy == "cap" and not self._capping and level >= _WARNING:
            self._capping = True
            events.append(DriftEvent("cap", turn, ti, _STATES[old], _STATES[level], r, thr, _STATES[level], r - ref))

    def end_turn(self) -> TurnSummary:
        """Close the open turn (the running score and state carry on) and summarise it."""
        if self._turn is None:
            raise InputError("no turn in progress: call update(scores, turn) before end_turn()")
        mean = self._turn_sum / self._turn_n if self._turn_n else None
        if mean is not None:
            self._turn_means.append(mean)
        if self._reference is None and self._ref_n and self._ref_n >= self.config.reference_tokens:
            self._reference = self._ref_sum / self._ref_n  # compared against from the next turn on
        summary = TurnSummary(self._turn, mean, self._turn_n, self.state, self._running, self.drift, self._reference)
        self._last_turn, self._turn = self._turn, None
        return summary
