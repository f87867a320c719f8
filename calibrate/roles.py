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
    # register prompts (calibrate/data/registers.json: poems, stories, code, lists, small talk...), answered by
    # both sides so that the register of a reply cancels in the contrast; 0 = none (the first releases' plan)
    register_prompts_per_prompt: int = 0  # per role prompt, rotating over the fit registers' prompts
    register_default_prompts: int | None = 0  # per default prompt, spread over the fit registers (None = all)
    heldout_register_per_role: int = 0  # held-out registers, with the role's first prompt
    heldout_register_default: int | None = 0  # per default prompt, over the held-out registers (None = all)


PRESETS = {
    "quick": Preset("quick", 40, 2, 3, 16, 2, 8, 40, 2, 32, 1, 12),
    "standard": Preset("standard", None, 5, 3, None, 2, 24, 48, 3, None, 2, None),
    "full": Preset("full", None, 5, 10_000, None, 4, 10_000, 64, 16, None, 4, None),
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
    register: str = "question"  # the register the prompt asks for ("question": the extraction questions)

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


def load_registers(path: str | Path | None = None) -> dict[str, dict]:
    """``{register: {"split": "fit" | "heldout", "prompts": [...]}}`` from ``registers.json``."""
    regs = load_json(path or "registers.json").get("registers")
    if not isinstance(regs, dict) or not regs:
        raise InputError("the register file has no 'registers' object")
    for name, r in regs.items():
        if name == "question" or not isinstance(r, dict) or r.get("split") not in ("fit", "heldout") \
                or not r.get("prompts"):
            raise InputError(f"register {name!r} needs a split ('fit' or 'heldout') and prompts (and may not be "
                             "called 'question')")
    return regs


def register_prompts(registers: dict[str, dict], split: str) -> list[tuple[str, int, str]]:
    """(register, index, prompt) of one split, registers interleaved so that any stretch of the list
    (a role's rotating share) spans registers rather than one."""
    lists = [[(name, k, p) for k, p in enumerate(r["prompts"])] for name, r in sorted(registers.items())
             if r["split"] == split]
    width = max((len(x) for x in lists), default=0)
    return [x[i] for i in range(width) for x in lists if i < len(x)]


def _spread(items: list, n: int | None) -> list:
    """``n`` items evenly spread over the list (all when n is None or too large)."""
    if n is None or n >= len(items):
        return list(items)
    return [items[int(i * len(items) / n)] for i in range(n)]


def plan_jobs(preset: Preset, model_name: str, roles: list[dict] | None = None,
              questions: dict[str, list[str]] | None = None,
              registers: dict[str, dict] | None = None) -> list[Rollout]:
    """Every rollout of a run, in a fixed order. Both sides answer the extraction questions and, when the
    preset asks for them, the register prompts (the fit registers' for the axis, the held-out registers'
    to check that register does not load on it)."""
    roles = roles if roles is not None else load_roles()
    questions = questions if questions is not None else load_questions()
    wants_registers = preset.register_prompts_per_prompt or preset.heldout_register_per_role \
        or preset.register_default_prompts != 0 or preset.heldout_register_default != 0
    if registers is None:
        registers = load_registers() if wants_registers else {}
    reg_fit, reg_held = register_prompts(registers, "fit"), register_prompts(registers, "heldout")
    extraction, heldout = questions["extraction"], questions["heldout"]
    jobs: list[Rollout] = []
    q = rq = rh = 0  # rotating cursors so roles see different questions and register prompts
    for r in _spread(roles, preset.roles):
        kw = tuple(r.get("keywords", ()))
        for p in range(min(preset.prompts_per_role, len(r["prompts"]))):
            for j in range(min(preset.questions_per_prompt, len(extraction))):
                question = extraction[(q + j) % len(extraction)]
                jobs.append(Rollout(f"role:{r['name']}:{p}:fit:{extraction.index(question)}", "role", "fit",
                                r["name"], p, r["prompts"][p], question, kw))
            q += preset.questions_per_prompt
            for j in range(min(preset.register_prompts_per_prompt, len(reg_fit))):
                reg, k, prompt = reg_fit[(rq + j) % len(reg_fit)]
                jobs.append(Rollout(f"role:{r['name']}:{p}:fit:{reg}-{k}", "role", "fit", r["name"], p,
                                    r["prompts"][p], prompt, kw, reg))
            rq += preset.register_prompts_per_prompt
        for j in range(min(preset.heldout_questions_per_role, len(heldout))):
            question = heldout[(q + j) % len(heldout)]
            jobs.append(Rollout(f"role:{r['name']}:0:heldout:{heldout.index(question)}", "role", "heldout",
                            r["name"], 0, r["prompts"][0], question, kw))
        for j in range(min(preset.heldout_register_per_role, len(reg_held))):
            reg, k, prompt = reg_held[(rh + j) % len(reg_held)]
            jobs.append(Rollout(f"role:{r['name']}:0:heldout:{reg}-{k}", "role", "heldout", r["name"], 0,
                                r["prompts"][0], prompt, kw, reg))
        rh += preset.heldout_register_per_role
    for p, system in enumerate(DEFAULT_PROMPTS):
        system = system.format(model_name=model_name) if system else None
        for question in _spread(extraction, preset.default_questions):
            jobs.append(Rollout(f"default:{p}:fit:{extraction.index(question)}", "default", "fit", "default", p, system, question))
        for question in _spread(heldout, preset.heldout_default_questions):
            jobs.append(Rollout(f"default:{p}:heldout:{heldout.index(question)}", "default", "heldout", "default", p, system, question))
        for split, items, n in (("fit", reg_fit, preset.register_default_prompts),
                                ("heldout", reg_held, preset.heldout_register_default)):
            for reg, k, prompt in items if n is None else items[:n]:  # interleaved: the first n span registers
                jobs.append(Rollout(f"default:{p}:{split}:{reg}-{k}", "default", split, "default", p, system,
                                    prompt, (), reg))
    ids = [j.id for j in jobs]
    if len(set(ids)) != len(ids):
        raise InputError("duplicate job ids in the plan (duplicate questions in the data?)")
    return jobs
