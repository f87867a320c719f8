"""The CLI end to end: real model, shipped artifacts, asserted output. Every command that loads a model runs
in a process of its own on the default model (``smollm``); the others need none."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

AXISWATCH = [str(Path(sys.executable).parent / "axiswatch")]


def run(*args, input_text=None, env=None):
    return subprocess.run(AXISWATCH + list(args), capture_output=True, text=True, input=input_text, timeout=600, env=env)


@pytest.fixture(scope="module")
def transcripts(tmp_path_factory):
    d = tmp_path_factory.mktemp("t")
    good = {"id": "conv-1", "messages": [
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "2 + 2 is 4."},
        {"role": "user", "content": "Who are you really?"},
        {"role": "assistant", "content": "I am the ancient spirit of the forest, child."}]}
    paper = {"conversation": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"}]}
    (d / "good.json").write_text(json.dumps(good))
    (d / "mixed.jsonl").write_text("\n".join([json.dumps(paper), "{not json", json.dumps({"messages": "x"}),
                                              json.dumps({**good, "id": "conv-2"})]) + "\n")
    (d / "latin1.json").write_bytes("{\"messages\": [{\"role\": \"user\", \"content\": \"caf\xe9\"}]}".encode("latin-1"))
    return d


def test_audit_json_schema(transcripts, shipped):
    r = run("audit", str(transcripts / "good.json"), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["id"] == "conv-1" and out["layer"] == shipped.monitor_layer
    assert out["model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert [t["index"] for t in out["turns"]] == [1, 3]
    for t in out["turns"]:
        assert t["role"] == "assistant" and len(t["scores"]) == len(t["tokens"]) > 0
        assert t["mean"] == pytest.approx(sum(t["scores"]) / len(t["scores"]))
    assert "".join(out["turns"][0]["tokens"]) == "2 + 2 is 4."


@pytest.mark.smollm  # an `axiswatch` process that loads the default model
def test_audit_bad_records_reported_good_ones_kept(transcripts):
    r = run("audit", str(transcripts / "mixed.jsonl"), str(transcripts / "latin1.json"), "--json")
    assert r.returncode == 1
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["id"] for x in lines] == ["mixed.jsonl:1", "conv-2"]  # nothing partial for the bad ones
    errs = r.stderr.strip().splitlines()
    assert len(errs) == 3 and all(e.startswith("error: ") for e in errs)
    assert "mixed.jsonl line 2" in errs[0] and "invalid JSON" in errs[0]
    assert "mixed.jsonl line 3" in errs[1]
    assert "latin1.json" in errs[2] and "UTF-8" in errs[2]


def _records(r):
    assert r.returncode == 0, r.stderr
    return [json.loads(x) for x in r.stdout.splitlines()]


def test_generate_json_with_cap_and_steer(tmp_path, shipped):
    inp = tmp_path / "in.jsonl"
    inp.write_text("\n".join(json.dumps(r) for r in [
        {"id": "a", "user": "What is the capital of France?"},
        {"id": "b", "system": "You are a ghost haunting an old castle.", "user": "Who are you?"}]) + "\n")
    plain = _records(run("generate", "--input", str(inp), "--max-new-tokens", "12", "--json"))
    assert [p["id"] for p in plain] == ["a", "b"]
    for p in plain:
        assert len(p["scores"]) == len(p["tokens"]) > 0 and p["layer"] == shipped.monitor_layer and p["capped"] is False
        assert "".join(p["tokens"]).strip() == p["text"].strip()
    capped = _records(run("generate", "--input", str(inp), "--max-new-tokens", "12", "--cap", "--json"))
    assert len(capped) == 2 and all(c["capped"] for c in capped)
    # steering adds 0.05 x the mean norm along the unit axis at the monitor layer: the first score moves by that much
    delta = 0.05 * shipped.mean_norm()
    steered = _records(run("generate", "--input", str(inp), "--max-new-tokens", "4", "--steer", "0.05", "--json"))
    for s, p in zip(steered, plain):
        assert s["scores"][0] == pytest.approx(p["scores"][0] + delta, abs=1e-2)


def test_generate_bad_input(tmp_path):
    inp = tmp_path / "bad.jsonl"
    inp.write_text(json.dumps({"id": "x", "user": "hi"}) + "\n" + json.dumps({"id": "y"}) + "\n")
    r = run("generate", "--input", str(inp), "--json")
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.strip() == f"error: {inp} line 2: needs 'user' (string) or 'messages' (list)"


def test_axis_show_json(shipped):
    r = run("axis", "show", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert (out["n_layers"], out["hidden_size"], out["monitor_layer"]) == (30, 576, shipped.monitor_layer)
    from safetensors.torch import load_file

    assert load_file(out["files"]["axis"])["axis"].shape == (30, 576)
    if out["files"]["role_vectors"] is not None:  # the shipped axis has none (its report lists the roles)
        roles = load_file(out["files"]["role_vectors"])
        assert len(roles) >= 100 and all(v.shape == (30, 576) for v in roles.values())
    assert "at_monitor_layer" in out["report"]


@pytest.mark.smollm
def test_axis_for_another_model_is_refused(tmp_path):
    from probes.artifacts import AxisArtifact

    AxisArtifact(axis=torch.randn(4, 64), model_id="other/model", monitor_layer=2).save(tmp_path / "ax")
    (tmp_path / "c.json").write_text(json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}))
    r = run("audit", str(tmp_path / "c.json"), "--axis", str(tmp_path / "ax"))
    assert r.returncode == 1 and r.stdout == ""
    assert "hidden size 64 != model's 576" in r.stderr and "4 layers != model's 30" in r.stderr


@pytest.mark.smollm
def test_import_paper_files(tmp_path):
    torch.save({"axis": torch.randn(30, 576)}, tmp_path / "assistant_axis.pt")
    u = torch.randn(576)
    torch.save({"vectors": {"v20": {"vector": u, "layer": 20}},
                "experiments": [{"id": "e1", "interventions": [{"vector": "v20", "cap": -2.0}]}]},
               tmp_path / "capping_config.pt")
    r = run("axis", "import-paper", "--axis-pt", str(tmp_path / "assistant_axis.pt"), "--capping-pt",
            str(tmp_path / "capping_config.pt"), "--model-id", "HuggingFaceTB/SmolLM2-135M-Instruct",
            "--out", str(tmp_path / "imported"))
    assert r.returncode == 0, r.stderr
    show = json.loads(run("axis", "show", "--axis", str(tmp_path / "imported"), "--json").stdout)
    assert show["monitor_layer"] == 15 and show["files"]["capping"]
    # an imported axis has no calibration statistics: --steer in norm units is refused, clearly
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"id": "a", "user": "hi"}) + "\n")
    r = run("generate", "--input", str(inp), "--axis", str(tmp_path / "imported"), "--steer", "0.1")
    assert r.returncode == 1 and r.stdout == "" and "mean residual norm" in r.stderr
    # capping from the imported file is usable
    r = run("generate", "--input", str(inp), "--axis", str(tmp_path / "imported"), "--cap", "--max-new-tokens", "3", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["capped"] is True


@pytest.mark.smollm
def test_demo_transcript_prints_a_trajectory():
    r = run("demo", "--transcript")
    assert r.returncode == 0, r.stderr
    assert "conversation sample-drift" in r.stdout
    import re

    # each assistant turn with its drift state; the bundled transcript drifts from a coding answer into alerts
    states = re.findall(r"^  turn (\d+)  mean [+-]\d+\.\d\d  state (\w+)$", r.stdout, re.M)
    assert [t for t, _ in states] == ["1", "3", "5"] and states[0][1] == "ok" and states[-1][1] != "ok"
    assert r.stdout.count("<- ALERT ") >= 1 and "\n  final state " in r.stdout


@pytest.mark.smollm
def test_demo_drives_scripted_conversations(tmp_path):
    import os

    r = run("demo", "--max-tokens", "8", env={**os.environ, "AXISWATCH_DATABASE_URL": f"sqlite:///{tmp_path / 'd.db'}",
                                             "REDIS_URL": ""})
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("\nturn ") == 3
    for name in ("coding", "vulnerable", "meta-reflection"):
        assert r.stdout.count(f"  {name} ") == 3
    import sqlite3

    with sqlite3.connect(tmp_path / "d.db") as c:
        rows = c.execute("select id, n_turns from sessions order by id").fetchall()
    assert len(rows) == 3 and all(n == 6 for _, n in rows)  # 3 user + 3 assistant turns each, persisted


def test_help_everywhere():
    for cmd in (["--help"], ["audit", "--help"], ["generate", "--help"], ["compute-axis", "--help"],
                ["calibrate-capping", "--help"], ["axis", "show", "--help"], ["axis", "import-paper", "--help"]):
        r = run(*cmd)
        assert r.returncode == 0 and "Usage:" in r.stdout
