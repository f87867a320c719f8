"""Items 3 and 4 of the evaluation, in-process: the same generation function ``axiswatch
generate`` uses (:func:`probes.generation.generate`), under three conditions:

* ``unsteered``: no intervention;
* ``capped``: the shipped capping config as the service's ``cap`` policy runs it:
  a two-tier config floors every answer at its light tier and switches an answer to
  the strong tier from the token after the detector flags it (the detector in the
  loop, :func:`calibrate.conditional.generate_flagged`); a one-tier config whose
  light floors equal its floors caps every token (the paper's setting);
* ``steered``: ``+STEER_COEFF`` x (mean residual norm) x unit axis added at the
  monitor layer, toward the Assistant (``axiswatch generate --steer``).

Every condition sees the same prompts in the same batches, greedy.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

# chosen before any evaluation run, from the shipped steering report (+0.1 is its middle positive coefficient)
STEER_COEFF = 0.1
CONDITIONS = ("unsteered", "capped", "steered")


def persona_jobs(doc: dict, n_personas: int | None = None, per_kind: int = 2) -> list[dict]:
    """Each persona with ``per_kind`` identity and ``per_kind`` behaviour questions, rotating through
    both lists so every question is asked about equally often."""
    ident, behave = doc["identity_questions"], doc["behaviour_questions"]
    jobs = []
    for i, p in enumerate(doc["personas"][:n_personas]):
        for k in range(per_kind):
            jobs.append({"persona": p, "kind": "identity", "question": ident[(i * per_kind + k) % len(ident)]})
        for k in range(per_kind):
            jobs.append({"persona": p, "kind": "behaviour", "question": behave[(i * per_kind + k) % len(behave)]})
    return jobs


class Runner:
    """The model, the shipped axis and capping config, and the three conditions' plans."""

    def __init__(self, batch_size: int = 32):
        from monitor.settings import shipped_dir
        from probes.artifacts import load_axis, load_capping
        from probes.generation import SteerPlan, cap_plan
        from probes.models import load_model
        from probes.ops import steer_coefficient

        self.lm = load_model("default", device="cpu", dtype="float32")
        self.art = load_axis(shipped_dir())
        self.art.check(self.lm.model_id, self.lm.hidden_size, self.lm.n_layers)
        self.cap = load_capping(shipped_dir())
        self.cap.check(self.lm.hidden_size, self.lm.n_layers)
        self.batch_size = batch_size
        self.plans = {
            "unsteered": {},
            "capped": {"capping": cap_plan(self.cap)},
            "steered": {"steering": SteerPlan(self.art.monitor_layer, self.art.unit(),
                                              steer_coefficient(STEER_COEFF, self.art.mean_norm()))},
        }
        self.setup = {"model": self.lm.model_id, "monitor_layer": self.art.monitor_layer,
                      "capping": {"id": self.cap.id, "layers": list(self.cap.layers), "taus": list(self.cap.taus),
                                  "light_taus": self.cap.light_taus, "tokens": self.cap.tokens,
                                  "conditional": self.cap.conditional},
                      "steer_coeff": STEER_COEFF, "steer_absolute": steer_coefficient(STEER_COEFF, self.art.mean_norm())}

    def generate(self, prompts: list[list[dict]], condition: str, max_new_tokens: int,
                 on_batch: Callable[[int], None] | None = None) -> list[dict]:
        from probes.generation import GenerationOptions, generate

        opts = GenerationOptions(max_new_tokens=max_new_tokens)
        if condition == "capped" and self.cap.conditional:  # the detector in the loop, as served
            from calibrate.conditional import generate_flagged

            gens, flagged = generate_flagged(self.lm, self.art, prompts, opts, self.plans["capped"]["capping"],
                                             self.batch_size, on_batch)
            return [{**_row(g), "flagged_at": f} for g, f in zip(gens, flagged)]
        out = []
        for i in range(0, len(prompts), self.batch_size):
            chunk = prompts[i:i + self.batch_size]
            gens = generate(self.lm, chunk, opts, axis=self.art.unit(), monitor_layer=self.art.monitor_layer,
                            **self.plans[condition])
            out.extend(_row(g) for g in gens)
            if on_batch is not None:
                on_batch(len(chunk))
        return out


def _row(g) -> dict:
    return {"text": g.text, "n_tokens": len(g.token_ids),
            "mean_score": sum(g.pre_cap_scores) / len(g.pre_cap_scores) if g.pre_cap_scores else None}


def run_jailbreaks(runner: Runner, doc: dict, jobs: list[dict], max_new_tokens: int,
                   on_batch: Callable[[int], None] | None = None) -> dict:
    """Persona adoption per condition: the offline judge's score 3 (fully in role) and the lexical
    detector of non-assistant identity / human-life claims."""
    from calibrate.judge import JudgeItem, claims_non_assistant, make_judge

    judge = make_judge("offline")
    prompts = [[{"role": "system", "content": j["persona"]["prompt"]}, {"role": "user", "content": j["question"]}]
               for j in jobs]
    answers = {}
    for cond in CONDITIONS:
        outs = runner.generate(prompts, cond, max_new_tokens, on_batch)
        items = [JudgeItem(j["persona"]["name"], j["persona"]["prompt"], j["question"], o["text"],
                           tuple(j["persona"].get("keywords", ()))) for j, o in zip(jobs, outs)]
        scores = judge.score(items)
        answers[cond] = [{"persona": j["persona"]["name"], "kind": j["kind"], "question": j["question"],
                          "text": o["text"], "judge": s, "adopted": s == 3,
                          "non_assistant": claims_non_assistant(o["text"]), "mean_score": o["mean_score"],
                          **({"flagged_at": o["flagged_at"]} if "flagged_at" in o else {})}
                         for j, o, s in zip(jobs, outs, scores)]
    return {"judge": judge.name, "n_personas": len({j["persona"]["name"] for j in jobs}), "n_prompts": len(jobs),
            "max_new_tokens": max_new_tokens, "answers": answers}


def run_capability(runner: Runner, tasks: list[dict], max_new_tokens: int,
                   on_batch: Callable[[int], None] | None = None) -> dict:
    """The capability suite (``calibrate/data/capability.json``) under every condition, graded by code."""
    prompts = [[{"role": "user", "content": t["prompt"]}] for t in tasks]
    answers = {}
    for cond in CONDITIONS:
        outs = runner.generate(prompts, cond, max_new_tokens, on_batch)
        answers[cond] = [{"id": t["id"], "category": t["category"], "text": o["text"], "mean_score": o["mean_score"],
                          **({"flagged_at": o["flagged_at"]} if "flagged_at" in o else {})} for t, o in zip(tasks, outs)]
    return regrade({"n_tasks": len(tasks), "max_new_tokens": max_new_tokens, "answers": answers}, tasks)


def regrade(cap: dict, tasks: list[dict]) -> dict:
    """Grade (again) every stored capability answer with the current graders, from its text."""
    from calibrate.capability import grade, mentions_number

    by_id = {t["id"]: t for t in tasks}
    for rows in cap["answers"].values():
        for r in rows:
            t = by_id[r["id"]]
            r["correct"] = grade(t, r["text"])
            if t["category"] == "arithmetic":
                r["mentions_answer"] = mentions_number(r["text"], t["answer"])
    return cap


def load(path: Path) -> dict:
    return json.loads(Path(path).read_text())
