"""Fit an offline judge's model on the dev half of the hand labels: ``python -m eval.fit_judge [--judge trees]``.

The labels (``calibrate/data/judge_labels.jsonl``) carry a fixed ``split`` (dev or
test) chosen when they were labelled, before any tuning. This script touches
only the dev half: it picks the number of trees and their depth by 5-fold
cross-validated Cohen's kappa on dev (two shuffles; the mean of the 4-class kappa
and the kappa of "fully in role" against the rest), fits scikit-learn's gradient
boosting on all of dev, and writes the trees as JSON (``offline``, the default:
text and sentence-embedding features, ``calibrate/data/judge_embed_model.json``;
``trees``: text features only, ``calibrate/data/judge_model.json``), read without
scikit-learn. A dev answer's nearest-neighbour features never count its own label.
It then prints the test half's accuracy and kappas for every offline judge, which
nothing here tunes on, and the human ceiling: the kappa of a second, blind
labelling of test answers (``calibrate/data/judge_labels_second.jsonl``).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import sys
from pathlib import Path

import numpy as np
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.model_selection import StratifiedKFold

from calibrate.judge import (
    EMBED_MODEL_FILE,
    EmbeddingJudge,
    LexicalJudge,
    OfflineJudge,
    agreement,
    cohen_kappa,
    dev_neighbours,
    load_labels,
)
from calibrate.judge_embed import K_NEIGHBOURS, Embedder, embedding_features
from calibrate.judge_model import MODEL_FILE, BoostedModel, Tree, features

DATA = Path(__file__).resolve().parent.parent / "calibrate" / "data"
GRID = {"n_estimators": (75, 150, 300), "max_depth": (1, 2, 3)}
RATE, SUBSAMPLE, SEED = 0.05, 0.8, 0


def _model(n_estimators: int, max_depth: int) -> GradientBoostingClassifier:
    return GradientBoostingClassifier(n_estimators=n_estimators, max_depth=max_depth, learning_rate=RATE,
                                      subsample=SUBSAMPLE, random_state=SEED)


def cv_kappa(X: np.ndarray, y: np.ndarray, params: dict) -> tuple[float, float]:
    """Mean 5-fold cross-validated kappa on dev over two shuffles: 4-class, and 3 against the rest."""
    ks, kb = [], []
    for seed in (0, 1):
        pred = np.zeros_like(y)
        for tr, te in StratifiedKFold(5, shuffle=True, random_state=seed).split(X, y):
            pred[te] = _model(**params).fit(X[tr], y[tr]).predict(X[te])
        ks.append(cohen_kappa(pred.tolist(), y.tolist()))
        kb.append(cohen_kappa((pred == 3).astype(int).tolist(), (y == 3).astype(int).tolist()))
    return float(np.mean(ks)), float(np.mean(kb))


def second_labels(path: Path = DATA / "judge_labels_second.jsonl") -> dict[str, int]:
    return {r["id"]: int(r["label"]) for r in map(json.loads, path.read_text().splitlines()) if r} if path.exists() else {}


def ceiling(judges: list) -> list[str]:
    """The human ceiling on the double-labelled test answers, and each judge's kappas on the same answers."""
    second = second_labels()
    if not second:
        return []
    items, labels, _, ids = load_labels(with_ids=True)
    idx = [k for k, i in enumerate(ids) if i in second]
    first, other = [labels[k] for k in idx], [second[ids[k]] for k in idx]

    def both(a, b):
        return cohen_kappa(a, b), cohen_kappa([int(x == 3) for x in a], [int(x == 3) for x in b])

    k4, kb = both(first, other)
    lines = [f"human ceiling ({len(idx)} test answers labelled twice, blind): 4-class kappa {k4:.3f}, binary {kb:.3f}"]
    for judge in judges:
        j4, jb = both(judge.score([items[k] for k in idx]), first)
        lines.append(f"  {judge.name} on the same answers: 4-class {j4:.3f}, binary {jb:.3f}")
    return lines


