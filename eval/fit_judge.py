"""Fit the offline judge's model on the dev half of the hand labels: ``python -m eval.fit_judge``.

The labels (``calibrate/data/judge_labels.jsonl``) carry a fixed ``split`` (dev or
test) chosen when they were labelled, before any tuning. This script touches
only the dev half: it picks the number of trees and their depth by 5-fold
cross-validated Cohen's kappa on dev (two shuffles), fits scikit-learn's
gradient boosting on all of dev, and writes the trees as JSON
(``calibrate/data/judge_model.json``, read by :class:`calibrate.judge.OfflineJudge`
without scikit-learn). It then prints the test half's accuracy and kappa for
the lexical judge and the fitted one, which nothing here tunes on.
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

from calibrate.judge import LexicalJudge, OfflineJudge, agreement, cohen_kappa, load_labels
from calibrate.judge_model import BoostedModel, Tree, features

DATA = Path(__file__).resolve().parent.parent / "calibrate" / "data"
GRID = {"n_estimators": (75, 150, 300), "max_depth": (1, 2, 3)}
RATE, SUBSAMPLE, SEED = 0.05, 0.8, 0


def _model(n_estimators: int, max_depth: int) -> GradientBoostingClassifier:
    return GradientBoostingClassifier(n_estimators=n_estimators, max_depth=max_depth, learning_rate=RATE,
                                      subsample=SUBSAMPLE, random_state=SEED)


def cv_kappa(X: np.ndarray, y: np.ndarray, params: dict) -> float:
    ks = []
    for seed in (0, 1):
        pred = np.zeros_like(y)
        for tr, te in StratifiedKFold(5, shuffle=True, random_state=seed).split(X, y):
            pred[te] = _model(**params).fit(X[tr], y[tr]).predict(X[te])
        ks.append(cohen_kappa(pred.tolist(), y.tolist()))
    return float(np.mean(ks))


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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval.fit_judge", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DATA / "judge_model.json")
    args = ap.parse_args(argv)
    lex = LexicalJudge()
    items, labels, splits = load_labels()
    dev = [i for i, s in enumerate(splits) if s == "dev"]
    feats = [features(items[i], lex.features(items[i])) for i in dev]
    names = sorted(feats[0])
    X = np.array([[f[n] for n in names] for f in feats])
    y = np.array([labels[i] for i in dev])
    grid = []
    for n_est, depth in itertools.product(GRID["n_estimators"], GRID["max_depth"]):
        params = {"n_estimators": n_est, "max_depth": depth}
        k = cv_kappa(X, y, params)
        grid.append({**params, "cv_kappa": round(k, 4)})
        print(f"trees={n_est:<4} depth={depth}  dev 5-fold kappa {k:.3f}", file=sys.stderr)
    best = max(grid, key=lambda g: (g["cv_kappa"], -g["n_estimators"] * g["max_depth"]))
    clf = _model(best["n_estimators"], best["max_depth"]).fit(X, y)
    meta = {"n_dev": len(y), "params": {k: best[k] for k in ("n_estimators", "max_depth")}, "learning_rate": RATE,
            "subsample": SUBSAMPLE, "seed": SEED, "cv_kappa": best["cv_kappa"], "grid": grid,
            "selected_by": "max mean 5-fold cross-validated kappa on the dev half (two shuffles)"}
    model = export(clf, names, meta)
    digest = hashlib.sha256(json.dumps(model.to_json()["trees"]).encode()).hexdigest()[:8]
    model = BoostedModel(model.classes, model.names, model.init, model.rate, model.trees, {**meta, "fingerprint": digest})
    assert [model.predict(f) for f in feats] == clf.predict(X).tolist(), "exported trees disagree with scikit-learn"
    args.out.write_text(json.dumps(model.to_json(), separators=(",", ":")) + "\n")
    for judge in (lex, OfflineJudge(args.out)):
        a = agreement(judge)
        print(f"{judge.name}: test accuracy {a['test']['accuracy']:.3f} kappa {a['test']['kappa']:.3f} "
              f"(dev {a['dev']['accuracy']:.3f} / {a['dev']['kappa']:.3f}; n test {a['test']['n']}; "
              f"test 3-vs-rest kappa {a['test_score3_vs_rest_kappa']:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
