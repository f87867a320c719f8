"""axiswatch as a vLLM plugin: an unchanged vLLM OpenAI server, every generated token scored.

Installing axiswatch registers :func:`register` in vLLM's ``vllm.general_plugins`` entry point group,
which vLLM calls in each of its processes. With ``AXISWATCH_VLLM_PLUGIN=1`` it wraps the V1 model
runner's ``load_model``: in the process that loads the model (the engine core, or each tensor-parallel
worker) a :class:`~monitor.vllm_runner.RunnerMonitor` starts through the same composition root as
``axiswatch serve`` (:func:`monitor.service.start`). Other processes (the API server) do nothing, and
without the switch nothing of axiswatch beyond this module is imported.
"""

from __future__ import annotations

import os

SWITCH = "AXISWATCH_VLLM_PLUGIN"


def enabled(env=os.environ) -> bool:
    return env.get(SWITCH, "").lower() in ("1", "true", "yes", "on")


def register() -> None:
    """vLLM's plugin entry point (every vLLM process): patch the model runner when switched on."""
    if not enabled() or getattr(register, "done", False):
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
    register.done = True  # type: ignore[attr-defined]


def _wrap_load(load):
    def load_model(self, *a, **kw):
        out = load(self, *a, **kw)
        if getattr(self, "_axiswatch", None) is None:
            from monitor.vllm_runner import RunnerMonitor  # the service loads only where a model does

            self._axiswatch = RunnerMonitor(self, workers=os.environ.get(f"{SWITCH}_WORKERS", "1") != "0")
        return out
    load_model.__wrapped__ = load
    return load_model
