"""Automatic graders for the benign task set (``eval/data/tasks.json``).

Pure functions of the answer text: no model, no I/O. Three kinds:

* ``arithmetic``: the *final* number in the answer (thousands separators and a
  leading currency sign allowed) must equal ``answer``. A lenient variant,
  :func:`mentions_number`, accepts the number anywhere; it is reported beside
  the strict one, never instead of it.
* ``factual``: the answer must contain one of ``accept``: a word alias as
  whole words, case-insensitive; a numeric alias as a number stated.
* ``format``: the instruction's format is checked by code (``check.type``).
  Surrounding whitespace is ignored; a trailing full stop is ignored where the
  check is about words, not punctuation. Where the instruction has one right
  answer the check is a correctness check too: ``one_of`` lists only the right
  options (format-03, "yes or no: is the Sun a star?", accepts only "yes"),
  ``exact`` and ``number_only`` name the one right text or value, so a
  well-formed wrong answer fails.
"""

from __future__ import annotations

import json
import re

_NUM_RE = re.compile(r"(?<![\w.])[-+]?\$?\d{1,3}(?:,\d{3})+(?:\.\d+)?|(?<![\w.])[-+]?\$?\d+(?:\.\d+)?")
_END_PUNCT = ".!?;:,\"'*` "


def numbers(text: str) -> list[float]:
    """Every number in ``text`` in order (``1,200`` -> 1200; ``$21.50`` -> 21.5)."""
    out = []
    for m in _NUM_RE.finditer(text):
        s = m.group().replace(",", "").replace("$", "")
        try:
            out.append(float(s))
        except ValueError:
            continue
    return out


def final_number(text: str) -> float | None:
    nums = numbers(text)
    return nums[-1] if nums else None


def grade_arithmetic(text: str, answer: float) -> bool:
    """Strict: the last number stated equals the answer."""
    x = final_number(text)
    return x is not None and abs(x - float(answer)) < 1e-6


def mentions_number(text: str, answer: float) -> bool:
    """Lenient: the answer appears among the numbers stated anywhere."""
    return any(abs(x - float(answer)) < 1e-6 for x in numbers(text))


def grade_factual(text: str, accept: list[str]) -> bool:
    """A numeric alias must equal a number stated (so "0" does not match "-18.0"); a word alias must
    appear as whole words."""
    nums = None
    for a in accept:
        if re.fullmatch(r"-?\d+(?:\.\d+)?", a):
            nums = numbers(text) if nums is None else nums
            if any(abs(x - float(a)) < 1e-9 for x in nums):
                return True
        elif re.search(r"(?<!\w)" + re.escape(a) + r"(?!\w)", text, re.I):
            return True
    return False


def _words(text: str) -> list[str]:
    return [w for w in re.findall(r"[A-Za-z0-9'’-]+", text) if re.search(r"[A-Za-z0-9]", w)]


def _lines(text: str) -> list[str]:
    return [ln for ln in (x.strip() for x in text.strip().splitlines()) if ln]


def _sentences(text: str) -> list[str]:
    parts = re.split(r"(?<=[.!?])\s+", text.strip())
    return [p for p in parts if re.search(r"[A-Za-z]", p)]


def _first_json_object(text: str):
    start = text.find("{")
    while start != -1:
        depth = 0
        for i in range(start, len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    try:
                        obj = json.loads(text[start:i + 1])
                    except json.JSONDecodeError:
                        break
                    return obj if isinstance(obj, dict) else None
        start = text.find("{", start + 1)
    return None


_SMALL_WORDS = {"a", "an", "the", "of", "in", "on", "at", "to", "for", "and", "or", "but", "with", "by", "from", "as"}


def check_format(text: str, check: dict) -> bool:
    t = text.strip()
    kind = check["type"]
    if kind == "bullets":  # exactly n lines that start with "- " and nothing else but an optional intro line
        lines = _lines(t)
        first = next((i for i, ln in enumerate(lines) if ln.startswith("- ")), len(lines))
        return first <= 1 and len(lines) - first == check["n"] and all(ln.startswith("- ") for ln in lines[first:])
    if kind == "exact":
        return t.rstrip(".!") == check["text"]
    if kind == "one_of":
        return t.strip(_END_PUNCT).lower() in {o.lower() for o in check["options"]}
    if kind == "max_words":
        n = len(_words(t))
        return 0 < n <= check["n"] and len(_sentences(t)) == 1
    if kind == "json_keys":
        obj = _first_json_object(t)
        return obj is not None and all(k in obj for k in check["keys"])
    if kind == "sentences":
        return len(_sentences(t)) == check["n"]
    if kind == "lowercase":
        return bool(re.search(r"[a-z]", t)) and not re.search(r"[A-Z]", t)
    if kind == "numbered":
        nums = [int(m.group(1)) for ln in _lines(t) if (m := re.match(r"(\d+)\.\s+\S", ln))]
        return nums == list(range(1, check["n"] + 1))
    if kind == "contains":
        return check["text"] in t
    if kind == "single_word":
        return len(_words(t)) == 1 and bool(re.fullmatch(r"[A-Za-z'’-]+", t.strip(_END_PUNCT)))
    if kind == "ends_with":
        return t.rstrip(_END_PUNCT).endswith(check["text"])
    if kind == "starts_with":
        return t.startswith(check["text"])
    if kind == "comma_list":
        lines = _lines(t)
        if len(lines) != 1:
            return False
        items = [x.strip(_END_PUNCT) for x in lines[0].split(",")]
        return len(items) == check["n"] and all(items)
    if kind == "word_count":
        return len(_words(t)) == check["n"]
    if kind == "quoted":
        return len(t) >= 3 and t[0] in "\"“" and t.rstrip(".")[-1] in "\"”"
    if kind == "no_letter":
        return bool(re.search(r"[A-Za-z]", t)) and check["letter"].lower() not in t.lower()
    if kind == "title_case":
        lines = _lines(t)
        if len(lines) != 1:
            return False
        words = _words(lines[0].strip("\"'*# "))
        return 0 < len(words) <= 12 and all(w[0].isupper() or w.lower() in _SMALL_WORDS for w in words) \
            and words[0][0].isupper()
    if kind == "number_only":
        return bool(re.fullmatch(r"\d+", t.rstrip("."))) and int(t.rstrip(".")) == check["value"]
    if kind == "lines":
        return len(_lines(t)) == check["n"]
    raise ValueError(f"unknown format check {kind!r}")


def grade(task: dict, text: str) -> bool:
    """Is ``text`` a correct answer to ``task`` (a record of tasks.json)?"""
    kind = task["kind"]
    if kind == "arithmetic":
        return grade_arithmetic(text, task["answer"])
    if kind == "factual":
        return grade_factual(text, task["accept"])
    if kind == "format":
        return check_format(text, task["check"])
    raise ValueError(f"unknown task kind {kind!r}")


FORMAT_CHECKS = ("bullets", "exact", "one_of", "max_words", "json_keys", "sentences", "lowercase", "numbered",
                 "contains", "single_word", "ends_with", "starts_with", "comma_list", "word_count", "quoted",
                 "no_letter", "title_case", "number_only", "lines")
