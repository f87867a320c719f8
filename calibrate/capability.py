"""The capability suite: short tasks graded by code, to measure what capping costs.

The paper measured the damage of activation capping as capability (IFEval,
MMLU-Pro, GSM8k, EQ-Bench), not as "the same tokens". This suite
(``calibrate/data/capability.json``, written for axiswatch and held out from
everything used to compute the axis) is its small-model analogue, in five
categories, each graded by a pure function of the answer text:

* ``ifeval``: verifiable format instructions, graded by the IFEval checkers of
  the maintained ``if-verifiable`` package (strict: the whole answer must
  follow every instruction of the task);
* ``arithmetic``: the *final* number in the answer (thousands separators and a
  currency sign allowed) equals ``answer``;
* ``factual`` and ``extraction``: one of ``accept`` appears in the answer (a
  word alias as whole words, case-insensitive; a numeric alias as a number
  stated, so "0" does not match "-18.0"); an extraction answer that also names
  one of the task's ``distractors`` (the other candidates in its text) fails,
  so echoing the text back is not an answer;
* ``rewrite``: a ``check`` object (``contains_all``, ``contains_all_ci``,
  ``contains_none_ci``, ``sorted_list``, ``exact_ci``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

from calibrate.roles import load_json
from probes.errors import InputError

CATEGORIES = ("ifeval", "arithmetic", "factual", "extraction", "rewrite")
_NUM_RE = re.compile(r"(?<![\w.])[-+]?\$?\d{1,3}(?:,\d{3})+(?:\.\d+)?|(?<![\w.])[-+]?\$?\d+(?:\.\d+)?")
_STRIP = " \t\r\n\"'“”‘’`*."


def numbers(text: str) -> list[float]:
    """Every number in ``text`` in order (``1,200`` -> 1200; ``$21.50`` -> 21.5)."""
    out = []
    for m in _NUM_RE.finditer(text):
        try:
            out.append(float(m.group().replace(",", "").replace("$", "")))
        except ValueError:
            continue
    return out


def grade_arithmetic(text: str, answer: float) -> bool:
    """Strict: the last number stated equals the answer."""
    nums = numbers(text)
    return bool(nums) and abs(nums[-1] - float(answer)) < 1e-6


def mentions_number(text: str, answer: float) -> bool:
    """Lenient: the answer appears among the numbers stated anywhere (reported beside the strict grade)."""
    return any(abs(x - float(answer)) < 1e-6 for x in numbers(text))


def grade_accept(text: str, accept: Sequence[str]) -> bool:
    """A numeric alias must equal a number stated; a word alias must appear as whole words."""
    nums = None
    for a in accept:
        if re.fullmatch(r"-?\d+(?:\.\d+)?", a):
            nums = numbers(text) if nums is None else nums
            if any(abs(x - float(a)) < 1e-9 for x in nums):
                return True
        elif re.search(r"(?<!\w)" + re.escape(a) + r"(?!\w)", text, re.I):
            return True
    return False


def _check(text: str, check: dict) -> bool:
    kind = check["type"]
    if kind == "contains_all":
        return all(i in text for i in check["items"])
    if kind == "contains_all_ci":
        low = text.lower()
        return all(i.lower() in low for i in check["items"])
    if kind == "contains_none_ci":
        low = text.lower()
        return not any(re.search(r"(?<!\w)" + re.escape(i.lower()) + r"(?!\w)", low) for i in check["items"]) \
            and (check.get("also") is None or _check(text, check["also"]))
    if kind == "sorted_list":
        low, at = text.lower(), -1
        for item in check["items"]:
            m = re.search(r"(?<!\w)" + re.escape(item.lower()) + r"(?!\w)", low[at + 1:])
            if m is None:
                return False
            at += 1 + m.start()
        return True
    if kind == "exact_ci":
        return text.strip(_STRIP).lower() == check["text"].strip(_STRIP).lower()
    raise InputError(f"unknown rewrite check {kind!r}")


@functools.lru_cache(maxsize=1)
def _ifeval_registry() -> dict:
    try:
        import langdetect
        from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT
    except ImportError as e:  # pragma: no cover - declared dependencies
        raise InputError(f"grading IFEval tasks needs the if-verifiable package ({e})") from None
    # the case checkers ask langdetect whether the answer is English; it samples at random unless seeded,
    # and a grade must not change between two runs over the same text
    langdetect.DetectorFactory.seed = 0
    return INSTRUCTION_DICT


def grade_ifeval(text: str, task: dict) -> bool:
    """Strict IFEval grading with if-verifiable's checkers: every instruction followed by the answer as it is."""
    from if_verifiable.common import evaluate_instructions

    results, _ = evaluate_instructions(text, list(task["instruction_id_list"]), [dict(k) for k in task["kwargs"]],
                                       task["prompt"], _ifeval_registry())
    return bool(results) and len(results) == len(task["instruction_id_list"]) and all(r.strict_pass for r in results)


def grade(task: dict, text: str) -> bool:
    """Is ``text`` a correct answer to ``task`` (a record of capability.json)?"""
    cat = task["category"]
    if cat == "ifeval":
        return grade_ifeval(text, task)
    if cat == "arithmetic":
        return grade_arithmetic(text, task["answer"])
    if cat in ("factual", "extraction"):
        return grade_accept(text, task["accept"]) and not grade_accept(text, task.get("distractors") or ())
    if cat == "rewrite":
        return _check(text, task["check"])
    raise InputError(f"task {task.get('id')!r}: unknown category {cat!r}")


def load_tasks(path=None) -> list[dict]:
    """The suite's tasks, checked: unique ids, known categories, the fields each category needs."""
    tasks = load_json(path or "capability.json")["tasks"]
    need = {"ifeval": ("instruction_id_list", "kwargs"), "arithmetic": ("answer",), "factual": ("accept",),
            "extraction": ("accept",), "rewrite": ("check",)}
    seen = set()
    for t in tasks:
        tid = t.get("id")
        if tid in seen:
            raise InputError(f"capability task id {tid!r} appears twice")
        seen.add(tid)
        if t.get("category") not in need or not t.get("prompt"):
            raise InputError(f"capability task {tid!r}: needs a prompt and a category in {CATEGORIES}")
        missing = [k for k in need[t["category"]] if k not in t]
        if missing:
            raise InputError(f"capability task {tid!r} ({t['category']}) lacks {', '.join(missing)}")
        if t["category"] == "ifeval":  # an id the checkers do not know would grade every answer wrong
            unknown = [i for i in t["instruction_id_list"] if i not in _ifeval_registry()]
            if unknown or len(t["kwargs"]) != len(t["instruction_id_list"]):
                raise InputError(f"capability task {tid!r}: " + (f"unknown IFEval instruction ids {unknown}" if unknown
                                 else "needs one kwargs object per instruction id"))
    return tasks
