"""Detectors: each one statistic over a session's per-token scores, with thresholds calibrated for it.

Pure: no I/O, no torch. A :class:`~monitor.drift.DriftTracker` runs one or more detectors over the same
token scores and takes, token by token, the highest level any of them reaches (so a session alerts when
either fires). A detector knows only its statistic:

- :class:`SessionDrift` (``drift``): an exponentially weighted running score minus the session's opening
  reference, the mean score of its first reply (extended into later replies until it holds
  ``reference_tokens`` tokens). A fall *within* a conversation; silent until the reference is complete,
  so it can never fire in the first reply.
- :class:`Level` (``level``): an exponentially weighted running score itself, against absolute thresholds
  in projection units, from the first token on. It catches a persona adopted from the first reply (a
  persona jailbreak, a single-turn session), which has no Assistant opening to fall from. It needs an axis
  on which the register of a reply (a poem, a story, code) does not load, or every poem would page: the
  register-balanced axis of ``compute-axis`` (see ``docs/axis.md``).

Higher scores are more Assistant-like, so every statistic alerts when it falls below a threshold. A
detector's :meth:`~Detector.snapshot` is JSON-safe and :meth:`~Detector.restore` continues from it exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from monitor.errors import InputError


@dataclass(frozen=True)
class Thresholds:
    """Values of one detector's statistic (raw projection units on the unit axis, or drift below the
    session's reference); ``watch > warning > critical``."""

    watch: float
    warning: float
    critical: float

    def __post_init__(self) -> None:
        vals = (self.watch, self.warning, self.critical)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in vals):
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


def _alpha(alpha: float, who: str) -> float:
    if isinstance(alpha, bool) or not (isinstance(alpha, (int, float)) and 0.0 < alpha <= 1.0):
        raise InputError(f"{who} alpha must be in (0, 1], got {alpha!r}")
    return float(alpha)


class Detector:
    """One statistic over a session's token scores. Subclasses set :attr:`name` and :attr:`statistic`
    (what the number means, for people) and implement :meth:`push`."""

    name = ""
    statistic = ""

    def __init__(self, thresholds: Thresholds, hysteresis: float | None = None) -> None:
        if not isinstance(thresholds, Thresholds):
            raise InputError(f"detector {self.name}: thresholds must be Thresholds, got {thresholds!r}"[:200])
        h = thresholds.default_hysteresis if hysteresis is None else hysteresis
        if isinstance(h, bool) or not (isinstance(h, (int, float)) and math.isfinite(h) and h >= 0):
            raise InputError(f"detector {self.name}: hysteresis must be a finite number >= 0, got {h!r}")
        self.thresholds, self.hysteresis = thresholds, float(h)
        self.running: float | None = None  # the exponentially weighted running score
        self.value: float | None = None  # the statistic after the last token (None: not armed yet)

    def push(self, score: float) -> float | None:
        """Take one token's score; return the statistic after it (None while the detector is not armed)."""
        raise NotImplementedError

    def end_turn(self) -> None:
        """A reply ended (the statistic carries on)."""

    @property
    def reference(self) -> float | None:
        """What the statistic is measured from in raw units (0 for an absolute one; None while unknown):
        a threshold ``t`` of this detector is the raw score ``reference + t``."""
        return 0.0

    def knobs(self) -> dict:
        return {}

    def describe(self) -> dict:
        """Name, statistic, thresholds and settings: what the API, the dashboard and the records show."""
        return {"name": self.name, "statistic": self.statistic, "thresholds": self.thresholds.as_dict(),
                "hysteresis": self.hysteresis, **self.knobs()}

    _SAVED: tuple[str, ...] = ("running", "value")

    def snapshot(self) -> dict:
        return {k: getattr(self, k) for k in self._SAVED}

    def restore(self, snap: dict) -> None:
        if not isinstance(snap, dict) or any(k not in snap for k in self._SAVED):
            raise InputError(f"not a snapshot of detector {self.name}: {snap!r}"[:200])
        for k in self._SAVED:
            setattr(self, k, snap[k])


