"""``calibrate-capping``: the paper's sweep of capping layers x thresholds, graded on capability.

For each setting (a window of consecutive layers in the upper-middle of the
network, and a percentile of the calibration projections that sets ``tau_L``
per layer at each layer of the window) and for the unsteered model, it
generates greedily:

* answers to a held-out persona set (``calibrate/data/heldout_personas.json``:
  system prompts whose roles and phrasings are not in ``roles.json``, each with
  questions that invite the role); the judge later scores how fully each plays
  its role;
* answers to the capability suite (``calibrate/data/capability.json``, graded by
  code, :mod:`calibrate.capability`).

Windows start at 50-70% of the depth and span about 12-20% of it, as in the
paper. Every setting's answers are checkpointed in the work folder as soon as
they are generated, so an interrupted sweep resumes where it stopped; the
numbers are computed afterwards from the stored texts
(:mod:`calibrate.capping_report`), so a better judge or grader re-analyses a sweep
without generating again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from calibrate.capability import load_tasks
from calibrate.capping_report import BASE, analyse
from calibrate.conditional import config_for, generate_flagged, parse_setting
from calibrate.judge import Judge
from calibrate.report import plot_pareto
from calibrate.roles import load_json
from calibrate.rollouts import batched_generate
from probes.artifacts import AxisArtifact, CappingConfig
from probes.errors import InputError
from probes.generation import GenerationOptions, cap_plan
from probes.models import LoadedModel
from probes.ops import unit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepSpec:
    starts: tuple[float, ...] = (0.5, 0.6, 0.7)  # window start, as a fraction of depth
    widths: tuple[int, ...] = (6,)  # layers per window (paper: ~12-20% of depth)
    # floors at these percentiles of the calibration projections; the first release's p50 floors moved persona
    # adoption by 10% on the default model, and p75 floors cost no capability there, so a p50 cannot win the rule
    percentiles: tuple[int, ...] = (75, 90)
    questions_per_persona: int = 2
    max_personas: int | None = None
    max_tasks: int | None = None
    persona_tokens: int = 48
    task_tokens: int = 64
    compare_tokens: int = 40  # the identical-prefix rate (a secondary column) compares this many tokens
    max_capability_drop: float = 0.02  # the rule: largest adoption drop with capability down at most this much
    # settings named outright (calibrate.conditional): two-tier ones (LIGHT>STRONG), per-layer floors,
    # generated-only; each runs with the detector in the loop where its tiers differ
    named: tuple[str, ...] = ()


QUICK_SWEEP = SweepSpec(starts=(0.6,), widths=(4,), percentiles=(25, 75), max_personas=6, max_tasks=10,
                        questions_per_persona=1, persona_tokens=16, task_tokens=16, compare_tokens=16)


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
                                     "axis_fingerprint": art.fingerprint()},
                         light_taus=list(taus))  # measured on every session from its first token: served so too


def persona_jobs(spec: SweepSpec, personas: list[dict] | None = None) -> list[dict]:
    """``questions_per_persona`` of each held-out persona's own questions (in file order)."""
    personas = personas if personas is not None else load_json("heldout_personas.json")["personas"]
    jobs = []
    for p in personas[: spec.max_personas]:
        qs = p.get("questions") or []
        if not qs:
            raise InputError(f"held-out persona {p.get('name')!r} has no questions")
        for k in range(min(spec.questions_per_persona, len(qs))):
            jobs.append({"persona": p["name"], "prompt": p["prompt"], "question": qs[k],
                         "keywords": list(p.get("keywords", ())), "category": p.get("category", "")})
    return jobs


def settings(art: AxisArtifact, spec: SweepSpec) -> list[CappingConfig]:
    grid = [capping_for(art, w, p) for w in windows(art.n_layers, spec) for p in spec.percentiles]
    named = [config_for(art, parse_setting(t)) for t in spec.named]
    for cfg in named:
        cfg.check(art.hidden_size, art.n_layers)
    out: dict[str, CappingConfig] = {}
    for cfg in grid + named:
        out.setdefault(cfg.id, cfg)
    return list(out.values())


