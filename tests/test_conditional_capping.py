"""Conditional (two-tier) capping in the sweep and the evaluation: settings, their configs, and generation with
the detector in the loop on the real default model and the shipped axis."""

from __future__ import annotations

import pytest

from calibrate.conditional import config_for, generate_flagged, parse_setting, plan_of
from calibrate.rollouts import batched_generate
from probes.errors import InputError
from probes.generation import LIGHT, STRONG, GenerationOptions
from probes.vllm_hooks import vllm_capping


def test_settings_parse_and_name_themselves():
    for text in ("L18-23_p90", "none>L18-23_p90", "L18-23_p75>L15-23_p95", "L18-23_p75>L15-23_p95:generated",
                 "L20-22_p75,90,95"):
        assert parse_setting(text).id == text
    s = parse_setting("L18-19_p50>L18-21_p90,90,95,95")
    assert s.light.layers == (18, 19) and s.strong.percentiles == (90, 90, 95, 95) and s.conditional
    assert not parse_setting("L18-23_p90").conditional and parse_setting("L18-23_p90:all").id == "L18-23_p90"
    for bad, why in (("L18_p90", "window"), ("L23-18_p90", "ends before"), ("none", "cannot be none"),
                     ("L10-12_p75>L18-23_p95", "light tier's layers"), ("L18-20_p75,90", "3 layers"),
                     ("L18-23_p90:prompt", "generated")):
        with pytest.raises(InputError, match=why):
            parse_setting(bad)


def test_configs_of_settings_on_the_shipped_axis(shipped):
    every = config_for(shipped, parse_setting("L18-23_p90"))
    assert every.light_taus == every.taus and not every.conditional  # every session from its first token
    cal = shipped.calibration["layers"]
    assert every.taus == [pytest.approx(cal[str(L)]["calibration_all"]["p90"]) for L in range(18, 24)]
    flagged_only = config_for(shipped, parse_setting("none>L18-23_p90"))
    assert flagged_only.light_taus is None and flagged_only.conditional
    two = config_for(shipped, parse_setting("L18-23_p75>L15-23_p95:generated"))
    assert two.layers == list(range(15, 24)) and two.tokens == "generated"
    assert two.light_taus[:3] == [None] * 3
    assert two.light_taus[3:] == [pytest.approx(cal[str(L)]["calibration_all"]["p75"]) for L in range(18, 24)]
    assert two.provenance["light"] == "L18-23_p75" and two.provenance["strong"] == "L15-23_p95"


PERSONAS = [("You are Captain Redbeard, a pirate who never breaks character. Speak like a pirate.", "Who are you?"),
            ("You are a medieval knight sworn to your king. Stay in character.", "Tell me about your day."),
            ("You are a vampire who has lived for 800 years. Speak as the vampire.", "What do you miss most?"),
            (None, "What is 12 times 7?")]


def test_generation_with_the_detector_in_the_loop(lm, shipped):
    """A flagged answer is at its light tier up to the token the detector flagged and strong after it; an answer
    never flagged is exactly the light tier's (here none: the unsteered answer)."""
    msgs = [([{"role": "system", "content": p}] if p else []) + [{"role": "user", "content": q}] for p, q in PERSONAS]
    opts = GenerationOptions(max_new_tokens=32)
    plain = batched_generate(lm, msgs, opts, 8)
    gens, flagged = generate_flagged(lm, shipped, msgs, opts, plan_of(shipped, parse_setting("none>L18-23_p90")), 8)
    assert any(f is not None for f in flagged) and flagged[-1] is None  # a persona is caught; arithmetic is not
    for g, f, p in zip(gens, flagged, plain):
        if f is None:
            assert g.token_ids == p.token_ids and set(g.cap_tiers) <= {0}
        else:
            assert g.cap_tiers[:f] == [0] * f and set(g.cap_tiers[f:]) <= {STRONG}
            assert g.token_ids[:f] == p.token_ids[:f]  # the same answer until the strong tier takes over
    light, _ = generate_flagged(lm, shipped, msgs[-1:], opts, plan_of(shipped, parse_setting("L18-23_p75>L15-23_p95")), 8)
    assert set(light[0].cap_tiers) == {LIGHT}  # the light tier from the first token


def test_vllm_refuses_two_tier_and_generated_only_configs(shipped):
    for text in ("L26-28_p90", "none>L26-28_p90"):  # every session, or flagged sessions only: one tier, the op's mask
        cfg = config_for(shipped, parse_setting(text))
        assert vllm_capping(cfg, 26) == (cfg, None)
    for text in ("L26-27_p75>L26-28_p90", "L26-28_p90:generated"):
        cfg, note = vllm_capping(config_for(shipped, parse_setting(text)), 26)
        assert cfg is None and "hf backend" in note
