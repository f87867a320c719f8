"""The artifacts shipped for the default model: they load, fit the model, and hold the measured numbers."""

from __future__ import annotations

import json

import pytest
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
    assert 0 <= m["abs_cos_pc1_axis"] <= 1
    assert m["auroc_heldout"] >= 0.9  # measured 0.937 on held-out questions
    assert report["judge_agreement"]["n"] >= 150


def test_shipped_capping_config(shipped, lm):
    path = shipped_dir() / "capping.json"
    if not path.exists():
        pytest.skip("no capping config shipped yet")
    cfg = load_capping(shipped_dir())
    cfg.check(lm.hidden_size, lm.n_layers)
    for k, L in enumerate(cfg.layers):
        assert torch.allclose(cfg.vectors[k], unit(shipped.axis[L]), atol=1e-5)
    rep = json.loads((shipped_dir() / "capping_report.json").read_text())
    assert rep["chosen"]["id"] == cfg.id and len(rep["rows"]) >= 8
