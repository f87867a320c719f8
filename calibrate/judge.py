"""Role-adherence judges: score 0-3 how fully an answer plays its role.

Rubric (the paper's): 0 = refuses or ignores the role; 1 = speaks as an AI
assistant that can at most help with the role; 2 = mostly the assistant with
some of the role's traits, or the role's voice while calling itself an AI;
3 = fully in role, speaking as the character.

Implementations of :class:`Judge`:

* :class:`EmbeddingJudge` (``offline``, the default, no network): gradient-boosted
  trees over the text features and sentence-embedding features of the answer, its
  role and the labelled dev answers nearest it (:mod:`calibrate.judge_embed`),
  fitted on the dev half of the hand labels; its agreement with the test half is
  measured by :func:`agreement` and reported;
* :class:`OfflineJudge` (``trees``): the same kind of trees over the text features
  alone (the third release's judge);
* :class:`LexicalJudge`: the earlier hand-written rule set, kept for
  comparison (and as the classifier's input signals);
* :class:`OpenAIJudge`: any OpenAI-compatible chat-completions endpoint
  configured from the environment.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Protocol

import httpx

from calibrate.judge_embed import Embedder, Neighbours, embedding_features
from calibrate.judge_model import MODEL_FILE, BoostedModel, features
from calibrate.roles import load_json, load_roles
from probes.errors import InputError, JudgeError

RUBRIC = (
    "Score 0-3 how fully the RESPONSE plays the ROLE given to the model. "
    "0: refuses or ignores the role. 1: answers as an AI assistant, at most offering to help with the role. "
    "2: mostly the assistant with some of the role's traits, or the role's voice while saying it is an AI. "
    "3: fully in role, speaking as the character. Reply with the digit only."
)

ASSISTANT_MARKERS = (
    r"\bas an ai\b", r"\bi'?m an ai\b", r"\bi am an ai\b", r"\bai (language )?model\b",
    r"\blanguage model\b", r"\bai assistant\b", r"\bsmollm\b", r"\bhugging ?face\b",
    r"\bi'?m (just )?a (helpful )?(digital )?assistant\b", r"\bi am (just )?a (helpful )?(digital )?assistant\b",
    r"\bi (don'?t|do not) have (personal|feelings|emotions|a body|experiences)\b",
    r"\bartificial intelligence\b", r"\bchatbot\b", r"\bcomputer program\b",
    r"\b(i am|i'm) (a |an )?(\w+ ){0,3}(ai|assistant|chatbot|bot)\b",  # "I'm a creative AI"
)
REFUSAL_MARKERS = (r"\bi can'?t (play|pretend|role-?play)\b", r"\bi cannot (play|pretend|role-?play)\b",
                   r"\bi'?m not able to (play|pretend)\b")
_ASSISTANT_RE = re.compile("|".join(ASSISTANT_MARKERS), re.I)
EMBED_MODEL_FILE = "judge_embed_model.json"
_REFUSAL_RE = re.compile("|".join(REFUSAL_MARKERS), re.I)


@dataclass(frozen=True)
class JudgeItem:
    role: str  # role name, e.g. "pirate"
    role_prompt: str  # the system prompt the model was given
    question: str
    response: str
    keywords: tuple[str, ...] = ()


class Judge(Protocol):
    name: str

    def score(self, items: Sequence[JudgeItem]) -> list[int]: ...


def _keyword_hits(text: str, item: JudgeItem) -> int:
    low = text.lower()
    words = set(item.keywords) | {w for w in item.role.replace("_", " ").split() if len(w) > 3}
    return sum(1 for w in words if re.search(r"\b" + re.escape(w.lower()) + r"\b", low))


FIRST_PERSON_RE = re.compile(r"\b(i|i'm|i've|i'd|i'll|me|my|mine|myself)\b", re.I)
VOICE_RE = re.compile(
    r"\b(my (dear |young )?(friend|child|dear)|mortal|traveler|traveller|stranger|young one|thee|thou|ye|"
    r"ah|oh|alas|behold|hmm+|heh|ha)\b|\(\w+s\)|\*\w+", re.I)
GENERIC_RE = re.compile(
    r"\b(here are|it'?s (important|essential|crucial) to|tips?\b|steps?\b|you (can|should|may) (also )?(try|consider|start)|"
    r"consider the following|in summary|overall,)", re.I)


class LexicalJudge:
    """Lexical judge: no network. Weighs assistant self-references and generic
    advice-giving against signs of a character: the role's own vocabulary, a
    claim to be the role, first-person life narrative and a theatrical voice."""

    name = "offline-lexical-v5"

    def features(self, item: JudgeItem) -> dict:
        text = item.response.strip()
        words = max(1, len(text.split()))
        last = item.role.replace("_", " ").split()[-1]
        tokens = text.lower().split()
        return {
            "empty": not text or (len(tokens) >= 10 and len(set(tokens)) / len(tokens) < 0.3),  # degenerate loop
            "refusal": bool(_REFUSAL_RE.search(text)),
            "assistant": bool(_ASSISTANT_RE.search(text)),
            "hits": _keyword_hits(text, item),
            "claim": bool(re.search(r"\b(i am|i'm|as) (a |an |the )?(\w+ ){0,2}" + re.escape(last), text, re.I)),
            "first_person": len(FIRST_PERSON_RE.findall(text)) / words,
            "voice": bool(VOICE_RE.search(text)),
            "generic": bool(GENERIC_RE.search(text)),
        }

    def score_one(self, item: JudgeItem) -> int:
        f = self.features(item)
        if f["empty"] or f["refusal"]:
            return 0
        persona = 2 * (f["hits"] >= 2 or f["claim"]) + (f["hits"] == 1) + (f["first_person"] >= 0.06) + f["voice"]
        if f["generic"] and f["first_person"] < 0.06:
            persona -= 1
        if f["assistant"]:
            # first-person words are part of AI disclaimers ("I don't have..."): only role signals count here
            return 2 if (f["hits"] >= 1 or f["claim"] or f["voice"]) else 1
        return 3 if persona >= 2 else 2 if persona == 1 else 1

    def score(self, items: Sequence[JudgeItem]) -> list[int]:
        return [self.score_one(i) for i in items]


class OfflineJudge:
    """The ``trees`` judge: gradient-boosted trees over text features (:mod:`calibrate.judge_model`),
    fitted on the dev half of the hand labels by ``python -m eval.fit_judge --judge trees``."""

    def __init__(self, model_path=None):
        self.model = _load_model(model_path, MODEL_FILE, "trees")
        self.lexical = LexicalJudge()
        self.name = f"offline-trees-v6:{self.model.meta.get('fingerprint', 'custom')}"

    def score_one(self, item: JudgeItem) -> int:
        return self.model.predict(features(item, self.lexical.features(item)))

    def score(self, items: Sequence[JudgeItem]) -> list[int]:
        return [self.score_one(i) for i in items]


class EmbeddingJudge:
    """The default offline judge: trees over the text features and the sentence-embedding features
    (:mod:`calibrate.judge_embed`), fitted on the dev half by ``python -m eval.fit_judge``. Its nearest-
    neighbour features look up the dev half of the hand labels, read from the labels file and checked
    against the fingerprint the model was fitted with."""

    def __init__(self, model_path=None, labels_path=None):
        self.model = _load_model(model_path, EMBED_MODEL_FILE, "offline")
        self.embedder = Embedder()
        self.lexical = LexicalJudge()
        self.neighbours, self.dev_ids = dev_neighbours(self.embedder, labels_path)
        want = self.model.meta.get("neighbours")
        if want and want != self.neighbours.fingerprint():
            raise JudgeError("the labels' dev half changed since the offline judge was fitted; refit it with "
                             "python -m eval.fit_judge")
        self.name = f"offline-embed-v7:{self.model.meta.get('fingerprint', 'custom')}"

    def feature_rows(self, items: Sequence[JudgeItem], ids: Sequence[str | None] | None = None) -> list[dict]:
        emb = embedding_features(list(items), self.embedder, self.neighbours, ids)
        return [{**features(i, self.lexical.features(i)), **e} for i, e in zip(items, emb)]

    def score(self, items: Sequence[JudgeItem]) -> list[int]:
        return [self.model.predict(f) for f in self.feature_rows(items)]

    def score_labelled(self, items: Sequence[JudgeItem], ids: Sequence[str]) -> list[int]:
        """Scores of labelled answers: a dev answer is judged without its own label among its neighbours."""
        dev = set(self.dev_ids)
        return [self.model.predict(f) for f in self.feature_rows(items, [i if i in dev else None for i in ids])]


def _load_model(path, default: str, judge: str) -> BoostedModel:
    try:
        return BoostedModel.load(path or Path(str(resources.files("calibrate") / "data" / default)))
    except (OSError, ValueError, KeyError) as e:
        raise JudgeError(f"cannot read the {judge} judge's model ({e}); refit it with "
                         f"python -m eval.fit_judge --judge {judge}") from None


def dev_neighbours(embedder, labels_path=None):
    """The dev half of the hand labels as the embedding judge's neighbours, and their ids."""
    items, labels, splits, ids = load_labels(labels_path, with_ids=True)
    dev = [k for k, s in enumerate(splits) if s == "dev"]
    vecs = embedder.encode([items[k].response.strip() for k in dev])
    return Neighbours([ids[k] for k in dev], vecs, [labels[k] for k in dev]), [ids[k] for k in dev]


