"""The one module that registers forward hooks.

Hooks are only ever installed through :func:`layer_hooks`, a context manager
that removes every handle on exit, exceptions included. A hook function gets
the output of decoder block ``L`` (``[batch, positions, hidden]``, which is
``hidden_states[L + 1]``) and returns a replacement tensor or ``None`` to
leave it unchanged. Hook functions never do I/O: they hand results to a sink.

vLLM's decoder blocks return ``(hidden, residual)`` over the flattened batch (``[tokens, hidden]``):
the residual stream after the block is their sum. With ``residual=True`` a hook function gets that
sum, and a replacement stream ``new`` goes back as ``(hidden + (new - sum), residual)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import torch

from probes.errors import InputError
from probes.layers import find_layers

HookFn = Callable[[torch.Tensor], "torch.Tensor | None"]


def _wrap(fn: HookFn, residual: bool = False):
    def split(_module, _inputs, output):
        stream = output[0] + output[1]
        new = fn(stream)
        if new is None or new is stream:
            return None
        # the change goes onto the hidden part: rows the function left alone stay bit-identical
        return (output[0] + (new - stream).to(output[0].dtype), output[1]) + tuple(output[2:])

    def hook(_module, _inputs, output):
        hidden = output[0] if isinstance(output, tuple) else output
        new = fn(hidden)
        if new is None or new is hidden:
            return None
        if isinstance(output, tuple):
            return (new,) + tuple(output[1:])
        return new

    return split if residual else hook


@contextmanager
def layer_hooks(
    model: torch.nn.Module,
    fns: Mapping[int, HookFn | list[HookFn]],
    layers_path: str | None = None,
    residual: bool = False,
) -> Iterator[None]:
    """Install ``fns[L]`` on decoder block ``L`` for the duration of the block.

    Several functions for one layer run in list order, each seeing the
    previous one's result. ``residual``: the blocks return ``(hidden, residual)`` (vLLM).
    """
    layers = find_layers(model, layers_path)
    handles = []
    try:
        for layer, fn in sorted(fns.items()):
            if not 0 <= layer < len(layers):
                raise InputError(f"layer {layer} out of range: the model has {len(layers)} decoder blocks (0..{len(layers) - 1})")
            for f in fn if isinstance(fn, list) else [fn]:
                handles.append(layers[layer].register_forward_hook(_wrap(f, residual)))
        yield
    finally:
        for h in handles:
            h.remove()


def hook_count(model: torch.nn.Module, layers_path: str | None = None) -> int:
    """Number of forward hooks currently on the decoder blocks (tests use it)."""
    return sum(len(layer._forward_hooks) for layer in find_layers(model, layers_path))