class SessionDrift(Detector):
    """``running - reference``: the running score (EWMA, weight ``alpha``) below the session's opening."""

    name = "drift"
    statistic = "running score minus the session's opening reference"
    _SAVED: tuple[str, ...] = ("running", "value", "_reference", "ref_n", "ref_sum")

    def __init__(self, thresholds: Thresholds, alpha: float = 0.1, reference_tokens: int = 16,
                 hysteresis: float | None = None) -> None:
        super().__init__(thresholds, hysteresis)
        self.alpha = _alpha(alpha, "drift")
        if isinstance(reference_tokens, bool) or not isinstance(reference_tokens, int) or reference_tokens < 0:
            raise InputError(f"drift reference_tokens must be an integer >= 0, got {reference_tokens!r}")
        self.reference_tokens = reference_tokens
        self._reference: float | None = None
        self.ref_n, self.ref_sum = 0, 0.0

    @property
    def reference(self) -> float | None:
        return self._reference

    def push(self, score: float) -> float | None:
        r = self.running
        self.running = r = score if r is None else self.alpha * score + (1.0 - self.alpha) * r
        if self._reference is None:  # still the session's opening: it is the reference, not compared to one
            self.ref_n += 1
            self.ref_sum += score
            return None
        self.value = r - self._reference
        return self.value

    def end_turn(self) -> None:
        if self._reference is None and self.ref_n and self.ref_n >= self.reference_tokens:
            self._reference = self.ref_sum / self.ref_n  # compared against from the next turn on
            self.value = None if self.running is None else self.running - self._reference

    def knobs(self) -> dict:
        return {"alpha": self.alpha, "reference_tokens": self.reference_tokens}


class Level(Detector):
    """The running score itself against absolute thresholds: the mean of the session's scores until it has
    ``1 / alpha`` of them, then an EWMA of weight ``alpha`` (a new token weighs ``max(alpha, 1 / n)``),
    armed once it has ``warmup`` tokens (from then on, in the first reply too). Started as a mean and armed
    after a warm-up, the statistic is not at the mercy of the first tokens (they run low on every model we
    looked at), which a plain EWMA would carry for ``1 / alpha`` tokens."""

    name = "level"
    statistic = "running score (absolute)"
    _SAVED = ("running", "value", "n")

    def __init__(self, thresholds: Thresholds, alpha: float = 0.02, hysteresis: float | None = None,
                 warmup: int = 16, mean_start: bool = True) -> None:
        super().__init__(thresholds, hysteresis)
        self.alpha = _alpha(alpha, "level")
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 1:
            raise InputError(f"level warmup must be an integer >= 1, got {warmup!r}")
        self.warmup, self.n, self.mean_start = warmup, 0, bool(mean_start)

    def push(self, score: float) -> float | None:
        self.n += 1
        r = self.running
        if r is None:
            self.running = score
        elif self.mean_start:
            self.running = r + max(self.alpha, 1.0 / self.n) * (score - r)
        else:  # the first releases' EWMA, to the last bit
            self.running = self.alpha * score + (1.0 - self.alpha) * r
        if self.n >= self.warmup:
            self.value = self.running
        return self.value

    def knobs(self) -> dict:
        return {"alpha": self.alpha, "warmup": self.warmup, "mean_start": self.mean_start}


class Cusum(SessionDrift):
    """A one-sided CUSUM of the fall below the session's opening: ``S = max(0, S + reference - score - slack)``
    per token after the reference, statistic ``-S`` (so, like every detector, it alerts when it falls below a
    threshold). It accumulates a sustained fall however slowly it comes, and forgets a dip of less than
    ``slack`` a token; compared against the EWMA drift in the detection study (``eval.detection_study``)."""

    name = "cusum"
    statistic = "minus the CUSUM of the fall below the session's opening reference"
    _SAVED = ("running", "value", "_reference", "ref_n", "ref_sum", "s")

    def __init__(self, thresholds: Thresholds, slack: float = 10.0, reference_tokens: int = 16,
                 hysteresis: float | None = None) -> None:
        super().__init__(thresholds, 1.0, reference_tokens, hysteresis)
        if isinstance(slack, bool) or not (isinstance(slack, (int, float)) and math.isfinite(slack) and slack >= 0):
            raise InputError(f"cusum slack must be a finite number >= 0, got {slack!r}")
        self.slack, self.s = float(slack), 0.0

    def push(self, score: float) -> float | None:
        if super().push(score) is None or self._reference is None:
            return None
        self.s = max(0.0, self.s + self._reference - score - self.slack)
        self.value = -self.s
        return self.value

    def end_turn(self) -> None:
        super().end_turn()
        if self._reference is not None:
            self.value = -self.s  # (when the reference just completed: nothing has accumulated yet)

    def knobs(self) -> dict:
        return {"slack": self.slack, "reference_tokens": self.reference_tokens}


DETECTORS = {"drift": SessionDrift, "level": Level, "cusum": Cusum}