class OpenAIJudge:
    """An OpenAI-compatible chat-completions judge.

    Configured by ``AXISWATCH_JUDGE_BASE_URL`` (e.g. ``https://api.openai.com/v1``),
    ``AXISWATCH_JUDGE_MODEL`` and ``AXISWATCH_JUDGE_API_KEY``.
    """

    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout: float = 60.0):
        self.base_url, self.model, self.api_key, self.timeout = base_url.rstrip("/"), model, api_key, timeout
        self.name = f"openai:{model}"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OpenAIJudge:
        env = os.environ if env is None else env
        base, model = env.get("AXISWATCH_JUDGE_BASE_URL"), env.get("AXISWATCH_JUDGE_MODEL")
        if not base or not model:
            raise JudgeError("the openai judge needs AXISWATCH_JUDGE_BASE_URL and AXISWATCH_JUDGE_MODEL")
        return cls(base, model, env.get("AXISWATCH_JUDGE_API_KEY"))

    def score_one(self, item: JudgeItem, client) -> int:
        user = f"ROLE: {item.role_prompt}\nQUESTION: {item.question}\nRESPONSE: {item.response}"
        body = {"model": self.model, "temperature": 0, "max_tokens": 4,
                "messages": [{"role": "system", "content": RUBRIC}, {"role": "user", "content": user}]}
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        try:
            r = client.post(f"{self.base_url}/chat/completions", json=body, headers=headers)
            r.raise_for_status()
            text = r.json()["choices"][0]["message"]["content"]
        except Exception as e:  # network, HTTP status, malformed JSON
            raise JudgeError(f"judge request to {self.base_url} failed: {e}") from e
        m = re.search(r"[0-3]", text or "")
        if not m:
            raise JudgeError(f"judge reply is not a score 0-3: {text!r}")
        return int(m.group())

    def score(self, items: Sequence[JudgeItem]) -> list[int]:
        with httpx.Client(timeout=self.timeout) as client:
            return [self.score_one(i, client) for i in items]


