"""What a deployment's drift tracking runs with: the policy, the alert calibration an axis carries, the
smoothing and alerting knobs (:class:`DriftConfig`) and the detectors they make. Pure: no I/O.

:mod:`monitor.drift` runs them (the tracker) and re-exports every name here.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Literal, cast

from monitor.detectors import Detector, Level, SessionDrift, Thresholds
from monitor.errors import InputError
from monitor.records import POLICIES

Policy = Literal["observe", "flag", "cap"]
BASELINES = ("session", "absolute")


def parse_policy(s: str) -> Policy:
    """``"observe"``, ``"flag"`` or ``"cap"`` (case and surrounding blanks ignored); else InputError."""
    p = str(s).strip().lower()
    if p not in POLICIES:
        raise InputError(f"unknown drift policy {s!r}: choose one of {', '.join(POLICIES)}")
    return cast(Policy, p)


def thresholds_from_calibration(calibration: dict) -> tuple[Thresholds, dict]:
    """The calibrated thresholds and drift settings of an axis artifact (``calibration["alerting"]``,
    written by ``axiswatch calibrate-alerts``, which ``compute-axis`` runs as its last step).

    Returns the thresholds and the keyword arguments of :class:`DriftConfig` they were
    calibrated for (``alpha``, ``baseline``, ``reference_tokens``, ``min_tokens``): a threshold
    applies to one statistic only. Raises InputError when the axis has none."""
    al = calibration.get("alerting") if isinstance(calibration, dict) else None
    th = al.get("thresholds") if isinstance(al, dict) else None
    if not isinstance(al, dict) or not isinstance(th, dict):
        raise InputError("the axis artifact has no alert calibration: run 'axiswatch calibrate-alerts --axis <folder>' "
                         "or set AXISWATCH_THRESHOLD_WATCH / _WARNING / _CRITICAL")
    try:
        thresholds = Thresholds(float(th["watch"]), float(th["warning"]), float(th["critical"]))
    except (KeyError, TypeError, ValueError):
        raise InputError(f"the axis' alert calibration has malformed thresholds: {th!r}") from None
    knobs = {k: al[k] for k in ("alpha", "baseline", "reference_tokens", "min_tokens") if k in al}
    lv = al.get("level")
    if isinstance(lv, dict):  # the absolute detector, calibrated beside the drift (compute-axis since issue 20)
        lt = lv.get("thresholds")
        if not isinstance(lt, dict):
            raise InputError(f"the axis' alert calibration has malformed level thresholds: {lt!r}")
        try:
            knobs["level_thresholds"] = (float(lt["watch"]), float(lt["warning"]), float(lt["critical"]))
            knobs["level_alpha"] = float(lv.get("alpha", 0.02))
        except (KeyError, TypeError, ValueError):
            raise InputError(f"the axis' alert calibration has malformed level thresholds: {lt!r}") from None
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

    ``level_thresholds`` (watch, warning, critical in raw projection units) adds the absolute
    :class:`~monitor.detectors.Level` detector beside the drift, with its own EWMA weight ``level_alpha``
    and the default hysteresis of its own thresholds; None: the drift alone.
    """

    alpha: float = 0.1
    hysteresis: float | None = None
    min_tokens: int = 16
    cooldown_tokens: int = 64
    baseline: str = "session"
    reference_tokens: int = 16
    recover_tokens: int = 32
    level_thresholds: tuple[float, float, float] | None = None
    level_alpha: float = 0.02  # chosen on the dev half of the detection study (docs/alerting.md)

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
        if self.level_thresholds is not None:
            lt = self.level_thresholds
            if not isinstance(lt, (tuple, list)) or len(lt) != 3:
                raise InputError(f"level thresholds must be (watch, warning, critical), got {lt!r}")
            try:
                level = Thresholds(*lt)
            except InputError as e:
                raise InputError(str(e).replace("drift thresholds", "level thresholds", 1)) from None
            object.__setattr__(self, "level_thresholds", tuple(level.as_dict().values()))
            Level(level, self.level_alpha)  # checks the alpha

    def resolved(self, thresholds: Thresholds) -> DriftConfig:
        """This config with the default hysteresis filled in for these thresholds."""
        return self if self.hysteresis is not None else replace(self, hysteresis=thresholds.default_hysteresis)

    def as_dict(self) -> dict:
        d = asdict(self)
        if self.level_thresholds is None:  # the drift alone: the keys of the releases before the level detector
            del d["level_thresholds"], d["level_alpha"]
        else:
            d["level_thresholds"] = list(self.level_thresholds)
        return d


def make_detectors(thresholds: Thresholds, config: DriftConfig) -> list[Detector]:
    """The detectors a deployment runs, first the primary one (the drift from the session's opening, or for
    baseline ``absolute`` the running score itself), then the absolute level where it is configured."""
    dets: list[Detector] = [
        SessionDrift(thresholds, config.alpha, config.reference_tokens, config.hysteresis)
        # baseline "absolute": the first releases' statistic, a plain EWMA from the first token
        if config.baseline == "session" else Level(thresholds, config.alpha, config.hysteresis, 1, mean_start=False)]
    if config.level_thresholds is not None:  # a configured hysteresis holds for both (projection units)
        dets.append(Level(Thresholds(*config.level_thresholds), config.level_alpha, config.hysteresis,
                          max(config.min_tokens, 1)))
    return dets