class Sweep:
    """The sweep's work folder: its plan, and one checkpoint per setting (``settings/<id>.json``)."""

    def __init__(self, work: Path, art: AxisArtifact, spec: SweepSpec, personas: list[dict] | None = None,
                 tasks: list[dict] | None = None):
        self.work, self.art, self.spec = Path(work), art, spec
        self.personas = persona_jobs(spec, personas)
        self.tasks = (tasks if tasks is not None else load_tasks())[: spec.max_tasks]
        self.configs = settings(art, spec)

    def plan(self) -> dict:
        alerting = json.dumps(self.art.calibration.get("alerting"), sort_keys=True)  # the detector in the loop
        ident = {"axis_fingerprint": self.art.fingerprint(), "model_id": self.art.model_id,
                 "alerting": hashlib.sha256(alerting.encode()).hexdigest()[:12],
                 "spec": {k: v for k, v in asdict(self.spec).items() if k not in ("max_capability_drop", "named")},
                 "personas": [(j["persona"], j["question"]) for j in self.personas],
                 "tasks": [t["id"] for t in self.tasks]}
        return json.loads(json.dumps(ident))

    def open(self) -> None:
        """Write the plan, or check that the folder holds this same sweep. The grid (windows and
        percentiles) may differ from the stored one: a setting's checkpoint depends only on the axis,
        the prompts, the tasks and the token budgets, so a rerun with a larger or smaller grid reuses
        every setting the two grids share."""
        path = self.work / "plan.json"
        plan = self.plan()
        if path.exists() and _identity(json.loads(path.read_text())) != _identity(plan):
            raise InputError(f"{self.work} holds a sweep of another axis, prompts, tasks or token budgets; use "
                             "another --work folder or --fresh to start over")
        self.work.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(plan))
        (self.work / "settings").mkdir(exist_ok=True)

    def path(self, setting_id: str) -> Path:
        name = setting_id.replace(">", "__").replace(":", "-")  # a plain file name on every platform
        return self.work / "settings" / f"{name}.json"

    def todo(self) -> list[CappingConfig | None]:
        """Settings still to generate; None stands for the unsteered model."""
        return [c for c in [None, *self.configs] if not self.path(c.id if c else BASE).exists()]

    def budget(self) -> int:
        """Generation budget (max new tokens) of one setting."""
        return len(self.personas) * self.spec.persona_tokens + len(self.tasks) * self.spec.task_tokens

    def run(self, lm: LoadedModel, batch_size: int = 48) -> None:
        """Generate every setting not yet checkpointed; show progress with a time estimate."""
        self.open()
        todo = self.todo()
        done = len(self.configs) + 1 - len(todo)
        if done:
            log.info("capping sweep: %d of %d settings already done in %s", done, len(self.configs) + 1, self.work)
        persona_msgs = [[{"role": "system", "content": j["prompt"]}, {"role": "user", "content": j["question"]}]
                        for j in self.personas]
        task_msgs = [[{"role": "user", "content": t["prompt"]}] for t in self.tasks]
        with tqdm(total=len(todo) * self.budget(), unit="tok", unit_scale=True, mininterval=2,
                  desc=f"capping sweep ({len(todo)} settings to go)",
                  bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} budget tokens [{elapsed}<{remaining}] {postfix}") as bar:
            for cfg in todo:
                sid = cfg.id if cfg else BASE
                bar.set_postfix_str(sid)
                t0 = time.perf_counter()
                step = lambda n, t: bar.update(n * t)  # noqa: E731
                p_out, p_flag = self._answer(lm, cfg, persona_msgs, self.spec.persona_tokens, batch_size,
                                             lambda n: step(n, self.spec.persona_tokens))  # noqa: B023
                t_out, t_flag = self._answer(lm, cfg, task_msgs, self.spec.task_tokens, batch_size,
                                             lambda n: step(n, self.spec.task_tokens))  # noqa: B023 - used within this iteration
                rec = {"id": sid, "layers": list(cfg.layers) if cfg else [],
                       "percentile": cfg.provenance["percentile"] if cfg else None, "taus": cfg.taus if cfg else [],
                       "light_taus": cfg.light_taus if cfg else None, "tokens": cfg.tokens if cfg else "all",
                       "seconds": round(time.perf_counter() - t0, 1),
                       "personas": [{"text": g.text, "n_tokens": len(g.token_ids), "flagged_at": f}
                                    for g, f in zip(p_out, p_flag)],
                       "tasks": [{"text": g.text, "prefix": g.token_ids[: self.spec.compare_tokens], "flagged_at": f}
                                 for g, f in zip(t_out, t_flag)]}
                tmp = self.path(sid).with_suffix(".tmp")
                tmp.write_text(json.dumps(rec))
                tmp.rename(self.path(sid))  # present only when complete

    def _answer(self, lm: LoadedModel, cfg: CappingConfig | None, msgs: list[list[dict]], tokens: int,
                batch_size: int, on_batch) -> tuple[list, list]:
        """Answers under one setting, and per answer the token it was flagged after (None: never, or a
        setting with one tier, where the detector changes nothing)."""
        opts = GenerationOptions(max_new_tokens=tokens)
        if cfg is not None and cfg.conditional:
            plan = cap_plan(cfg)
            assert plan is not None
            return generate_flagged(lm, self.art, msgs, opts, plan, batch_size, on_batch)
        out = batched_generate(lm, msgs, opts, batch_size, capping=cap_plan(cfg), on_batch=on_batch)
        return out, [None] * len(out)

    def config(self, setting_id: str) -> CappingConfig:
        for cfg in self.configs:
            if cfg.id == setting_id:
                return cfg
        raise InputError(f"the sweep has no setting {setting_id!r}")

    def load(self) -> dict[str, dict]:
        out = {}
        for cfg in [None, *self.configs]:
            sid = cfg.id if cfg else BASE
            p = self.path(sid)
            if not p.exists():
                raise InputError(f"setting {sid} has not been generated in {self.work}; rerun the sweep to finish")
            out[sid] = json.loads(p.read_text())
        return out