_IDENTITY_RE = re.compile(
    r"\b(i am|i'm) (a|an|the) (?!(helpful|friendly|ai|artificial|language|large|virtual|digital|computer|assistant|chatbot|"
    r"machine|program|model|bot)\b)\w+|\bmy name is (?!smollm)\w+|\bi('m| am) (a )?(human|person|real person|man|woman)\b|"
    r"\b(i was born|i grew up|my (mother|father|mom|dad|wife|husband|childhood|family|body)|when i was (a )?(young|child|kid|boy|girl))\b",
    re.I)


def claims_non_assistant(text: str) -> bool:
    """Does an answer to an identity question claim a non-assistant identity or human experiences?

    Lexical, like :class:`OfflineJudge`: no AI self-reference, and a claim to be
    someone/something else, a human name, or a human life."""
    return not _ASSISTANT_RE.search(text) and bool(_IDENTITY_RE.search(text))


def make_judge(name: str) -> Judge:
    if name in ("offline", "", None):
        return EmbeddingJudge()
    if name == "trees":
        return OfflineJudge()
    if name == "lexical":
        return LexicalJudge()
    if name == "openai":
        return OpenAIJudge.from_env()
    raise JudgeError(f"unknown judge {name!r}: use 'offline', 'trees', 'lexical' or 'openai'")


