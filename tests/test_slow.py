"""Slow end-to-end runs of the real pipelines (`make test-slow`, minutes on 2 cores)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.smollm]  # the default model, in subprocesses
AXISWATCH = str(Path(sys.executable).parent / "axiswatch")


def test_quick_preset_compute_axis_and_capping(tmp_path):
    work, out = tmp_path / "work", tmp_path / "axis"
    r = subprocess.run([AXISWATCH, "compute-axis", "--preset", "quick", "--work", str(work), "--out", str(out)],
                       capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "axis written to" in r.stdout
    rep = json.loads((out / "report.json").read_text())
    # 40 roles x 2 prompts x (3 questions + 2 register prompts); 5 default prompts x (16 questions + 32 register prompts)
    assert rep["counts"]["role_fit"] == 400 and rep["counts"]["default_fit"] == 240
    assert rep["axis_rule"].startswith("register-balanced") and rep["register_erasure"]["chosen_k"] in (0, 1, 2, 4)
    # the default answers project beyond every role at the monitor layer
    assert rep["default_projection"] > max(x["projection"] for x in rep["roles_along_axis"])
    regs = rep["registers"]
    print("quick preset:", {k: regs[k] for k in ("auroc_neutral_heldout_questions", "auroc_heldout_registers",
                                                 "creative_minus_code_in_gaps")}, rep["at_monitor_layer"])
    assert regs["auroc_neutral_heldout_questions"] > 0.75
    r = subprocess.run([AXISWATCH, "calibrate-capping", "--axis", str(out), "--quick"],
                       capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stderr[-2000:]
    cap = json.loads((out / "capping.json").read_text())
    assert cap["provenance"]["axis_fingerprint"] and len(cap["layers"]) == 4
    r = subprocess.run([AXISWATCH, "evaluate-steering", "--axis", str(out), "--coeffs", "-0.1,0,0.1",
                        "--max-new-tokens", "16"], capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads((out / "steering_report.json").read_text())["rows"]
    assert [x["coeff"] for x in rows] == [-0.1, 0.0, 0.1] and all(len(x["answers"]) >= 10 for x in rows)
