"""``compute-axis``: the paper's pipeline, resumable step by step.

Steps, each checkpointed in the work folder so a rerun skips finished work:

1. ``plan.json``      the jobs (roles x prompts x questions, plus default prompts)
2. ``gen/NNNNN.*``    batched greedy generation; per response the mean residual
                      activation over its content tokens at every layer
                      (``[n_layers, hidden]``) and the mean residual norm
                      (:func:`calibrate.rollouts.response_means`)
3. ``judge.jsonl``    0-3 role-adherence score per role response
4. the axis folder    role vectors (score-3 answers), default vector, axis,
                      PCA, calibration statistics, monitor layer, report + plots

Activations are averaged over the response's content tokens' own positions
(the paper's choice; no template or end-of-turn tokens). Live per-token scores
use the position that produced each token, one position earlier: over a whole
response the two means differ by one token at each end.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from calibrate.contrast import balanced_contrast, erase_registers
from calibrate.judge import Judge, JudgeItem, agreement
from calibrate.roles import Preset, Rollout, load_roles, plan_jobs
from calibrate.rollouts import response_means
from calibrate.stats import abs_cos, auroc, pca
from probes.artifacts import AxisArtifact
from probes.errors import InputError
from probes.generation import GenerationOptions, generate
from probes.models import LoadedModel
from probes.ops import percentiles, project, unit

log = logging.getLogger(__name__)
PCTS = (5, 10, 25, 50, 75, 90, 95)
MIN_SCORE3 = 3  # answers needed for a role vector from score-3 answers alone


# --- step 1: plan -----------------------------------------------------------------------

def write_plan(work: Path, lm: LoadedModel, preset: Preset, roles=None, questions=None,
               batch_size: int = 48) -> tuple[list[Rollout], int]:
    """Write (or check) ``plan.json``; returns the jobs and the batch size shards are cut with.

    The batch size is part of the plan because shards are numbered by batch:
    a resumed run keeps the first run's batch size."""
    jobs = plan_jobs(preset, lm.display_name, roles, questions)
    plan = json.loads(json.dumps({"model_id": lm.model_id, "preset": asdict(preset), "batch_size": batch_size,
                                  "jobs": [asdict(j) for j in jobs]}))
    path = work / "plan.json"
    if path.exists():
        old = json.loads(path.read_text())
        if old["model_id"] != plan["model_id"] or old["preset"] != plan["preset"] or old["jobs"] != plan["jobs"]:
            raise InputError(f"{work} holds a run with another model, preset or data; "
                             "use a new --work folder or --fresh to start over")
        if old.get("batch_size", batch_size) != batch_size:
            log.warning("resuming %s with its original batch size %s (not %s)", work, old["batch_size"], batch_size)
        return jobs, int(old.get("batch_size", batch_size))
    work.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(plan))
    return jobs, batch_size


# --- step 2: generation -----------------------------------------------------------------

def _shards(jobs: list[Rollout], lm: LoadedModel, batch_size: int) -> list[list[Rollout]]:
    """Batches of jobs with similar prompt lengths (less padding), in a stable order."""
    lengths = {j.id: len(lm.tokenizer(j.question + (j.system or ""))["input_ids"]) for j in jobs}
    ordered = sorted(jobs, key=lambda j: (lengths[j.id], j.id))
    return [ordered[i:i + batch_size] for i in range(0, len(ordered), batch_size)]


def run_generation(work: Path, lm: LoadedModel, jobs: list[Rollout], preset: Preset, batch_size: int = 48) -> None:
    gen_dir = work / "gen"
    gen_dir.mkdir(exist_ok=True)
    shards = _shards(jobs, lm, batch_size)
    todo = [(i, s) for i, s in enumerate(shards) if not (gen_dir / f"{i:05d}.json").exists()]
    opts = GenerationOptions(max_new_tokens=preset.max_new_tokens)
    done = len(shards) - len(todo)
    with tqdm(total=len(jobs), initial=sum(len(s) for i, s in enumerate(shards) if (gen_dir / f"{i:05d}.json").exists()),
              desc="generate", unit="resp", disable=False, mininterval=2) as bar:
        for i, shard in todo:
            t0 = time.perf_counter()
            chats = [j.messages() for j in shard]
            outs = generate(lm, chats, opts)
            means, norms = response_means(lm, chats, [o.token_ids for o in outs])
            save_file({"means": means.contiguous(), "norms": norms.contiguous()}, gen_dir / f"{i:05d}.safetensors")
            records = [{"id": j.id, "text": o.text, "n_tokens": len(o.token_ids), "finish": o.finish_reason}
                       for j, o in zip(shard, outs)]
            # the JSON is written last: its presence marks the shard complete
            tmp = gen_dir / f"{i:05d}.json.tmp"
            tmp.write_text(json.dumps({"seconds": round(time.perf_counter() - t0, 3), "records": records}))
            tmp.rename(gen_dir / f"{i:05d}.json")
            bar.update(len(shard))
    log.info("generation: %d shards, %d were already done", len(shards), done)