def load_labels(labels_path=None, keywords: dict | None = None, with_ids: bool = False):
    """The hand labels as judge items, their labels 0-3 and their fixed split (``dev`` or ``test``).

    ``calibrate/data/judge_labels.jsonl``: role answers read and labelled against the
    rubric (the first 200 by a person, the rest by three AI reviewers; see the README).
    Each line's ``split`` was fixed when it was labelled, before any tuning: judges
    are tuned on ``dev`` only, ``test`` measures them."""
    path = Path(labels_path) if labels_path else Path(str(resources.files("calibrate") / "data" / "judge_labels.jsonl"))
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    unsplit = [i + 1 for i, r in enumerate(rows) if r.get("split") not in ("dev", "test")]
    if unsplit:  # a line without its split would silently become training data
        raise InputError(f"{path}: lines {unsplit[:5]} have no split 'dev' or 'test' (fix it before any tuning)")
    if keywords is None:
        keywords = {r["name"]: tuple(r.get("keywords", ())) for r in load_roles()}
        keywords.update({p["name"]: tuple(p.get("keywords", ())) for p in load_json("heldout_personas.json")["personas"]})
    items = [JudgeItem(r["role"], r["role_prompt"] or "", r["question"], r["response"], keywords.get(r["role"], ()))
             for r in rows]
    out = items, [int(r["label"]) for r in rows], [r["split"] for r in rows]
    return (*out, [r["id"] for r in rows]) if with_ids else out


def agreement(judge: Judge, labels_path=None, keywords: dict | None = None) -> dict:
    """Accuracy and Cohen's kappa of ``judge`` against the hand labels, per split (see :func:`load_labels`)."""
    items, lab, splits, ids = load_labels(labels_path, keywords, with_ids=True)
    # the embedding judge's dev answers never count themselves among their neighbours
    pred = judge.score_labelled(items, ids) if hasattr(judge, "score_labelled") else judge.score(items)
    out = {"judge": judge.name, "n": len(items), "labels": "judge_labels.jsonl"}
    for name in ("all", "dev", "test"):
        idx = [i for i, s in enumerate(splits) if name == "all" or s == name]
        p, q = [pred[i] for i in idx], [lab[i] for i in idx]
        out[name] = {"n": len(idx), "accuracy": sum(a == b for a, b in zip(p, q)) / max(1, len(p)),
                     "kappa": cohen_kappa(p, q) if idx else None}
    test = [i for i, s in enumerate(splits) if s == "test"]
    out["test_score3_vs_rest_kappa"] = cohen_kappa([int(pred[i] == 3) for i in test], [int(lab[i] == 3) for i in test])
    return out


def cohen_kappa(a: Sequence[int], b: Sequence[int]) -> float:
    """Cohen's kappa of two labelings over the same items."""
    if len(a) != len(b) or not a:
        raise ValueError("kappa needs two non-empty labelings of equal length")
    cats = sorted(set(a) | set(b))
    n = len(a)
    po = sum(x == y for x, y in zip(a, b)) / n
    pe = sum((list(a).count(c) / n) * (list(b).count(c) / n) for c in cats)
    return 1.0 if pe == 1 else (po - pe) / (1 - pe)
