"""The role set, the questions, and the generation plan of ``compute-axis``.

The data files live in ``calibrate/data``. A *preset* says how much of them a
run uses; jobs are planned deterministically so a rerun (or a resume after a
crash) produces the same job ids in the same order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from probes.errors import InputError

DEFAULT_PROMPTS = (
    None,  # no system prompt (the model's template may still add its own default)
    "You are an AI assistant.",
    "You are a large language model.",
    "You are {model_name}.",
    "Respond as yourself.",
)


@dataclass(frozen=True)
class Preset:
    name: str
    roles: int | None  # None = all roles
    prompts_per_role: int
    questions_per_prompt: int
    default_questions: int | None  # None = all extraction questions
    heldout_questions_per_role: int
    heldout_default_questions: int
    max_new_tokens: int


PRESETS = {
    "quick": Preset("quick", 40, 2, 3, 16, 2, 8, 40),
    "standard": Preset("standard", None, 5, 3, None, 2, 24, 48),
    "full": Preset("full", None, 5, 10_000, None, 4, 10_000, 64),
}


@dataclass(frozen=True)
class Rollout:
    id: str
    kind: str  # "role" | "default"
    split: str  # "fit" | "heldout"
    role: str  # role name or "default"
    prompt_index: int
    system: str | None
    question: str
    keywords: tuple[str, ...] = ()

    def messages(self) -> list[dict]:
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        return msgs + [{"role": "user", "content": self.question}]


def _data_file(name: str) -> Path:
    return Path(str(resources.files("calibrate") / "data" / name))


def load_json(name_or_path: str | Path) -> dict:
    path = Path(name_or_path)
    if not path.exists():
        path = _data_file(str(name_or_path))
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"cannot read {path}: {e}") from None


def load_roles(path: str | Path | None = None) -> list[dict]:
    roles = load_json(path or "roles.json")["roles"]
    for r in roles:
        if not r.get("name") or not r.get("prompts"):
            raise InputError(f"role entry without name or prompts: {r!r:.80}")
    return roles


def load_questions(path: str | Path | None = None) -> dict[str, list[str]]:
    return load_json(path or "questions.json")


def _spread(items: list, n: int | None) -> list:
    """``n`` items evenly spread over the list (all when n is None or too large)."""
    if n is None or n >= len(items):
        return list(items)
    return [items[int(i * len(items) / n)] for i in range(n)]


def plan_jobs(preset: Preset, model_name: str, roles: list[dict] | None = None,
              questions: dict[str, list[str]] | None = None) -> list[Rollout]:
    roles = roles if roles is not None else load_roles()
    questions = questions if questions is not None else load_questions()
    extraction, heldout = questions["extraction"], questions["heldout"]
    jobs: list[Rollout] = []
    q = 0  # rotating question cursor so roles see different questions
    for r in _spread(roles, preset.roles):
        kw = tuple(r.get("keywords", ()))
        for p in range(min(preset.prompts_per_role, len(r["prompts"]))):
            for j in range(min(preset.questions_per_prompt, len(extraction))):
                question = extraction[(q + j) % len(extraction)]
                jobs.append(Rollout(f"role:{r['name']}:{p}:fit:{extraction.index(question)}", "role", "fit",
                                r["name"], p, r["prompts"][p], question, kw))
            q += preset.questions_per_prompt
        for j in range(min(preset.heldout_questions_per_role, len(heldout))):
            question = heldout[(q + j) % len(heldout)]
            jobs.append(Rollout(f"role:{r['name']}:0:heldout:{heldout.index(question)}", "role", "heldout",
                            r["name"], 0, r["prompts"][0], question, kw))
    for p, system in enumerate(DEFAULT_PROMPTS):
        system = system.format(model_name=model_name) if system else None
        for question in _spread(extraction, preset.default_questions):
            jobs.append(Rollout(f"default:{p}:fit:{extraction.index(question)}", "default", "fit", "default", p, system, question))
        for question in _spread(heldout, preset.heldout_default_questions):
            jobs.append(Rollout(f"default:{p}:heldout:{heldout.index(question)}", "default", "heldout", "default", p, system, question))
    ids = [j.id for j in jobs]
    if len(set(ids)) != len(ids):
        raise InputError("duplicate job ids in the plan (duplicate questions in the data?)")
    return jobs
