"""Conditional (two-tier) capping in the sweep: the settings and their generation with the detector in the loop.

A setting is written ``LIGHT>STRONG[:generated]``: every session is floored at ``LIGHT`` from its first
token (``none``: not capped), and at ``STRONG`` from the token after the detector flags it (the alert at
``warning`` or above that switches policy ``cap`` on), as the service does. Each tier is a window and
a percentile of the calibration projections, ``L18-23_p90``; the strong tier may name one percentile per
layer, ``L15-23_p90,90,90,95,95,95,95,95,95``. ``:generated`` floors only the positions that produce a
reply's tokens. A plain ``L18-23_p90`` (the earlier sweeps' settings) caps every session from its first
token, which is ``L18-23_p90>L18-23_p90``.

:func:`generate_flagged` answers chats as the service would under such a config: the monitor layer's
pre-cap score of every token goes through a :class:`~monitor.drift.DriftTracker` of the axis' own
alert calibration (the same detectors, thresholds and ``min_tokens``), and a row it flags is raised to
the strong tier from its next token.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

from monitor.drift import DriftConfig, DriftTracker, thresholds_from_calibration
from probes.artifacts import AxisArtifact, CappingConfig
from probes.errors import InputError
from probes.generation import LIGHT, STRONG, CapPlan, Generated, GenerationOptions, cap_plan, generate
from probes.models import LoadedModel, format_chat
from probes.ops import unit

_TIER_RE = re.compile(r"^L(\d+)-(\d+)_p(\d+(?:,\d+)*)$")


@dataclass(frozen=True)
class Tier:
    layers: tuple[int, ...]
    percentiles: tuple[int, ...]  # one per layer

    @property
    def id(self) -> str:
        ps = self.percentiles
        p = str(ps[0]) if len(set(ps)) == 1 else ",".join(map(str, ps))
        return f"L{self.layers[0]}-{self.layers[-1]}_p{p}"


def parse_tier(text: str) -> Tier | None:
    """``none`` -> None; ``L18-23_p90`` or ``L15-17_p90,90,95`` -> a :class:`Tier`."""
    if text.strip().lower() == "none":
        return None
    m = _TIER_RE.match(text.strip())
    if not m:
        raise InputError(f"capping tier {text!r}: write a window and percentile like L18-23_p90 (or none)")
    a, b = int(m.group(1)), int(m.group(2))
    if b < a:
        raise InputError(f"capping tier {text!r}: the window ends before it starts")
    layers = tuple(range(a, b + 1))
    ps = tuple(int(x) for x in m.group(3).split(","))
    if len(ps) == 1:
        ps = ps * len(layers)
    if len(ps) != len(layers):
        raise InputError(f"capping tier {text!r}: {len(ps)} percentiles for {len(layers)} layers")
    return Tier(layers, ps)


@dataclass(frozen=True)
class Setting:
    """One sweep setting: the light tier (None: no floor until flagged), the strong tier, which tokens."""

    light: Tier | None
    strong: Tier
    tokens: str = "all"

    @property
    def id(self) -> str:
        base = self.strong.id if self.light == self.strong else f"{self.light.id if self.light else 'none'}>{self.strong.id}"
        return base + (":generated" if self.tokens == "generated" else "")

    @property
    def conditional(self) -> bool:
        """Does the detector matter (the two tiers differ)?"""
        return self.light != self.strong


def parse_setting(text: str) -> Setting:
    body, _, tokens = text.strip().partition(":")
    if tokens not in ("", "all", "generated"):
        raise InputError(f"capping setting {text!r}: after ':' write generated (or all)")
    light_s, sep, strong_s = body.partition(">")
    strong = parse_tier(strong_s if sep else light_s)
    if strong is None:
        raise InputError(f"capping setting {text!r}: the strong tier cannot be none")
    light = parse_tier(light_s) if sep else strong
    if light is not None and not set(light.layers) <= set(strong.layers):
        raise InputError(f"capping setting {text!r}: the light tier's layers must lie in the strong tier's window")
    return Setting(light, strong, tokens or "all")


def _floors(art: AxisArtifact, tier: Tier) -> dict[int, float]:
    stats = art.calibration.get("layers", {})
    try:
        return {L: float(stats[str(L)]["calibration_all"][f"p{p}"]) for L, p in zip(tier.layers, tier.percentiles)}
    except KeyError:
        raise InputError(f"the axis has no calibration percentile for tier {tier.id}; recompute it") from None


def config_for(art: AxisArtifact, setting: Setting) -> CappingConfig:
    """The capping config of a setting (one tier when both are the same)."""
    strong = _floors(art, setting.strong)
    layers = list(setting.strong.layers)
    if not setting.conditional:  # one tier: every session from its first token
        light: list[float | None] | None = [strong[L] for L in layers]
    elif setting.light is None:  # no floor until the detector flags the session
        light = None
    else:
        lf = _floors(art, setting.light)
        light = [lf.get(L) for L in layers]
    prov = {"strong": setting.strong.id, "light": setting.light.id if setting.light else None, "tokens": setting.tokens,
            "percentile": setting.strong.percentiles[-1],
            "of": "per-response projections of default and role answers", "axis_fingerprint": art.fingerprint()}
    return CappingConfig(id=setting.id, layers=layers, vectors=torch.stack([unit(art.axis[L]) for L in layers]),
                         taus=[strong[L] for L in layers], model_id=art.model_id, provenance=prov,
                         light_taus=light, tokens=setting.tokens)


def tracker_for(art: AxisArtifact) -> Callable[[], DriftTracker]:
    """A fresh tracker per session, on the axis' own alert calibration and policy ``cap``."""
    thresholds, knobs = thresholds_from_calibration(art.calibration)
    config = DriftConfig(**knobs)
    return lambda: DriftTracker(thresholds, config, policy="cap")


