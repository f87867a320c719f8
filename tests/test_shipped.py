"""The artifacts shipped for the default model: they load, fit the model, and hold the measured numbers."""

from __future__ import annotations

import json

import torch

from monitor.settings import shipped_dir
from probes.artifacts import load_capping
from probes.ops import project, unit


def test_shipped_axis_fits_the_default_model(shipped, lm):
    shipped.check(lm.model_id, lm.hidden_size, lm.n_layers, strict_model_id=True)
    assert shipped.provenance["preset"] == "standard"
    assert len(shipped.role_vectors) >= 120
    stats = shipped.layer_stats()
    assert stats["mean_norm"] > 0 and stats["default"]["p50"] > stats["roles"]["p50"]


def test_axis_points_toward_the_assistant(shipped):
    """The default vector projects beyond every role vector at the monitor layer."""
    L, v = shipped.monitor_layer, shipped.unit()
    default = float(project(shipped.default_vector[L], v))
    roles = {n: float(project(r[L], v)) for n, r in shipped.role_vectors.items()}
    assert default > max(roles.values())
    ordered = sorted(roles, key=roles.get)
    # fantastical / adventurous characters at the far end, assistant-like professions near the Assistant
    assert {"pirate", "viking", "outlaw"} & set(ordered[:10])
    assert {"analyst", "planner", "advisor", "strategist"} & set(ordered[-10:])


def test_report_numbers_are_recorded(shipped):
    report = json.loads((shipped_dir() / "report.json").read_text())
    m = report["at_monitor_layer"]
    assert report["monitor_layer"] == shipped.monitor_layer
    # measured: |cos(PC1, axis)| 0.27, |cos(PC2, axis)| 0.75 (the axis is the 2nd component of our role set)
    assert max(m["abs_cos_pcs_axis"][:2]) >= 0.7
    assert m["auroc_heldout"] >= 0.92  # measured 0.934 on held-out questions (target 0.95: not met)
    assert report["judge_agreement"]["n"] >= 150 and report["judge_agreement"]["test"]["kappa"] > 0.4


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
