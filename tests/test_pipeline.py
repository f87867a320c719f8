"""compute-axis end to end on the tests' tiny random Llama, on a tiny role set (the pipeline's wiring: a
random model's axis means nothing); response means on it and, for replies that end their turn, on the real
default model."""

from __future__ import annotations

import json

import pytest
import torch

from calibrate.pipeline import compute_axis, role_vectors
from calibrate.roles import PRESETS, Preset, load_questions, load_roles, plan_jobs
from calibrate.rollouts import response_means
from probes.artifacts import load_axis
from probes.errors import InputError
from probes.generation import GenerationOptions, generate
from probes.models import format_chat

TINY = Preset("tiny", None, 1, 2, 2, 1, 1, 8)


class EveryoneInRole:
    """A judge that rates every answer 3: this test is about the pipeline, not the judge."""

    name = "all-three"

    def score(self, items):
        return [3] * len(items)


@pytest.fixture(scope="module")
def tiny_data():
    roles = [r for r in load_roles() if r["name"] in ("pirate", "ghost", "accountant", "wizard")]
    q = load_questions()
    return roles, {"extraction": q["extraction"][:4], "heldout": q["heldout"][:2], "identity": q["identity"]}


def test_bundled_data_sizes():
    roles, q = load_roles(), load_questions()
    assert len(roles) >= 120 and all(len(r["prompts"]) == 5 for r in roles)
    assert len(q["extraction"]) >= 60 and not set(q["extraction"]) & set(q["heldout"])


def test_plans_are_deterministic_and_cover_defaults():
    a, b = plan_jobs(PRESETS["quick"], "SmolLM"), plan_jobs(PRESETS["quick"], "SmolLM")
    assert [j.id for j in a] == [j.id for j in b]
    systems = {j.system for j in a if j.kind == "default"}
    assert systems == {None, "You are an AI assistant.", "You are a large language model.", "You are SmolLM.",
                       "Respond as yourself."}
    assert {j.split for j in a} == {"fit", "heldout"}


def test_compute_axis_end_to_end_and_resume(tiny_lm, tiny_data, tmp_path):
    roles, questions = tiny_data
    work, out = tmp_path / "work", tmp_path / "axis"
    art, report = compute_axis(tiny_lm, work, out, TINY, EveryoneInRole(), batch_size=8, roles=roles, questions=questions)
    assert art.axis.shape == (tiny_lm.n_layers, tiny_lm.hidden_size)
    assert sorted(art.role_vectors) == ["accountant", "ghost", "pirate", "wizard"]
    loaded = load_axis(out)
    assert torch.allclose(loaded.axis, art.axis) and loaded.monitor_layer == art.monitor_layer
    # axis = mean(default) - mean(role vectors), pointing toward the Assistant
    mean_roles = torch.stack(list(art.role_vectors.values())).mean(0)
    assert torch.allclose(art.axis, art.default_vector - mean_roles, atol=1e-3)
    for name in ("report.json", "variance_explained.png", "pc1_cosine.png", "roles_along_axis.png"):
        assert (out / name).is_file()
    rep = json.loads((out / "report.json").read_text())
    assert rep["n_roles_used"] == 4 and len(rep["per_layer"]["abs_cos_pc1_axis"]) == tiny_lm.n_layers
    assert rep["counts"]["default_fit"] == 5 * 2
    stats = loaded.calibration["layers"][str(art.monitor_layer)]
    assert stats["mean_norm"] > 0 and "p25" in stats["calibration_all"]
    # resume: a second run regenerates nothing and judges nothing new
    shards = {p: p.stat().st_mtime_ns for p in (work / "gen").iterdir()}
    judged = (work / "judge.jsonl").read_text()
    art2, _ = compute_axis(tiny_lm, work, out, TINY, EveryoneInRole(), batch_size=8, roles=roles, questions=questions)
    assert {p: p.stat().st_mtime_ns for p in (work / "gen").iterdir()} == shards
    assert (work / "judge.jsonl").read_text() == judged
    assert torch.allclose(art2.axis, art.axis)
    # a different plan in the same folder is refused
    with pytest.raises(InputError, match="another model, preset or data"):
        compute_axis(tiny_lm, work, out, PRESETS["quick"], EveryoneInRole(), roles=roles, questions=questions)


def test_role_vector_fallback_and_exclusion():
    from calibrate.roles import Rollout

    jobs = [Rollout(f"role:{r}:0:fit:{i}", "role", "fit", r, 0, "s", "q") for r in ("a", "b") for i in range(3)]
    means = {j.id: torch.full((2, 3), float(i)) for i, j in enumerate(jobs)}
    scores = {jobs[0].id: 3, jobs[1].id: 2, jobs[2].id: 1, jobs[3].id: 1, jobs[4].id: 0, jobs[5].id: 1}
    vecs, info = role_vectors(jobs, means, scores, min_score3=2)
    assert info["a"]["rule"].startswith("score>=2") and info["a"]["used"] == 2
    assert torch.allclose(vecs["a"], torch.full((2, 3), 0.5))
    assert "b" not in vecs and info["b"]["rule"] == "excluded"