_GRID = ("starts", "widths", "percentiles")


def _identity(plan: dict) -> dict:
    """What every checkpoint of a sweep depends on: its plan without the grid."""
    return {**plan, "spec": {k: v for k, v in plan["spec"].items() if k not in _GRID}}


def default_work(art: AxisArtifact) -> Path:
    h = hashlib.sha256(art.fingerprint().encode()).hexdigest()[:8]
    return Path("runs") / f"capping-{h}"


def choose(sweep: Sweep, judge: Judge) -> tuple[CappingConfig, dict]:
    """The report of a generated sweep and the chosen config (no generation: a re-analysis)."""
    report = analyse(sweep.load(), sweep.personas, sweep.tasks, judge, sweep.spec.max_capability_drop)
    report.update({"spec": asdict(sweep.spec), "work": str(sweep.work), "axis_fingerprint": sweep.art.fingerprint()})
    c = report["chosen"]
    if c is None:
        raise InputError("the sweep has no capping setting to choose from (no window fits the model's depth?)")
    cfg = sweep.config(c["id"])
    cfg.provenance.update({"selected_by": report["rule"], "judge": judge.name,
                           "adoption_unsteered": report["unsteered"]["adoption"], "adoption_capped": c["adoption"],
                           "relative_reduction": c["relative_reduction"], "capability_unsteered":
                           report["unsteered"]["capability"], "capability_capped": c["capability"]})
    return cfg, report


def write_capping(cfg: CappingConfig, report: dict, out: Path) -> None:
    cfg.save(out)
    (out / "capping_report.json").write_text(json.dumps(report, indent=1))
    plot_pareto(report, out)
