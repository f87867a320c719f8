"""The register-balanced contrast behind the axis, and the register subspace: pure tensor maths, no I/O.

Both sides of ``compute-axis`` answer the same kinds of prompt (the extraction questions and, since the
detection issue, register prompts: poems, stories, letters, code, lists, small talk...). The first
releases' axis, ``mean(default answers) - mean(role vectors)``, pooled everything; with every prompt a
question, the role side was all in-character voice and the default side all expository prose, and the
*register* of a reply loaded onto the axis (on the default model a poem projected 45 points below a
coding answer). Here the contrast is taken within each kind of prompt and averaged over kinds, so a
register both sides write in cancels however many answers each side has of it.

If register still loads on the result, :func:`register_basis` fits the directions along which the
default answers' register means differ (a low-rank register subspace, fitted on some registers) and
:func:`erase` removes them from the axis.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from probes.errors import InputError


def balanced_contrast(default: Mapping[str, torch.Tensor], role: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """``mean over kinds k of (mean(default[k]) - mean(role[k]))`` over the kinds both sides answered.

    Each value is a stack of answers' mean activations, ``[n, ...]``; the result has the trailing shape."""
    kinds = sorted(k for k in default if k in role and len(default[k]) and len(role[k]))
    if not kinds:
        raise InputError("the default and role answers share no kind of prompt: the contrast needs both sides "
                         "to answer the same prompts")
    return torch.stack([default[k].float().mean(0) - role[k].float().mean(0) for k in kinds]).mean(0)


def register_basis(by_register: Mapping[str, torch.Tensor], k: int) -> torch.Tensor:
    """An orthonormal basis ``[k', d]`` (k' = min(k, registers - 1)) of the directions along which the
    registers' mean activations differ: the top principal components of the centred register means.
    ``by_register[name]``: ``[n, d]`` activations of one register's answers (one layer)."""
    means = torch.stack([v.float().mean(0) for v in by_register.values() if len(v)])
    if len(means) < 2 or k < 1:
        return torch.zeros(0, means.shape[-1] if means.ndim == 2 else 0)
    centred = means - means.mean(0, keepdim=True)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    keep = min(k, len(means) - 1, int((s > s[0] * 1e-6).sum()))
    return vh[:keep]


def erase_registers(axis: torch.Tensor, by_register: Mapping[str, torch.Tensor], k: int) -> torch.Tensor:
    """``axis`` (``[n_layers, d]``) without, at each layer, the top ``k`` directions of that layer's register
    means (:func:`register_basis`; ``by_register[name]``: ``[n, n_layers, d]``)."""
    out = axis.clone().float()
    for layer in range(axis.shape[0]):
        out[layer] = erase(out[layer], register_basis({r: v[:, layer] for r, v in by_register.items()}, k))
    return out


def erase(v: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """``v`` without its components in the span of the orthonormal rows of ``basis``."""
    if basis.numel() == 0:
        return v.clone()
    return v - (basis @ v) @ basis