class _Flagger:
    """A batch's streamer: every row's pre-cap scores into its tracker; a flagged row goes strong."""

    def __init__(self, trackers: list[DriftTracker], tiers: torch.Tensor):
        self.trackers, self.tiers = trackers, tiers
        self.flagged_at: list[int | None] = [None] * len(trackers)
        self.n = [0] * len(trackers)

    def put(self, step, tokens, scores, content, pre_scores) -> None:
        for i, tr in enumerate(self.trackers):
            if not bool(content[i]):
                continue
            tr.update([float(pre_scores[i])], 1)
            self.n[i] += 1
            if tr.capping and self.flagged_at[i] is None:
                self.flagged_at[i] = self.n[i]  # capped from the next token on
                self.tiers[i] = STRONG

    def end(self) -> None:
        pass


def generate_flagged(lm: LoadedModel, art: AxisArtifact, msgs: list[list[dict]], opts: GenerationOptions,
                     plan: CapPlan, batch_size: int, on_batch: Callable[[int], None] | None = None
                     ) -> tuple[list[Generated], list[int | None]]:
    """Answers under a two-tier plan with the detector in the loop, in input order, and per answer the
    number of tokens generated before it was flagged (None: never). Batches of similar prompt length."""
    new = tracker_for(art)
    lengths = [len(lm.tokenizer(format_chat(lm.tokenizer, m))["input_ids"]) for m in msgs]
    order = sorted(range(len(msgs)), key=lambda i: (lengths[i], i))
    out: list = [None] * len(msgs)
    flagged: list[int | None] = [None] * len(msgs)
    start = LIGHT if plan.light is not None else 0
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        tiers = torch.full((len(idx),), start, dtype=torch.long)
        fl = _Flagger([new() for _ in idx], tiers)
        gens = generate(lm, [msgs[k] for k in idx], opts, axis=art.unit(), monitor_layer=art.monitor_layer,
                        capping=plan, cap_rows=tiers, streamer=fl)
        for j, (k, g) in enumerate(zip(idx, gens)):
            out[k], flagged[k] = g, fl.flagged_at[j]
        if on_batch is not None:
            on_batch(len(idx))
    return out, flagged


def plan_of(art: AxisArtifact, setting: Setting) -> CapPlan:
    plan = cap_plan(config_for(art, setting))
    assert plan is not None
    return plan
