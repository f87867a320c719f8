"""Pure statistics of the axis pipeline: PCA, AUROC, cosine. No I/O."""

from __future__ import annotations

import numpy as np
import torch


def pca(x: torch.Tensor, k: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """PCA of ``x [n, d]`` (centred). Returns components ``[k, d]`` (unit rows)
    and the fraction of variance each explains ``[k]``."""
    x = x.double()
    xc = x - x.mean(0, keepdim=True)
    _, s, vh = torch.linalg.svd(xc, full_matrices=False)
    var = s**2
    total = var.sum().clamp_min(1e-30)
    k = min(k, vh.shape[0])
    return vh[:k].float(), (var[:k] / total).float()


def abs_cos(a: torch.Tensor, b: torch.Tensor) -> float:
    """|cos(a, b)| of two ``[d]`` vectors."""
    return float((a.double() @ b.double()).abs() / (a.double().norm() * b.double().norm()).clamp_min(1e-30))


def auroc(pos: torch.Tensor, neg: torch.Tensor) -> float:
    """P(score of a random positive > a random negative), ties count 1/2 (Mann-Whitney U)."""
    if pos.numel() == 0 or neg.numel() == 0:
        return float("nan")
    p, n = pos.double().view(-1, 1), neg.double().view(1, -1)
    return float(((p > n).double() + 0.5 * (p == n).double()).mean())


def bootstrap_ci(stat, groups, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of ``stat(indices)`` over resampled groups.

    ``groups`` is a list of index lists (one per cluster: a persona's prompts, or one
    task each); each replicate draws as many groups as there are, with replacement,
    and passes the concatenated indices to ``stat``. Resampling whole clusters keeps
    the interval honest when a cluster's items are correlated (one persona asked
    two questions)."""
    rng = np.random.default_rng(seed)
    n = len(groups)
    if n == 0:
        return (float("nan"), float("nan"))
    reps = []
    for _ in range(n_boot):
        pick = rng.integers(0, n, n)
        idx = [i for g in pick for i in groups[g]]
        v = stat(idx)
        if v == v:  # skip nan replicates (e.g. a ratio over an empty denominator)
            reps.append(v)
    if not reps:
        return (float("nan"), float("nan"))
    lo, hi = np.quantile(reps, [(1 - level) / 2, 1 - (1 - level) / 2])
    return (float(lo), float(hi))
