"""The artifacts shipped for the default model: they load, fit the model, and hold the measured numbers."""

from __future__ import annotations

import json

import pytest
import torch

from calibrate.conditional import config_for, parse_setting
from monitor.settings import shipped_dir
from probes.artifacts import load_capping
from probes.ops import unit


def test_shipped_axis_fits_the_default_model(shipped, lm):
    shipped.check(lm.model_id, lm.hidden_size, lm.n_layers, strict_model_id=True)
    assert shipped.provenance["preset"] == "standard"
    assert shipped.provenance["preset_config"]["register_prompts_per_prompt"] > 0  # the register-balanced fit
    stats = shipped.layer_stats()
    assert stats["mean_norm"] > 0 and stats["default"]["p50"] > stats["roles"]["p50"]


def test_axis_points_toward_the_assistant():
    """At the monitor layer the default answers project beyond every role's in-role answers (the role
    projections compute-axis recorded in its report; this axis ships without the role vectors themselves)."""
    report = json.loads((shipped_dir() / "report.json").read_text())
    roles = {r["role"]: r["projection"] for r in report["roles_along_axis"]}
    assert len(roles) >= 120 and report["default_projection"] > max(roles.values())
    ordered = sorted(roles, key=roles.get)
    # fantastical / adventurous characters at the far end, assistant-like professions near the Assistant
    assert {"pirate", "viking", "outlaw"} & set(ordered[:10])
    assert {"analyst", "planner", "statistician", "researcher"} & set(ordered[-10:])


def test_report_numbers_are_recorded(shipped):
    report = json.loads((shipped_dir() / "report.json").read_text())
    assert report["monitor_layer"] == shipped.monitor_layer
    reg = report["registers"]
    # measured on the standard run's own answers: neutral held-out questions 0.919, held-out registers
    # (song, dialogue, recipe, speech) 0.75; default poems and stories 0.87 gaps below code (was 1.63)
    assert reg["auroc_neutral_heldout_questions"] >= 0.9 and reg["auroc_heldout_registers"] >= 0.7
    assert abs(reg["creative_minus_code_in_gaps"]) < 1.0
    assert report["judge_agreement"]["n"] >= 150 and report["judge_agreement"]["test"]["kappa"] > 0.4
    # the level detector's thresholds are part of the artifact, from its own calibration conversations
    level = shipped.calibration["alerting"]["level"]
    assert level["thresholds"]["critical"] < level["thresholds"]["warning"] < level["thresholds"]["watch"]


def test_shipped_capping_config(shipped, lm):
    cfg = load_capping(shipped_dir())
    assert cfg.provenance["axis_fingerprint"] == shipped.fingerprint()
    cfg.check(lm.hidden_size, lm.n_layers)
    for k, L in enumerate(cfg.layers):
        assert torch.allclose(cfg.vectors[k], unit(shipped.axis[L]), atol=1e-5)
    rep = json.loads((shipped_dir() / "capping_report.json").read_text())
    assert rep["chosen"]["id"] == cfg.id and len(rep["rows"]) >= 6 and rep["rule_met"]
    # the shipped config is what the stated rule picks from the report's own rows
    ok = [r for r in rep["rows"] if r["capability_change"] >= -rep["max_capability_drop"] - 1e-12]
    assert max(ok, key=lambda r: r["relative_reduction"])["id"] == cfg.id
    assert rep["n_persona_prompts"] >= 300 and rep["n_tasks"] >= 300
    # its floors are the calibration percentiles its id names, tier by tier (two tiers: light, strong once flagged)
    again = config_for(shipped, parse_setting(cfg.id))
    assert again.taus == pytest.approx(cfg.taus) and again.layers == cfg.layers and again.tokens == cfg.tokens
    assert [t is None for t in again.light_taus or []] == [t is None for t in cfg.light_taus or []]
    assert [t for t in again.light_taus or [] if t is not None] == pytest.approx([t for t in cfg.light_taus or []
                                                                                  if t is not None])
    assert rep["chosen"]["flagged_tasks"] is not None  # benign tasks ran with the detector in the loop
