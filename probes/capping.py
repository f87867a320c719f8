"""``calibrate-capping``: the paper's sweep of capping layers x thresholds, and
the steering check.

For each setting (a window of consecutive layers in the upper-middle of the
network, and a percentile of the calibration projections that sets ``tau_L``
per layer) it measures, with greedy decoding:

* persona adoption: the fraction of answers to held-out persona prompts
  (never used to fit the axis) that the judge scores 3 (fully in role);
* benign preservation: the fraction of benign prompts whose first
  ``compare_tokens`` generated tokens are identical to the uncapped output.

Windows start at 50-70% of the depth (the middle to upper-middle of the
network) and span about 12-20% of it, as in the paper.

It writes the Pareto table and picks the setting with the largest relative drop
in adoption among those keeping at least ``min_unchanged`` of benign outputs.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from probes.artifacts import AxisArtifact, CappingConfig
from probes.errors import InputError
from probes.generation import CapPlan, GenerationOptions, generate
from probes.judge import Judge, JudgeItem
from probes.models import LoadedModel
from probes.ops import unit
from probes.roles import load_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepSpec:
    starts: tuple[float, ...] = (0.5, 0.6, 0.7)  # window start, as a fraction of depth
    widths: tuple[int, ...] = (4, 6)  # layers per window (paper: ~12-20% of depth)
    percentiles: tuple[int, ...] = (10, 25, 50, 75)
    questions_per_persona: int = 1
    max_personas: int | None = None
    max_benign: int | None = None
    compare_tokens: int = 40
    min_unchanged: float = 0.8


QUICK_SWEEP = SweepSpec(starts=(0.6,), widths=(4,), percentiles=(25, 75), max_personas=8, max_benign=8,
                        compare_tokens=16)


def windows(n_layers: int, spec: SweepSpec) -> list[tuple[int, ...]]:
    out = []
    for s in spec.starts:
        for w in spec.widths:
            start = min(int(round(s * n_layers)), n_layers - w)
            win = tuple(range(start, start + w))
            if win not in out:
                out.append(win)
    return out


def capping_for(art: AxisArtifact, layers: tuple[int, ...], pct: int) -> CappingConfig:
    stats = art.calibration.get("layers", {})
    key = f"p{pct}"
    try:
        taus = [stats[str(L)]["calibration_all"][key] for L in layers]
    except KeyError:
        raise InputError(f"the axis has no calibration percentile {key} for layers {layers}; recompute it") from None
    return CappingConfig(id=f"L{layers[0]}-{layers[-1]}_p{pct}", layers=list(layers),
                         vectors=torch.stack([unit(art.axis[L]) for L in layers]), taus=taus, model_id=art.model_id,
                         provenance={"percentile": pct, "of": "per-response projections of default and role answers",
                                     "axis_fingerprint": art.fingerprint()})


def _plan(cfg: CappingConfig) -> CapPlan:
    return CapPlan(tuple(cfg.layers), cfg.vectors, torch.tensor(cfg.taus))


def batched_generate(lm, prompts, opts, batch_size, **kw):
    out = []
    for i in range(0, len(prompts), batch_size):
        out += generate(lm, prompts[i:i + batch_size], opts, **kw)
    return out


def calibrate(lm: LoadedModel, art: AxisArtifact, judge: Judge, spec: SweepSpec = SweepSpec(),
              batch_size: int = 48, max_new_tokens: int = 48) -> tuple[CappingConfig, dict]:
    personas = load_json("heldout_personas.json")["personas"][: spec.max_personas]
    questions = load_json("questions.json")
    benign = load_json("benign.json")["prompts"][: spec.max_benign]
    ask = questions["heldout"] + questions["identity"]
    persona_jobs = [(p, ask[(i * spec.questions_per_persona + k) % len(ask)])
                    for i, p in enumerate(personas) for k in range(spec.questions_per_persona)]
    persona_msgs = [[{"role": "system", "content": p["prompt"]}, {"role": "user", "content": q}] for p, q in persona_jobs]
    benign_msgs = [[{"role": "user", "content": b}] for b in benign]
    opts = GenerationOptions(max_new_tokens=max(max_new_tokens, spec.compare_tokens))

    def evaluate(plan: CapPlan | None) -> dict:
        outs = batched_generate(lm, persona_msgs + benign_msgs, opts, batch_size, capping=plan)
        p_out, b_out = outs[: len(persona_msgs)], outs[len(persona_msgs):]
        items = [JudgeItem(p["name"], p["prompt"], q, o.text, tuple(p.get("keywords", ())))
                 for (p, q), o in zip(persona_jobs, p_out)]
        scores = judge.score(items)
        return {"adoption": sum(s == 3 for s in scores) / len(scores), "mean_judge": sum(scores) / len(scores),
                "benign_ids": [o.token_ids[: spec.compare_tokens] for o in b_out],
                "persona_texts": [o.text for o in p_out], "benign_texts": [o.text for o in b_out]}

    wins = windows(lm.n_layers, spec)
    settings = [(w, p) for w in wins for p in spec.percentiles]
    rows = []
    with tqdm(total=len(settings) + 1, desc="capping sweep", unit="setting", disable=False, mininterval=2) as bar:
        base = evaluate(None)
        bar.update(1)
        for win, pct in settings:
            cfg = capping_for(art, win, pct)
            r = evaluate(_plan(cfg))
            unchanged = sum(a == b for a, b in zip(r["benign_ids"], base["benign_ids"])) / max(1, len(benign))
            rel = 1 - r["adoption"] / base["adoption"] if base["adoption"] > 0 else 0.0
            rows.append({"id": cfg.id, "layers": list(win), "percentile": pct, "taus": cfg.taus,
                         "adoption": r["adoption"], "relative_reduction": rel, "benign_unchanged": unchanged,
                         "mean_judge": r["mean_judge"], "examples": r["persona_texts"][:3]})
            bar.update(1)
    ok = [r for r in rows if r["benign_unchanged"] >= spec.min_unchanged]
    pool = ok or rows
    chosen = max(pool, key=lambda r: (r["relative_reduction"], r["benign_unchanged"]))
    win, pct = tuple(chosen["layers"]), chosen["percentile"]
    cfg = capping_for(art, win, pct)
    cfg.provenance.update({"selected_by": f"max relative adoption drop with benign_unchanged >= {spec.min_unchanged}"
                           + ("" if ok else " (no setting met it: best drop overall)"),
                           "adoption_base": base["adoption"], "adoption_capped": chosen["adoption"],
                           "benign_unchanged": chosen["benign_unchanged"], "judge": judge.name})
    report = {"spec": asdict(spec), "n_personas": len(persona_jobs), "n_benign": len(benign),
              "baseline_adoption": base["adoption"], "baseline_mean_judge": base["mean_judge"],
              "rows": rows, "chosen": {k: v for k, v in chosen.items() if k != "examples"},
              "meets_target": bool(chosen["relative_reduction"] >= 0.5 and chosen["benign_unchanged"] >= 0.8)}
    return cfg, report


def write_capping(cfg: CappingConfig, report: dict, out: Path) -> None:
    from probes.report import plot_pareto

    cfg.save(out)
    (out / "capping_report.json").write_text(json.dumps(report, indent=1))
    plot_pareto(report["rows"], report["chosen"], out, spec_tokens=report["spec"]["compare_tokens"])
