"""Pure statistics of the axis pipeline: PCA, AUROC, cosine. No I/O."""

from __future__ import annotations

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
