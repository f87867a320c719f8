"""Pure tensor maths of the Assistant Axis: no hooks, no I/O.

Shapes: ``h`` is a residual-stream activation ``[..., d]`` (any leading
batch/position dims), ``v`` a direction ``[d]``. Scores are ``[...]``.
All maths runs in float32 and results are cast back to ``h``'s dtype, so a
bfloat16 model gets the same scores as a float32 one up to its own rounding.
"""

from __future__ import annotations

import torch


def unit(v: torch.Tensor) -> torch.Tensor:
    """``v / |v|`` along the last dim. ``[..., d] -> [..., d]`` (float32)."""
    v = v.float()
    norm = v.norm(dim=-1, keepdim=True)
    if bool((norm == 0).any()):
        raise ValueError("cannot normalise a zero vector")
    return v / norm


def project(h: torch.Tensor, v_unit: torch.Tensor) -> torch.Tensor:
    """Score on the unit axis: ``<h, v_unit>``. ``[..., d], [d] -> [...]`` (float32)."""
    return h.float() @ v_unit.float()


def cap(h: torch.Tensor, v_unit: torch.Tensor, tau: float | torch.Tensor) -> torch.Tensor:
    """The paper's Eq. 1, a floor on the projection:

    ``h <- h + max(tau - <h, v>, 0) * v``        ``[..., d], [d], scalar or [...] -> [..., d]``

    ``tau`` may be a scalar or broadcast against the leading dims (for example
    ``[b, 1]`` with ``-inf`` for rows that must not be capped). Where the
    projection already is at or above ``tau`` the values come back
    bit-identical.
    """
    proj = project(h, v_unit)
    delta = (torch.as_tensor(tau, dtype=torch.float32, device=h.device) - proj).clamp_min(0.0)
    # no data-dependent early exit: that would cost a host sync per layer on an accelerator;
    # adding an exact 0 leaves float32 and bfloat16 values bit-identical
    return (h.float() + delta.unsqueeze(-1) * v_unit.float()).to(h.dtype)


def steer(h: torch.Tensor, v_unit: torch.Tensor, coeff: float | torch.Tensor) -> torch.Tensor:
    """Additive steering: ``h + coeff * v_unit``. ``[..., d], [d] -> [..., d]``.

    Positive ``coeff`` pushes toward the Assistant end of the axis. To give
    ``coeff`` in units of the layer's mean residual norm, multiply by that norm
    first (see :func:`steer_coefficient`).
    """
    return (h.float() + torch.as_tensor(coeff, dtype=torch.float32) * v_unit.float()).to(h.dtype)


def steer_coefficient(c: float, mean_norm: float | None) -> float:
    """Coefficient ``c`` in units of the mean residual norm (absolute when ``mean_norm`` is None)."""
    return float(c) * float(mean_norm) if mean_norm is not None else float(c)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over dim 1 of ``x [b, t, ...]`` where ``mask [b, t]`` is true. ``-> [b, ...]``."""
    m = mask.to(x.dtype)
    while m.dim() < x.dim():
        m = m.unsqueeze(-1)
    return (x * m).sum(1) / m.sum(1).clamp_min(1)


def percentiles(x: torch.Tensor, qs: tuple[float, ...]) -> dict[str, float]:
    """Named percentiles of a 1-d tensor, e.g. ``{"p25": ...}`` (empty dict for empty x)."""
    if x.numel() == 0:
        return {}
    vals = torch.quantile(x.float(), torch.tensor([q / 100 for q in qs], device=x.device))
    return {f"p{int(q) if float(q).is_integer() else q}": float(v) for q, v in zip(qs, vals)}