# cut by the length limit (any model), and stopped by end of turn (the real model: a random one never ends its turn)
@pytest.mark.parametrize("model, max_new", [("tiny_lm", 6), pytest.param("lm", 60, marks=pytest.mark.smollm)])
def test_response_means_over_content_tokens_own_positions(request, model, max_new):
    lm = request.getfixturevalue(model)
    prompts = [[{"role": "user", "content": "What is 2 + 2?"}], [{"role": "user", "content": "Say hi."}]]
    outs = generate(lm, prompts, GenerationOptions(max_new_tokens=max_new))
    assert {g.finish_reason for g in outs} == {"length" if max_new == 6 else "stop"}
    means, norms = response_means(lm, prompts, [g.token_ids for g in outs])
    assert means.shape == (2, lm.n_layers, lm.hidden_size) and norms.shape == (2, lm.n_layers)
    for i, (msgs, g) in enumerate(zip(prompts, outs)):
        prompt_ids = lm.tokenizer(format_chat(lm.tokenizer, msgs), add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt_ids + g.token_ids])
        with torch.no_grad():
            hs = lm.model(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states
        n, k = len(prompt_ids), len(g.token_ids)
        for L in (0, lm.n_layers // 2, lm.n_layers - 2):
            expected = hs[L + 1][0, n : n + k]
            assert torch.allclose(means[i, L], expected.mean(0), atol=1e-3)
            assert norms[i, L] == pytest.approx(float(expected.norm(dim=-1).mean()), rel=1e-4)


def test_response_means_of_an_empty_answer_are_zero(tiny_lm):
    means, norms = response_means(tiny_lm, [[{"role": "user", "content": "Hi"}]], [[]])
    assert not means.any() and not norms.any()


# --- the register-balanced axis (detection issue) ----------------------------------------------------------

TINY_REGISTERS = Preset("tiny-registers", None, 1, 2, 2, 1, 1, 8, 2, 9, 1, 4)


def test_both_sides_answer_the_same_register_prompts():
    from calibrate.roles import load_registers

    regs = load_registers()
    fit = {r for r, v in regs.items() if v["split"] == "fit"}
    held = {r for r, v in regs.items() if v["split"] == "heldout"}
    assert len(fit) >= 6 and len(held) >= 3 and {"poem", "story", "code"} <= fit
    jobs = plan_jobs(PRESETS["standard"], "SmolLM")
    side = {kind: {(j.register, j.question) for j in jobs if j.kind == kind and j.register != "question"}
            for kind in ("role", "default")}
    assert side["role"] <= side["default"]  # every register prompt a role answers, the default answers too
    assert {r for r, _ in side["role"]} == fit | held
    assert all((j.split == "fit") == (j.register in fit) for j in jobs if j.register != "question")
    quick = plan_jobs(PRESETS["quick"], "SmolLM")
    assert {j.register for j in quick if j.kind == "default" and j.split == "fit"} == fit | {"question"}


def test_the_balanced_contrast_cancels_a_register_and_erasure_removes_what_is_left():
    from calibrate.contrast import balanced_contrast, erase_registers, register_basis

    g = torch.Generator().manual_seed(0)
    v, poem = torch.zeros(1, 8), torch.zeros(1, 8)
    v[0, 0], poem[0, 1] = 1.0, 5.0  # the persona direction; what a poem adds to any answer

    def answers(n, shift):
        return shift + 0.01 * torch.randn(n, 1, 8, generator=g)

    default = {"question": answers(50, v), "poem": answers(50, v + poem)}
    role = {"question": answers(40, 0 * v), "poem": answers(4, poem)}  # roles seldom write poems
    pooled = torch.cat(list(default.values())).mean(0) - torch.cat(list(role.values())).mean(0)
    assert abs(float(pooled[0, 1])) > 2.0  # pooling: half the default answers are poems, a tenth of the role's
    axis = balanced_contrast(default, role)
    assert torch.allclose(axis, v, atol=0.02)
    leaky = v + 0.5 * poem / 5.0
    basis = register_basis({k: x[:, 0] for k, x in default.items()}, 1)
    assert basis.shape == (1, 8) and abs(float(basis[0, 1])) > 0.99
    assert torch.allclose(erase_registers(leaky, default, 1), v, atol=0.02)
    with pytest.raises(InputError, match="share no kind"):
        balanced_contrast({"poem": answers(2, v)}, {"question": answers(2, v)})


def test_compute_axis_with_registers_reports_how_much_register_loads(tiny_lm, tiny_data, tmp_path):
    roles, questions = tiny_data
    art, report = compute_axis(tiny_lm, tmp_path / "work", tmp_path / "axis", TINY_REGISTERS, EveryoneInRole(),
                               batch_size=16, roles=roles, questions=questions)
    assert report["axis_rule"].startswith("register-balanced")
    assert report["register_erasure"]["chosen_k"] in report["register_erasure"]["choices"]
    regs = report["registers"]
    assert {"poem", "code", "question"} <= set(regs["per_register"]) and regs["gap"] is not None
    assert regs["per_register"]["poem"]["split"] == "fit" and regs["per_register"]["song"]["split"] == "heldout"
    for key in ("creative_minus_code_in_gaps", "auroc_neutral_heldout_questions", "auroc_heldout_registers"):
        assert key in regs
    assert json.loads((tmp_path / "axis" / "report.json").read_text())["axis_rule"] == report["axis_rule"]
