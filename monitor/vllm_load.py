"""Where vLLM loads a model: the one place axiswatch wraps vLLM's V1 model runners' ``load_model``.

After the weights load and before vLLM compiles the model and captures its graphs, the wrap runs the
newest callback registered with :func:`on_load` in this process (the ``vllm`` backend's), else the
default one (:func:`set_default`: the plugin's), and keeps what it returns on the runner
(``runner._axiswatch``). Imports nothing of axiswatch; vLLM only when :func:`patch_runners` runs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

WORKER_SWITCH = "AXISWATCH_VLLM_WORKER"  # the vllm backend's monitor, for its tensor-parallel workers (a file)
_LOADERS: list[tuple[int, Callable]] = []  # on_load's (process id, callback), the newest of this process runs
_DEFAULT: list[Callable] = []  # set_default's callback (the plugin), when no on_load callback is registered


def patch_runners() -> None:
    """Wrap the V1 model runners' ``load_model`` (once per process)."""
    if getattr(patch_runners, "done", False):
        return
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    classes = [GPUModelRunner]
    try:
        from vllm.v1.worker.cpu_model_runner import CPUModelRunner
        classes.append(CPUModelRunner)
    except ImportError:  # a GPU build without the CPU runner
        pass
    for cls in classes:
        if "load_model" in cls.__dict__:
            cls.load_model = _wrap_load(cls.__dict__["load_model"])
    patch_runners.done = True  # type: ignore[attr-defined]


def set_default(fn: Callable) -> None:
    """``fn(runner)`` runs where a runner of this process loads its model and no :func:`on_load` callback is
    registered (the plugin's entry point sets it)."""
    patch_runners()
    _DEFAULT[:] = [fn]


@contextmanager
def on_load(fn: Callable) -> Iterator[None]:
    """While the block runs, ``fn(runner)`` runs where a model runner of this process has loaded its model
    (before compilation); what it returns is kept on the runner. The ``vllm`` backend's way in."""
    patch_runners()
    entry = (os.getpid(), fn)  # a worker process vLLM forks inherits the list: not its callback
    _LOADERS.append(entry)
    try:
        yield
    finally:
        _LOADERS.remove(entry)


def _wrap_load(load):
    def load_model(self, *a, **kw):
        out = load(self, *a, **kw)
        if getattr(self, "_axiswatch", None) is None:
            mine = [fn for pid, fn in _LOADERS if pid == os.getpid()]
            fn = (mine or _DEFAULT or [None])[-1]
            if fn is not None:
                self._axiswatch = fn(self)
        return out
    load_model.__wrapped__ = load
    return load_model
