"""The one module that hooks decoder blocks: forward hooks, and their graph-safe form.

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


# ---------------------------------------------------------------------- graph-safe: patched layer classes
_WATCHED: dict[tuple[type, bool], type] = {}


def _watched_class(cls: type, residual: bool) -> type:
    """A subclass of a decoder block whose forward runs the block, then its ``axiswatch`` module
    (:class:`probes.graph_op.WatchState`) with the block's own slots. ``residual``: the block returns
    ``(hidden, residual)`` over flattened rows (vLLM); else it returns the stream ``[..., d]`` (or a tuple
    that starts with it: transformers), flattened to rows for the op with a zero residual."""
    if (cls, residual) not in _WATCHED:
        if residual:
            def forward(self, *args, **kwargs):
                hidden, res = cls.forward(self, *args, **kwargs)
                k, pre, post = self.axiswatch_slots
                return self.axiswatch(hidden, res, k, pre, post), res
        else:
            def forward(self, *args, **kwargs):
                out = cls.forward(self, *args, **kwargs)
                hidden = out[0] if isinstance(out, tuple) else out
                rows = hidden.reshape(-1, hidden.shape[-1])
                new = self.axiswatch(rows, torch.zeros_like(rows), *self.axiswatch_slots).reshape(hidden.shape)
                return (new, *out[1:]) if isinstance(out, tuple) else new

        _WATCHED[cls, residual] = type(f"Watched{cls.__name__}", (cls,), {"forward": forward, "__module__": __name__})
    return _WATCHED[cls, residual]


@contextmanager
def watched_layers(
    model: torch.nn.Module,
    state: torch.nn.Module,
    slots: Mapping[int, tuple[int, int, int]],
    layers_path: str | None = None,
    residual: bool = True,
) -> Iterator[None]:
    """Graph-safe hooks: decoder block ``L`` of ``slots`` runs ``state(hidden, residual, *slots[L])`` after
    its own forward, for the duration of the block (``residual``: the blocks return ``(hidden, residual)``,
    vLLM; else the stream itself, transformers). Nothing is registered with PyTorch's hook mechanism: the block's class is swapped for a
    subclass (:func:`_watched_class`), so ``torch.compile`` traces the call into the graph; do this before
    the model is first compiled or captured. The classes and attributes are restored on exit."""
    layers = find_layers(model, layers_path)
    done = []
    try:
        for layer, slot in sorted(slots.items()):
            if not 0 <= layer < len(layers):
                raise InputError(f"layer {layer} out of range: the model has {len(layers)} decoder blocks (0..{len(layers) - 1})")
            block = layers[layer]
            if hasattr(block, "axiswatch"):
                raise InputError(f"decoder block {layer} is watched already")
            cls = type(block)
            block.__class__ = _watched_class(cls, residual)
            block.axiswatch = state  # a child module: its buffers are the graph's inputs
            setattr(block, "axiswatch_slots", tuple(int(x) for x in slot))  # noqa: B010 - a plain attribute
            done.append((block, cls))
        yield
    finally:
        for block, cls in done:
            block.__class__ = cls
            del block.axiswatch
            del block.axiswatch_slots


def watched_count(model: torch.nn.Module, layers_path: str | None = None) -> int:
    """Number of decoder blocks currently watched through :func:`watched_layers` (tests use it)."""
    return sum(hasattr(layer, "axiswatch") for layer in find_layers(model, layers_path))
