"""calibrate-capping: the rule, the intervals and the Pareto frontier on hand-made records (pure), and a
tiny real sweep (the tests' tiny random Llama and its axis) that checkpoints, resumes and re-analyses."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from calibrate.capping import QUICK_SWEEP, Sweep, choose, write_capping
from calibrate.capping_report import BASE, analyse, pareto
from calibrate.judge import LexicalJudge
from probes.errors import InputError

PERSONAS = [{"persona": f"p{i // 2}", "prompt": "You are a pirate.", "question": "Who are you?", "keywords": ["ship"]}
            for i in range(20)]
TASKS = [{"id": f"a{i}", "category": "arithmetic", "prompt": "1+1?", "answer": 2} for i in range(50)]
IN_ROLE = "Arr, I am the captain of this ship! I sail the sea and fear no storm, matey."
ASSISTANT = "As an AI language model, I do not have personal experiences. Here are some tips."


class FixedJudge:
    name = "fixed"

    def score(self, items):
        return [3 if i.response == IN_ROLE else 1 for i in items]


def record(sid: str, n_adopt: int, n_right: int, layers=(18, 19), pct=75) -> dict:
    return {"id": sid, "layers": [] if sid == BASE else list(layers), "percentile": None if sid == BASE else pct,
            "taus": [], "personas": [{"text": IN_ROLE if i < n_adopt else ASSISTANT} for i in range(len(PERSONAS))],
            "tasks": [{"text": "2" if i < n_right else "3", "prefix": [i if i < n_right else -1]} for i in range(len(TASKS))]}


def test_rule_takes_the_largest_drop_within_two_points():
    recs = {BASE: record(BASE, 10, 40), "strong": record("strong", 0, 30), "mild": record("mild", 6, 40),
            "edge": record("edge", 4, 39)}
    rep = analyse(recs, PERSONAS, TASKS, FixedJudge(), max_capability_drop=0.02, n_boot=200)
    rows = {r["id"]: r for r in rep["rows"]}
    assert rep["unsteered"]["adoption"] == 0.5 and rep["unsteered"]["capability"] == 0.8
    assert rows["strong"]["relative_reduction"] == 1.0 and rows["strong"]["capability_change"] == pytest.approx(-0.2)
    assert rows["edge"]["capability_change"] == pytest.approx(-0.02)
    assert rep["chosen"]["id"] == "edge" and rep["rule_met"]  # -60% at -2 points beats -40% at 0; -100% costs 20
    assert rows["edge"]["relative_reduction"] == pytest.approx(0.6) and rep["meets_target"]
    lo, hi = rows["edge"]["relative_reduction_ci95"]
    assert lo <= 0.6 <= hi and rows["edge"]["right_to_wrong"] == 1 and rows["edge"]["wrong_to_right"] == 0
    assert rows["mild"]["prefix_unchanged"] == 1.0 and rows["strong"]["prefix_unchanged"] == 0.8
    assert {r["id"] for r in pareto(rep["rows"])} == {"strong", "mild", "edge"}


def test_no_setting_within_budget_picks_the_least_damage():
    recs = {BASE: record(BASE, 10, 40), "a": record("a", 0, 20), "b": record("b", 5, 35)}
    rep = analyse(recs, PERSONAS, TASKS, FixedJudge(), n_boot=50)
    assert rep["chosen"]["id"] == "b" and not rep["rule_met"] and "no setting" in rep["rule"]


def test_no_unsteered_adoption_says_so_and_keeps_capability():
    """With nothing adopted unsteered, no relative drop exists: the report says why and picks on capability."""
    recs = {BASE: record(BASE, 0, 40), "a": record("a", 0, 30), "b": record("b", 0, 38)}
    rep = analyse(recs, PERSONAS, TASKS, FixedJudge(), n_boot=50)
    assert rep["chosen"]["id"] == "b" and not rep["rule_met"] and "cannot fall" in rep["rule"]
    assert not rep["meets_target"]


def test_real_sweep_checkpoints_resumes_and_reanalyses(tiny_lm, tiny_axis, tmp_path):
    spec = replace(QUICK_SWEEP, percentiles=(90,), max_personas=2, max_tasks=3, persona_tokens=4, task_tokens=4,
                   compare_tokens=4)
    sweep = Sweep(tmp_path / "work", tiny_axis, spec)  # one window of 4 from 60% of 24 layers
    assert [c.id for c in sweep.configs] == ["L14-17_p90"] and sweep.budget() == 2 * 4 + 3 * 4
    sweep.run(tiny_lm, batch_size=4)
    done = sorted(p.name for p in (tmp_path / "work" / "settings").iterdir())
    assert done == ["L14-17_p90.json", "unsteered.json"] and sweep.todo() == []
    before = (tmp_path / "work" / "settings" / "unsteered.json").read_text()
    sweep.run(tiny_lm, batch_size=4)  # resumed: nothing generated again
    assert (tmp_path / "work" / "settings" / "unsteered.json").read_text() == before
    cfg, rep = choose(sweep, LexicalJudge())
    assert cfg.id == "L14-17_p90" and rep["n_tasks"] == 3 and rep["n_persona_prompts"] == 2
    assert rep["chosen"]["flagged_tasks"] is None and rep["unsteered"]["flagged_personas"] is None  # one tier
    assert cfg.light_taus == cfg.taus  # measured on every session from its first token, and served so
    write_capping(cfg, rep, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "capping_report.json").read_text())["chosen"]["id"] == "L14-17_p90"
    assert (tmp_path / "out" / "capping_pareto.png").stat().st_size > 1000
    with pytest.raises(InputError, match="another axis, prompts, tasks or token budgets"):
        Sweep(tmp_path / "work", tiny_axis, replace(spec, max_tasks=2)).open()
    grown = Sweep(tmp_path / "work", tiny_axis, replace(spec, percentiles=(75, 90)))  # a larger grid reuses the shared
    grown.open()
    assert [c.id if c else BASE for c in grown.todo()] == ["L14-17_p75"]