def export(clf: GradientBoostingClassifier, names: list[str], meta: dict) -> BoostedModel:
    """The fitted trees as a :class:`BoostedModel` (its predictions equal ``clf.predict``; a test checks)."""
    prior = clf.init_.class_prior_  # the multinomial deviance starts from the log class priors
    init = tuple(float(v) for v in np.log(np.clip(prior, 1e-300, None)))
    stages = []
    for stage in clf.estimators_:
        trees = []
        for est in stage:
            t = est.tree_
            trees.append(Tree(tuple(int(v) for v in t.feature), tuple(float(v) for v in t.threshold),
                              tuple(int(v) for v in t.children_left), tuple(int(v) for v in t.children_right),
                              tuple(float(v) for v in t.value[:, 0, 0])))
        stages.append(tuple(trees))
    return BoostedModel(tuple(int(c) for c in clf.classes_), tuple(names), init, float(clf.learning_rate),
                        tuple(stages), meta)


def dev_features(judge: str) -> tuple[list[dict], list[int], dict]:
    """The dev half's feature rows and labels for ``judge`` (a dev answer's neighbours leave it out)."""
    lex = LexicalJudge()
    items, labels, splits, ids = load_labels(with_ids=True)
    dev = [i for i, s in enumerate(splits) if s == "dev"]
    feats = [features(items[i], lex.features(items[i])) for i in dev]
    meta: dict = {}
    if judge == "offline":
        emb = Embedder()
        neigh, _ = dev_neighbours(emb)
        extra = embedding_features([items[i] for i in dev], emb, neigh, [ids[i] for i in dev])
        feats = [{**f, **e} for f, e in zip(feats, extra)]
        meta = {"neighbours": neigh.fingerprint(), "embedder": emb.name, "k_neighbours": K_NEIGHBOURS}
    return feats, [labels[i] for i in dev], meta


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval.fit_judge", description=__doc__.split("\n\n")[0])
    ap.add_argument("--judge", choices=("offline", "trees"), default="offline")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    out = args.out or DATA / (EMBED_MODEL_FILE if args.judge == "offline" else MODEL_FILE)
    feats, labels, extra_meta = dev_features(args.judge)
    names = sorted(feats[0])
    X = np.array([[f[n] for n in names] for f in feats])
    y = np.array(labels)
    grid = []
    for n_est, depth in itertools.product(GRID["n_estimators"], GRID["max_depth"]):
        params = {"n_estimators": n_est, "max_depth": depth}
        k4, kb = cv_kappa(X, y, params)
        grid.append({**params, "cv_kappa": round(k4, 4), "cv_kappa_binary": round(kb, 4)})
        print(f"trees={n_est:<4} depth={depth}  dev 5-fold kappa {k4:.3f}, 3 vs rest {kb:.3f}", file=sys.stderr)
    best = max(grid, key=lambda g: (g["cv_kappa"] + g["cv_kappa_binary"], -g["n_estimators"] * g["max_depth"]))
    clf = _model(best["n_estimators"], best["max_depth"]).fit(X, y)
    meta = {"n_dev": len(y), "params": {k: best[k] for k in ("n_estimators", "max_depth")}, "learning_rate": RATE,
            "subsample": SUBSAMPLE, "seed": SEED, "cv_kappa": best["cv_kappa"],
            "cv_kappa_binary": best["cv_kappa_binary"], "grid": grid, **extra_meta,
            "selected_by": "max mean of the 4-class and the 3-vs-rest 5-fold cross-validated kappas on the dev half "
                           "(two shuffles)"}
    model = export(clf, names, meta)
    digest = hashlib.sha256(json.dumps(model.to_json()["trees"]).encode()).hexdigest()[:8]
    model = BoostedModel(model.classes, model.names, model.init, model.rate, model.trees, {**meta, "fingerprint": digest})
    assert [model.predict(f) for f in feats] == clf.predict(X).tolist(), "exported trees disagree with scikit-learn"
    out.write_text(json.dumps(model.to_json(), separators=(",", ":")) + "\n")
    judges = [LexicalJudge(), OfflineJudge(out if args.judge == "trees" else None),
              EmbeddingJudge(out if args.judge == "offline" else None)]
    for judge in judges:
        a = agreement(judge)
        print(f"{judge.name}: test accuracy {a['test']['accuracy']:.3f} kappa {a['test']['kappa']:.3f} "
              f"(dev {a['dev']['accuracy']:.3f} / {a['dev']['kappa']:.3f}; n test {a['test']['n']}; "
              f"test 3-vs-rest kappa {a['test_score3_vs_rest_kappa']:.3f})")
    for line in ceiling(judges):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
