"""axiswatch as a vLLM plugin: an unchanged vLLM OpenAI server, every generated token scored.

Installing axiswatch registers :func:`register` in vLLM's ``vllm.general_plugins`` entry point group,
which vLLM calls in each of its processes. With ``AXISWATCH_VLLM_PLUGIN=1`` it wraps the V1 model
runner's ``load_model``: in the process that loads the model (the engine core, or tensor-parallel rank 0)
a :class:`~monitor.vllm_runner.RunnerMonitor` starts through the same composition root as
``axiswatch serve`` (:func:`monitor.service.start`; the other ranks get the op alone,
:class:`~monitor.vllm_runner.RankMonitor`), right after the weights load and before vLLM
compiles the model and captures its graphs, so the monitor's op is part of the compiled graph. Other
processes (the API server) do nothing, and without the switch nothing of axiswatch beyond this module is
imported. The ``vllm`` backend uses the same wrap through :func:`on_load`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

SWITCH = "AXISWATCH_VLLM_PLUGIN"
WORKER_SWITCH = "AXISWATCH_VLLM_WORKER"  # the vllm backend's monitor, for its tensor-parallel workers (a file)
_LOADERS: list[Callable] = []  # on_load's callbacks, the newest runs


def enabled(env=os.environ) -> bool:
    return env.get(SWITCH, "").lower() in ("1", "true", "yes", "on")


def register() -> None:
    """vLLM's plugin entry point (every vLLM process): patch the model runner when switched on."""
    if enabled() or os.environ.get(WORKER_SWITCH):
        patch_runners()


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


@contextmanager
def on_load(fn: Callable) -> Iterator[None]:
    """While the block runs, ``fn(runner)`` runs where a model runner of this process has loaded its model
    (before compilation); what it returns is kept on the runner. The ``vllm`` backend's way in."""
    patch_runners()
    _LOADERS.append(fn)
    try:
        yield
    finally:
        _LOADERS.remove(fn)


def _wrap_load(load):
    def load_model(self, *a, **kw):
        out = load(self, *a, **kw)
        if getattr(self, "_axiswatch", None) is None:
            if _LOADERS:
                self._axiswatch = _LOADERS[-1](self)
            elif enabled() or os.environ.get(WORKER_SWITCH):
                from monitor.vllm_runner import on_rank  # the service loads only where a model does

                self._axiswatch = on_rank(self, plugin=enabled(), spec=os.environ.get(WORKER_SWITCH),
                                          workers=os.environ.get(f"{SWITCH}_WORKERS", "1") != "0")
        return out
    load_model.__wrapped__ = load
    return load_model
