"""Drift tracking and policy: pure per-session state over per-token Assistant-Axis scores.

No I/O, no torch, no Redis: the engine feeds token scores in, gets events out,
and publishes them. Scores are raw projections on the unit axis at the monitor
layer (higher = more Assistant-like).

Per session a :class:`DriftTracker` keeps an exponentially weighted running
score (``running = alpha * score + (1 - alpha) * running``, initialised to the
first score) that carries across turns, and a state:

- ``ok`` while ``running >= watch``; ``watch`` below ``watch``; ``warning``
  below ``warning``; ``critical`` below ``critical``.
- Escalation is immediate. De-escalation needs ``running >= threshold +
  hysteresis`` for every level left behind (critical -> ok needs
  ``watch + hysteresis``), so a score oscillating around a threshold does not
  flap.

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
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, cast

from monitor.records import POLICIES, STATES
from monitor.errors import InputError

Policy = Literal["observe", "flag", "cap"]
State = Literal["ok", "watch", "warning", "critical"]
EventKind = Literal["state", "alert", "cap"]

_OK, _WATCH, _WARNING, _CRITICAL = 0, 1, 2, 3
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


def _pct(layer_stats: dict, group: str, key: str) -> float | None:
    g = layer_stats.get(group)
    v = g.get(key) if isinstance(g, dict) else None
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def thresholds_from_calibration(layer_stats: dict) -> Thresholds:
    """The default thresholds from an axis artifact's calibration statistics at the monitor layer.

    Rule (``d`` = the default answers' projections, ``r`` = the score-3 role
    answers', i.e. ``layer_stats["roles_score3"]``, falling back to
    ``layer_stats["roles"]`` when absent)::

        watch    = d.p10                  # below 90% of ordinary Assistant answers
        warning  = (d.p10 + r.p50) / 2    # halfway from there to a typical in-role answer
        critical = r.p50                  # as far toward the roles as the median in-role answer

    The percentiles are of per-response means (each calibration answer's
    projection averaged over its tokens). That is the right scale for the
    running score: a single token's projection is far noisier than a
    response's mean, and the EWMA averages the last ~``(2 - alpha) / alpha``
    tokens (19 at ``alpha = 0.1``), i.e. it estimates the same kind of
    response-level mean the percentiles describe.

    Raises InputError when a needed statistic is missing or the default p10 is
    not above the role p50 (an axis that does not separate them).
    """
    if not isinstance(layer_stats, dict) or not layer_stats:
        raise InputError("the axis artifact has no calibration statistics for the monitor layer; recompute the "
                         "axis or set AXISWATCH_THRESHOLD_WATCH / _WARNING / _CRITICAL")
    d10 = _pct(layer_stats, "default", "p10")
    group = "roles_score3" if _pct(layer_stats, "roles_score3", "p50") is not None else "roles"
    r50 = _pct(layer_stats, group, "p50")
    if d10 is None or r50 is None:
        missing = [n for n, v in (("default.p10", d10), ("roles_score3.p50 (or roles.p50)", r50)) if v is None]
        raise InputError(f"calibration statistics lack {' and '.join(missing)}; recompute the axis or set "
                         "AXISWATCH_THRESHOLD_WATCH / _WARNING / _CRITICAL")
    if not d10 > r50:
        raise InputError(f"calibration statistics are not ordered: default p10 ({d10}) must be above {group} p50 "
                         f"({r50}); the axis does not separate the Assistant from the roles at this layer")
    return Thresholds(watch=d10, warning=(d10 + r50) / 2.0, critical=r50)


@dataclass(frozen=True)
class DriftConfig:
    """Smoothing and alerting knobs.

    ``alpha``: EWMA weight of each new token, in (0, 1]. ``hysteresis``: score
    margin (raw projection units, >= 0) the running score must clear above a
    threshold before the state drops below that level; 0.0 by default because
    the projection scale differs per model and layer, so no absolute margin is
    right everywhere (the EWMA already smooths). ``min_tokens``: no alert before
    the session has seen this many scored tokens. ``cooldown_tokens``: after an
    alert, no alert at the same or a lower level for this many tokens.
    """

    alpha: float = 0.1
    hysteresis: float = 0.0
    min_tokens: int = 16
    cooldown_tokens: int = 64

    def __post_init__(self) -> None:
        if not (isinstance(self.alpha, (int, float)) and 0.0 < self.alpha <= 1.0):
            raise InputError(f"drift alpha must be in (0, 1], got {self.alpha!r}")
        if not (isinstance(self.hysteresis, (int, float)) and math.isfinite(self.hysteresis) and self.hysteresis >= 0):
            raise InputError(f"drift hysteresis must be a finite number >= 0, got {self.hysteresis!r}")
        for name in ("min_tokens", "cooldown_tokens"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise InputError(f"drift {name} must be an integer >= 0, got {v!r}")


@dataclass
class DriftEvent:
    """A state change, alert or capping switch at ``token_index`` (within ``turn``).

    ``old_state``/``new_state``: the tracker state before/after this token.
    ``level``: the new state (state events) or the alerted level (alert, cap).
    ``threshold``: for escalations, alerts and caps the threshold of ``level``;
    for de-escalations the bar cleared (the threshold just above the new state
    plus the hysteresis).
    """

    kind: EventKind
    turn: int
    token_index: int
    old_state: State
    new_state: State
    running: float
    threshold: float
    level: State


@dataclass
class TurnSummary:
    turn: int
    mean: float | None  # None for a turn with no scored tokens
    n_tokens: int
    state: State
    running: float | None


class DriftTracker:
    """Per-session drift state, carried across turns.

    Call :meth:`update` with each batch of token scores of the open turn (as
    often as needed), then :meth:`end_turn`. Turn numbers must increase.
    """

    def __init__(self, thresholds: Thresholds, config: DriftConfig | None = None, policy: str = "flag") -> None:
        self.thresholds = thresholds
        self.config = config or DriftConfig()
        self.policy: Policy = parse_policy(policy)
        self._t = (math.inf, thresholds.watch, thresholds.warning, thresholds.critical)  # index = level
        self._level = _OK
        self._running: float | None = None
        self._n = 0  # scored tokens in the session
        self._pending = False  # an escalation held back by min_tokens
        self._alert_level = _OK
        self._alert_n = -1  # session token count at the last alert; -1: none yet
        self._capping = False
        self._turn: int | None = None  # the open turn
        self._last_turn: int | None = None
        self._turn_n, self._turn_sum = 0, 0.0  # tokens and score sum of the open turn
        self._turn_means: list[float] = []

    @property
    def state(self) -> State:
        return _STATES[self._level]

    @property
    def running(self) -> float | None:
        return self._running

    @property
    def n_tokens(self) -> int:
        return self._n

    @property
    def capping(self) -> bool:
        return self._capping

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
        a, b, hyst = self.config.alpha, 1.0 - self.config.alpha, self.config.hysteresis
        min_tokens, cooldown = self.config.min_tokens, self.config.cooldown_tokens
        alerts = self.policy != "observe"
        isfinite = math.isfinite
        r, level, n, ti, total = self._running, self._level, self._n, self._turn_n, self._turn_sum
        try:
            for s in scores:
                s = float(s)
                if not isfinite(s):
                    raise InputError(f"token score {s} at turn {turn}, token {ti} is not finite")
                r = s if r is None else a * s + b * r
                n += 1
                total += s
                raw = _CRITICAL if r < critical else _WARNING if r < warning else _WATCH if r < watch else _OK
                new = level
                if raw > level:
                    new = raw
                elif raw < level:  # de-escalate only past threshold + hysteresis
                    while new > raw and r >= t[new] + hyst:
                        new -= 1
                if new != level:
                    old, thr = level, (t[new] if new > level else t[new + 1] + hyst)
                    events.append(DriftEvent("state", turn, ti, _STATES[old], _STATES[new], r, thr, _STATES[new]))
                    level = new
                    if new > old:
                        self._pending = alerts
                    elif new == _OK:
                        self._pending = False
                    if self._pending:
                        self._pending = n < min_tokens  # held back until min_tokens; else decided now
                        if n >= min_tokens:
                            self._alert(events, turn, ti, old, level, r, n, cooldown)
                elif self._pending and n >= min_tokens:
                    self._pending = False
                    self._alert(events, turn, ti, level, level, r, n, cooldown)
                ti += 1
        finally:
            self._running, self._level, self._n, self._turn_n, self._turn_sum = r, level, n, ti, total
        return events

    def _alert(self, events: list[DriftEvent], turn: int, ti: int, old: int, level: int, r: float, n: int,
               cooldown: int) -> None:
        if self._alert_n >= 0 and level <= self._alert_level and n - self._alert_n <= cooldown:
            return  # within the cooldown of an alert at this level or higher: dropped
        self._alert_level, self._alert_n = level, n
        events.append(DriftEvent("alert", turn, ti, _STATES[old], _STATES[level], r, self._t[level], _STATES[level]))
        if self.policy == "cap" and not self._capping and level >= _WARNING:
            self._capping = True
            events.append(DriftEvent("cap", turn, ti, _STATES[old], _STATES[level], r, self._t[level], _STATES[level]))

    def end_turn(self) -> TurnSummary:
        """Close the open turn (the running score and state carry on) and summarise it."""
        if self._turn is None:
            raise InputError("no turn in progress: call update(scores, turn) before end_turn()")
        mean = self._turn_sum / self._turn_n if self._turn_n else None
        if mean is not None:
            self._turn_means.append(mean)
        summary = TurnSummary(self._turn, mean, self._turn_n, self.state, self._running)
        self._last_turn, self._turn = self._turn, None
        return summary
