"""The offline judge's model: text features of an answer and its role, and gradient-boosted trees over them.

No network and no activations of the model being judged (that would make the
judge circular with the axis): only the answer's text, the role's name,
prompt and keywords. :func:`features` turns a :class:`~calibrate.judge.JudgeItem`
into named numbers (the lexical judge's signals, the role's own words in the
answer, voice and person, assistant-style structure, repetition);
:class:`BoostedModel` scores the four labels 0-3 with trees fitted on the dev
half of the hand labels (``eval/fit_judge.py``, scikit-learn's multinomial
gradient boosting) and stored as plain JSON (``calibrate/data/judge_model.json``):
no pickle, nothing executable.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

FIRST_PERSON_RE = re.compile(r"\b(i|i'm|i've|i'd|i'll|me|my|mine|myself)\b", re.I)
SECOND_PERSON_RE = re.compile(r"\b(you|your|yours|yourself)\b", re.I)
WORD_RE = re.compile(r"[a-z][a-z']*")
STOP = frozenset(
    ["the", "a", "an", "and", "or", "but", "of", "to", "in", "on", "at", "for", "with", "by", "from", "as", "is", "are", "was", "were", "be", "been", "being", "that", "this", "these", "those", "it", "its", "who", "whom", "which", "what", "when", "where", "why", "how", "your", "you", "yours", "their", "there", "they", "them", "he", "she", "his", "her", "our", "we", "us", "not", "no", "never", "always", "every", "all", "any", "some", "have", "has", "had", "do", "does", "did", "can", "could", "would", "should", "will", "shall", "may", "might", "must", "into", "onto", "about", "over", "under", "than", "then", "so", "such", "very", "just", "also", "only", "even", "ever", "own", "same", "other", "more", "most", "much", "speak", "answer", "respond", "stay", "character", "role", "act", "like"])  # noqa: E501 - one list of stop words
MODEL_FILE = "judge_model.json"


def content_words(text: str) -> set[str]:
    return {w for w in WORD_RE.findall(text.lower()) if len(w) > 3 and w not in STOP}


def features(item, lexical: dict) -> dict[str, float]:
    """Named features of one judged answer. ``lexical`` is :meth:`LexicalJudge.features` of the item."""
    text = item.response.strip()
    words = WORD_RE.findall(text.lower())
    n = max(1, len(words))
    role_words = content_words(item.role_prompt) | content_words(item.role.replace("_", " ")) | set(item.keywords)
    sents = [x for x in re.split(r"(?<=[.!?])\s+", text) if x]
    trigrams = [tuple(words[i:i + 3]) for i in range(len(words) - 2)]
    first_person_sents = [x for x in sents if FIRST_PERSON_RE.search(x)]
    return {
        "empty": float(lexical["empty"]),
        "refusal": float(lexical["refusal"]),
        "assistant": float(lexical["assistant"]),
        "claim": float(lexical["claim"]),
        "voice": float(lexical["voice"]),
        "generic": float(lexical["generic"]),
        "keyword_hits": math.log1p(lexical["hits"]),
        "role_overlap": len(role_words & set(words)) / max(1, len(role_words)),
        "first_person": len(FIRST_PERSON_RE.findall(text)) / n,
        "first_person_opening": len(FIRST_PERSON_RE.findall(" ".join(words[:15]))),
        "first_person_sentences": len(first_person_sents) / max(1, len(sents)),
        "in_role_first_person": sum(bool(role_words & set(WORD_RE.findall(x.lower()))) for x in first_person_sents)
        / max(1, len(sents)),
        "second_person": len(SECOND_PERSON_RE.findall(text)) / n,
        "we": len(re.findall(r"\b(we|our|us)\b", text, re.I)) / n,
        "advice": len(re.findall(r"\b(you should|you can|it'?s important|it is important|consider|remember)\b", text, re.I)),
        "as_a": float(bool(re.match(r"\W*as an? \w+", text, re.I))),
        "i_am_a": float(bool(re.search(r"\b(i'm|i am) (a|an|the) \w+", text, re.I))),
        "my_name_is": float(bool(re.search(r"\bmy name is\b|\bcall me\b", text, re.I))),
        "human_life": float(bool(re.search(r"\b(i was born|i grew up|my (wife|husband|mother|father|mom|dad|son|"
                                           r"daughter|family|childhood))\b", text, re.I))),
        "opens_with_article": float(bool(re.match(r"\W*(the|a|an) \w+", text, re.I))),
        "restates_question": float(bool(words) and words[0] in content_words(item.question)),
        "repetition": 1 - len(set(trigrams)) / max(1, len(trigrams)),
        "list": float(bool(re.search(r"^\s*(\d+\.|-|\*)\s", text, re.M))),
        "exclaim": text.count("!") / n,
        "question": text.count("?") / n,
        "action": float(bool(re.search(r"\*[^*\n]{2,40}\*|\([a-z][^)\n]{2,40}\)", text))),
        "log_words": math.log1p(len(words)),
    }


@dataclass(frozen=True)
class Tree:
    """One regression tree of the boosted model, as parallel node arrays (sklearn's layout)."""

    feature: tuple[int, ...]  # -1 at a leaf
    threshold: tuple[float, ...]
    left: tuple[int, ...]
    right: tuple[int, ...]
    value: tuple[float, ...]

    def predict(self, x: list[float]) -> float:
        i = 0
        while self.feature[i] >= 0:
            i = self.left[i] if x[self.feature[i]] <= self.threshold[i] else self.right[i]
        return self.value[i]


@dataclass(frozen=True)
class BoostedModel:
    """Gradient-boosted trees (multinomial): ``logit[c] = init[c] + rate * sum_t trees[t][c](x)``."""

    classes: tuple[int, ...]
    names: tuple[str, ...]  # feature order
    init: tuple[float, ...]
    rate: float
    trees: tuple[tuple[Tree, ...], ...]  # [stage][class]
    meta: dict

    def predict(self, f: dict[str, float]) -> int:
        x = [float(f.get(n, 0.0)) for n in self.names]
        logits = list(self.init)
        for stage in self.trees:
            for c, tree in enumerate(stage):
                logits[c] += self.rate * tree.predict(x)
        return self.classes[max(range(len(logits)), key=logits.__getitem__)]

    def to_json(self) -> dict:
        return {"format_version": 2, "kind": "judge_model", "classes": list(self.classes), "names": list(self.names),
                "init": list(self.init), "rate": self.rate, "meta": self.meta,
                "trees": [[{"feature": list(t.feature), "threshold": list(t.threshold), "left": list(t.left),
                            "right": list(t.right), "value": list(t.value)} for t in stage] for stage in self.trees]}

    @classmethod
    def from_json(cls, doc: dict) -> BoostedModel:
        if doc.get("kind") != "judge_model" or doc.get("format_version") != 2:
            raise ValueError("not a judge_model file of format version 2")
        k, n = len(doc["classes"]), len(doc["names"])
        trees = tuple(tuple(Tree(tuple(int(v) for v in t["feature"]), tuple(float(v) for v in t["threshold"]),
                                 tuple(int(v) for v in t["left"]), tuple(int(v) for v in t["right"]),
                                 tuple(float(v) for v in t["value"])) for t in stage) for stage in doc["trees"])
        if len(doc["init"]) != k or any(len(stage) != k for stage in trees) or \
                any(f >= n for stage in trees for t in stage for f in t.feature):
            raise ValueError("judge_model trees do not match its classes or features")
        return cls(tuple(int(c) for c in doc["classes"]), tuple(doc["names"]), tuple(float(v) for v in doc["init"]),
                   float(doc["rate"]), trees, doc.get("meta", {}))

    @classmethod
    def load(cls, path: str | Path | None = None) -> BoostedModel:
        if path is None:
            path = Path(str(resources.files("calibrate") / "data" / MODEL_FILE))
        return cls.from_json(json.loads(Path(path).read_text()))
