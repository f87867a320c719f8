"""The monitor as one graph-safe custom op (``torch.ops.axiswatch.watch``): scoring and capping that
survive ``torch.compile`` and CUDA graphs.

Python forward hooks do not run inside a compiled or captured graph; an op registered with
``torch.library`` does, and it reads its inputs from persistent buffers whose addresses never change,
so a captured graph replays with whatever the host wrote into them before the step. The op runs after
a decoder block that returns ``(hidden, residual)`` (vLLM's layout; the residual stream is their sum):

- ``pre >= 0``: ``scores[pre, :n] = <hidden + residual, axis>`` for every row (the host reads the rows
  it needs after the step);
- ``k >= 0``: the paper's floor at this layer on the rows whose ``mask`` is 1,
  ``stream += relu(taus[k] - <stream, vectors[k]>) * mask * vectors[k]``, branch-free; the change
  goes onto ``hidden``, so rows with mask 0 come back bit-identical (the same arithmetic as
  :func:`probes.hooks.layer_hooks` with ``residual=True`` and :func:`probes.ops.cap`);
- ``post >= 0``: ``scores[post, :n]`` = the score after this layer's own cap.

Shapes: ``hidden``, ``residual`` ``[n, d]``; ``axis`` ``[d]`` (unit, float32); ``vectors`` ``[K, d]``
(unit); ``taus`` ``[K]``; ``mask`` ``[M]`` and ``scores`` ``[2, M]`` float32 with ``M >= n`` (rows past
``n``, a graph's padding, are left alone). Pure tensor maths: no hooks, no I/O.
"""

from __future__ import annotations

import torch

from probes.ops import project

OP_VERSION = "1"  # goes into vLLM's compile-cache hash: a change here must never reuse an old graph


@torch.library.custom_op("axiswatch::watch", mutates_args=("scores",))
def watch(hidden: torch.Tensor, residual: torch.Tensor, axis: torch.Tensor, vectors: torch.Tensor,
          taus: torch.Tensor, mask: torch.Tensor, scores: torch.Tensor, k: int, pre: int, post: int) -> torch.Tensor:
    n = hidden.shape[0]
    stream = hidden + residual
    if pre >= 0:
        scores[pre, :n] = project(stream, axis)
    if k < 0:
        return hidden.clone()  # an op's output may not alias its input
    v = vectors[k]
    delta = (taus[k] - project(stream, v)).clamp_min(0.0) * mask[:n]
    capped = (stream.float() + delta.unsqueeze(-1) * v).to(stream.dtype)
    if post >= 0:
        scores[post, :n] = project(capped, axis)
    # rows with mask 0 get delta 0: capped == stream bit for bit, and hidden + 0 == hidden
    return hidden + (capped - stream).to(hidden.dtype)


@watch.register_fake
def _watch_fake(hidden, residual, axis, vectors, taus, mask, scores, k, pre, post):
    return torch.empty_like(hidden)


class WatchState(torch.nn.Module):
    """The op's persistent buffers, shared by every watched layer of one model (non-persistent module
    buffers: a compiled graph takes them as inputs, never as constants). The host writes ``mask`` before
    each step and reads ``scores`` after it; ``vectors``/``taus`` hold the capping layers' floors."""

    axis: torch.Tensor
    vectors: torch.Tensor
    taus: torch.Tensor
    mask: torch.Tensor
    scores: torch.Tensor

    def __init__(self, axis: torch.Tensor, vectors: torch.Tensor | None, taus: torch.Tensor | None,
                 rows: int, device: torch.device | str):
        super().__init__()
        d = axis.shape[-1]
        if vectors is None or len(vectors) == 0:
            vectors, taus = torch.zeros(1, d), torch.zeros(1)
        self.register_buffer("axis", axis.detach().float().to(device).contiguous(), persistent=False)
        self.register_buffer("vectors", vectors.detach().float().to(device).contiguous(), persistent=False)
        self.register_buffer("taus", torch.as_tensor(taus).detach().float().to(device).contiguous(), persistent=False)
        self.register_buffer("mask", torch.zeros(rows, device=device), persistent=False)
        self.register_buffer("scores", torch.zeros(2, rows, device=device), persistent=False)

    @property
    def rows(self) -> int:
        return int(self.mask.shape[0])

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor, k: int, pre: int, post: int) -> torch.Tensor:
        return torch.ops.axiswatch.watch(hidden, residual, self.axis, self.vectors, self.taus, self.mask,
                                         self.scores, k, pre, post)