def load_generations(work: Path) -> tuple[dict[str, dict], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    texts, means, norms = {}, {}, {}
    for js in sorted((work / "gen").glob("*.json")):
        recs = json.loads(js.read_text())["records"]
        tensors = load_file(str(js.with_suffix(".safetensors")))
        for k, r in enumerate(recs):
            texts[r["id"]] = r
            means[r["id"]] = tensors["means"][k]
            norms[r["id"]] = tensors["norms"][k]
    return texts, means, norms


# --- step 3: judging --------------------------------------------------------------------

def run_judge(work: Path, jobs: list[Rollout], texts: dict[str, dict], judge: Judge, batch: int = 32) -> dict[str, int]:
    path = work / "judge.jsonl"
    scores: dict[str, int] = {}
    if path.exists():
        lines = path.read_text().splitlines()
        for line in lines:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a kill: its item is judged again
                continue
            if rec.get("judge") == judge.name:
                scores[rec["id"]] = rec["score"]
        path.write_text("".join(line + "\n" for line in lines if line.strip().endswith("}")))
    todo = [j for j in jobs if j.kind == "role" and j.id not in scores and j.id in texts]
    with path.open("a") as f, tqdm(total=len(todo), desc=f"judge ({judge.name})", unit="resp", disable=False, mininterval=2) as bar:
        for i in range(0, len(todo), batch):
            chunk = todo[i:i + batch]
            items = [JudgeItem(j.role, j.system or "", j.question, texts[j.id]["text"], j.keywords) for j in chunk]
            for j, s in zip(chunk, judge.score(items)):
                scores[j.id] = int(s)
                f.write(json.dumps({"id": j.id, "score": int(s), "judge": judge.name}) + "\n")
            f.flush()
            bar.update(len(chunk))
    return scores


# --- step 4: vectors, axis, PCA, calibration --------------------------------------------

def in_role_answers(jobs: list[Rollout], scores: dict[str, int], min_score3: int = MIN_SCORE3
                    ) -> tuple[dict[str, list[Rollout]], dict[str, dict]]:
    """Per role, the fit answers its vector averages: the ones judged 3. Fallback (documented, reported):
    fewer than ``min_score3`` such answers -> the answers scored >= 2; none of those either -> the role is
    left out (it has no entry in the first dict)."""
    by_role: dict[str, list[Rollout]] = {}
    for j in jobs:
        if j.kind == "role" and j.split == "fit":
            by_role.setdefault(j.role, []).append(j)
    chosen, info = {}, {}
    for role, js in by_role.items():
        s3 = [j for j in js if scores.get(j.id) == 3]
        s2 = [j for j in js if scores.get(j.id, 0) >= 2]
        if len(s3) >= min_score3:
            use, how = s3, "score3"
        elif s2:
            use, how = s2, "score>=2 (fallback)"
            log.warning("role %s: only %d score-3 answers; using %d answers scored >= 2", role, len(s3), len(s2))
        else:
            info[role] = {"n_answers": len(js), "n_score3": 0, "used": 0, "rule": "excluded"}
            log.warning("role %s: no answer scored >= 2; left out of the axis", role)
            continue
        chosen[role] = use
        info[role] = {"n_answers": len(js), "n_score3": len(s3), "used": len(use), "rule": how}
    return chosen, info


def role_vectors(jobs: list[Rollout], means: dict[str, torch.Tensor], scores: dict[str, int],
                 min_score3: int = MIN_SCORE3) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """Mean of each role's in-role fit answers (:func:`in_role_answers`)."""
    chosen, info = in_role_answers([j for j in jobs if j.id in means], scores, min_score3)
    return _means_of(chosen, means), info


def _means_of(chosen: dict[str, list[Rollout]], means: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {role: torch.stack([means[j.id] for j in use]).mean(0) for role, use in chosen.items()}


ERASE_CHOICES = (0, 1, 2, 4)


def _least_register(base: torch.Tensor, by_register: dict[str, torch.Tensor], default: list[torch.Tensor],
                    role3: list[torch.Tensor], window: range) -> tuple[torch.Tensor, dict]:
    """The register-balanced axis with ``k`` register directions erased (:func:`calibrate.contrast.erase_registers`),
    ``k`` in :data:`ERASE_CHOICES` chosen on fit answers only: the best default-vs-in-role AUROC over the
    monitor-layer window, where the default side holds every fit register (a register that loads on the axis
    puts its default answers among the in-role ones). Ties go to the smaller ``k``."""
    D, R3 = torch.stack(default), torch.stack(role3) if role3 else None
    table, best = {}, None
    for k in ERASE_CHOICES:
        cand = erase_registers(base, by_register, k) if k else base
        if R3 is None:
            score = 0.0
        else:
            score = max(auroc(project(D[:, L], unit(cand[L])), project(R3[:, L], unit(cand[L]))) for L in window)
        table[str(k)] = round(score, 4)
        if best is None or round(score, 3) > round(best[0], 3):
            best = (score, k, cand)
    assert best is not None
    return best[2], {"chosen_k": best[1], "best_fit_auroc_by_k": table, "choices": list(ERASE_CHOICES)}


def _by_register(jobs: list[Rollout], means: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, list[torch.Tensor]] = {}
    for j in jobs:
        out.setdefault(j.register, []).append(means[j.id])
    return {k: torch.stack(v) for k, v in out.items()}


def fit_axis(jobs: list[Rollout], means: dict[str, torch.Tensor], norms: dict[str, torch.Tensor],
             scores: dict[str, int], model_id: str, provenance: dict,
             categories: dict[str, str] | None = None) -> tuple[AxisArtifact, dict]:
    chosen, role_info = in_role_answers([j for j in jobs if j.id in means], scores)
    vectors = _means_of(chosen, means)
    if len(vectors) < 2:
        raise InputError(f"only {len(vectors)} role vectors could be formed; the axis needs at least 2 "
                         "(too few answers judged in role: try a larger preset)")
    fit_default = [j for j in jobs if j.kind == "default" and j.split == "fit" and j.id in means]
    if not fit_default:
        raise InputError("no default answers were generated")
    default = torch.stack([means[j.id] for j in fit_default]).mean(0)  # [L, d]
    names = sorted(vectors)
    R = torch.stack([vectors[n] for n in names])  # [r, L, d]
    used = [j for use in chosen.values() for j in use]
    n_layers = default.shape[0]
    lo, hi = n_layers // 3, n_layers - 3
    erasure: dict[str, Any] = {}
    if len({j.register for j in fit_default}) > 1:  # register prompts: the contrast within each kind of prompt
        by_register, role_by = _by_register(fit_default, means), _by_register(used, means)
        base = balanced_contrast(by_register, role_by)
        role3 = [j.id for j in used if scores.get(j.id) == 3]
        axis, erasure = _least_register(base, by_register, [means[j.id] for j in fit_default],
                                        [means[i] for i in role3], range(lo, hi + 1))
        erasure["contrast_kinds"] = sorted(k for k in by_register if k in role_by)  # the kinds both sides answered
        axis_rule = ("register-balanced: mean over kinds of prompt of (default mean - in-role mean), without the "
                     f"top {erasure['chosen_k']} directions of the default answers' register means")
    else:
        axis = default - R.mean(0)  # [L, d], toward the Assistant
        axis_rule = "mean(default answers) - mean(role vectors)"

    def proj(ids: list[str], layer: int) -> torch.Tensor:
        if not ids:
            return torch.zeros(0)
        return project(torch.stack([means[i][layer] for i in ids]), unit(axis[layer]))

    groups = {
        "default_fit": [j.id for j in fit_default],
        "role_fit": [j.id for j in jobs if j.kind == "role" and j.split == "fit" and j.id in means],
        "role3_fit": [j.id for j in jobs if j.kind == "role" and j.split == "fit" and scores.get(j.id) == 3],
        "default_heldout": [j.id for j in jobs if j.kind == "default" and j.split == "heldout" and j.id in means],
        "role3_heldout": [j.id for j in jobs if j.kind == "role" and j.split == "heldout" and scores.get(j.id) == 3],
    }
    layers: dict[str, dict[str, Any]] = {}
    pcs: dict[int, torch.Tensor] = {}
    for L in range(n_layers):
        comps, var = pca(R[:, L], k=min(10, len(names)))
        pcs[L] = comps[0]
        p = {g: proj(ids, L) for g, ids in groups.items()}
        layers[str(L)] = {
            "default": percentiles(p["default_fit"], PCTS),
            "roles": percentiles(p["role_fit"], PCTS),
            "roles_score3": percentiles(p["role3_fit"], PCTS),
            "calibration_all": percentiles(torch.cat([p["default_fit"], p["role_fit"]]), PCTS),
            "default_mean": float(p["default_fit"].mean()),
            "roles_mean": float(p["role_fit"].mean()) if p["role_fit"].numel() else None,
            "mean_norm": float(torch.stack([norms[i][L] for i in groups["default_fit"] + groups["role_fit"]]).mean()),
            "abs_cos_pc1_axis": abs_cos(pcs[L], axis[L]),
            "abs_cos_pcs_axis": [round(abs_cos(c, axis[L]), 4) for c in comps[:3]],
            "variance_explained": [round(float(v), 5) for v in var],
            "auroc_fit": auroc(p["default_fit"], p["role3_fit"]),
            "auroc_heldout": auroc(p["default_heldout"], p["role3_heldout"]),
        }
    # monitor layer: chosen on fit data only (held-out AUROC stays an honest check)
    # monitoring needs separation: the layer whose projection best separates default from in-role
    # answers on the fit questions; |cos(PC1, axis)| breaks ties
    monitor = max(range(lo, hi + 1), key=lambda L: (round(layers[str(L)]["auroc_fit"], 3), layers[str(L)]["abs_cos_pc1_axis"]))
    order = project(R[:, monitor], unit(axis[monitor]))
    roles_along = sorted(zip(names, order.tolist()), key=lambda t: t[1])
    art = AxisArtifact(axis=axis, model_id=model_id, monitor_layer=monitor,
                       calibration={"layers": layers, "percentiles": list(PCTS),
                                    "convention": "per-response mean over the content tokens' own positions"},
                       provenance=provenance, default_vector=default, role_vectors=vectors)
    report = {
        "model_id": model_id, "monitor_layer": monitor,
        "monitor_layer_rule": f"argmax fit AUROC (default vs score-3 role answers), then |cos(PC1, axis)|, over layers {lo}..{hi}",
        "n_roles_used": len(names), "roles": role_info,
        "counts": {g: len(ids) for g, ids in groups.items()},
        "judge_distribution": {str(s): sum(1 for j in jobs if j.kind == "role" and scores.get(j.id) == s) for s in range(4)},
        "at_monitor_layer": {k: layers[str(monitor)][k] for k in ("abs_cos_pc1_axis", "abs_cos_pcs_axis", "auroc_fit",
                                                                   "auroc_heldout", "variance_explained")},
        "per_layer": {**{k: [layers[str(L)][k] for L in range(n_layers)] for k in ("abs_cos_pc1_axis", "auroc_fit", "auroc_heldout")},
                      "abs_cos_pc2_axis": [(layers[str(L)]["abs_cos_pcs_axis"] + [None, None])[1] for L in range(n_layers)]},
        "roles_along_axis": [{"role": n, "projection": round(v, 4)} for n, v in roles_along],
        "default_projection": float(project(default[monitor], unit(axis[monitor]))),
        "auroc_heldout_by_category": {
            c: auroc(proj(groups["default_heldout"], monitor),
                     proj([i for i in groups["role3_heldout"] if (categories or {}).get(i.split(":")[1]) == c], monitor))
            for c in sorted(set((categories or {}).values()))},
        "axis_rule": axis_rule, "register_erasure": erasure,
        "registers": register_report(jobs, scores, {j.id: means[j.id][monitor] for j in jobs if j.id in means},
                                     unit(axis[monitor])),
        "provenance": provenance,
    }
    return art, report


CREATIVE, TECHNICAL = ("poem", "story"), ("code",)


def register_report(jobs: list[Rollout], scores: dict[str, int], acts: dict[str, torch.Tensor],
                    v: torch.Tensor) -> dict:
    """How much the register of a reply loads on a direction ``v`` (one layer's activations ``acts``):
    per register the default and in-role answers' mean projections, the spread of default answers between
    creative (poem, story) and technical (code) registers in units of the axis' own gap (default minus
    in-role mean on the fit answers), and the default-vs-in-role AUROC on neutral held-out questions and on
    the held-out registers (registers never used to fit)."""
    def proj(sel) -> torch.Tensor:
        ids = [j.id for j in jobs if j.id in acts and sel(j)]
        return project(torch.stack([acts[i] for i in ids]), v) if ids else torch.zeros(0)

    def in_role(j: Rollout) -> bool:
        return j.kind == "role" and scores.get(j.id) == 3

    regs = sorted({j.register for j in jobs})
    if regs == ["question"]:
        return {}
    gap = float(proj(lambda j: j.kind == "default" and j.split == "fit").mean()
                - proj(lambda j: in_role(j) and j.split == "fit").mean())
    per: dict[str, dict] = {}
    for r in regs:
        d = proj(lambda j, r=r: j.kind == "default" and j.register == r)
        ro = proj(lambda j, r=r: in_role(j) and j.register == r)
        split = next(j.split for j in jobs if j.register == r) if r != "question" else "both"
        per[r] = {"split": split, "default_mean": float(d.mean()) if d.numel() else None, "n_default": d.numel(),
                  "in_role_mean": float(ro.mean()) if ro.numel() else None, "n_in_role": ro.numel()}

    def mean_of(names) -> float | None:
        xs = [per[r]["default_mean"] for r in names if r in per and per[r]["default_mean"] is not None]
        return sum(xs) / len(xs) if xs else None

    creative, technical = mean_of(CREATIVE), mean_of(TECHNICAL)
    spread = (creative - technical) / gap if creative is not None and technical is not None and gap else None
    held = [r for r in regs if per[r]["split"] == "heldout"]
    return {
        "per_register": per, "gap": gap,
        "creative_minus_code_in_gaps": spread,
        "default_sd_across_registers_in_gaps": (float(torch.tensor([p["default_mean"] for p in per.values()
                                                                    if p["default_mean"] is not None]).std()) / gap
                                                if gap else None),
        "auroc_neutral_heldout_questions": auroc(
            proj(lambda j: j.kind == "default" and j.split == "heldout" and j.register == "question"),
            proj(lambda j: in_role(j) and j.split == "heldout" and j.register == "question")),
        "auroc_heldout_registers": auroc(proj(lambda j: j.kind == "default" and j.register in held),
                                         proj(lambda j: in_role(j) and j.register in held)),
    }


def finite(x):
    """JSON-safe copy: NaN/inf become None."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [finite(v) for v in x]
    return x


# --- the whole pipeline -------------------------------------------------------------------

def compute_axis(lm: LoadedModel, work: Path, out: Path, preset: Preset, judge: Judge,
                 batch_size: int = 48, roles=None, questions=None) -> tuple[AxisArtifact, dict]:
    """Run (or resume) every step and write the axis artifact and its report to ``out``."""
    from calibrate.report import plot_axis_report

    t0 = time.perf_counter()
    jobs, batch_size = write_plan(work, lm, preset, roles, questions, batch_size)
    run_generation(work, lm, jobs, preset, batch_size)
    texts, means, norms = load_generations(work)
    missing = [j.id for j in jobs if j.id not in texts]
    if missing:
        raise InputError(f"{len(missing)} planned responses are missing from {work / 'gen'}; rerun to finish")
    scores = run_judge(work, jobs, texts, judge)
    provenance = {"preset": preset.name, "preset_config": asdict(preset), "judge": judge.name,
                  "n_jobs": len(jobs), "model_source": lm.source, "work": str(work)}
    categories = {r["name"]: r.get("category", "") for r in (roles if roles is not None else load_roles())}
    art, report = fit_axis(jobs, means, norms, scores, lm.model_id, provenance, categories)
    art.save(out)
    report["wall_seconds_this_run"] = round(time.perf_counter() - t0, 1)
    report["generation_seconds_total"] = round(sum(json.loads(p.read_text())["seconds"] for p in (work / "gen").glob("*.json")), 1)
    report["batch_size"] = batch_size
    report["mean_response_tokens"] = round(sum(t["n_tokens"] for t in texts.values()) / len(texts), 1)
    if judge.name.startswith("offline"):
        report["judge_agreement"] = agreement(judge)
    (out / "report.json").write_text(json.dumps(finite(report), indent=1))
    plot_axis_report(report, art.calibration["layers"], out)
    return art, report
