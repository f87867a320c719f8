"""axiswatch as a vLLM plugin: an unchanged vLLM OpenAI server, every generated token scored.

Installing axiswatch registers :func:`register` in vLLM's ``vllm.general_plugins`` entry point group,
which vLLM calls in each of its processes. With ``AXISWATCH_VLLM_PLUGIN=1`` it has vLLM's model runners
(:mod:`monitor.vllm_load`) start the monitor where the model loads, right after the weights load and before
vLLM compiles the model and captures its graphs, so the monitor's op is part of the compiled graph: on
the engine core, or tensor-parallel rank 0, a :class:`~monitor.vllm_runner.RunnerMonitor` through the same
composition root as ``axiswatch serve`` (:func:`monitor.service.start`); on the other ranks the op alone
(:class:`~monitor.vllm_runner.RankMonitor`). The ``vllm`` backend's tensor-parallel workers
(``AXISWATCH_VLLM_WORKER``) get the op alone on every rank. Other processes (the API server) do nothing,
and without either switch nothing of axiswatch beyond this module and :mod:`monitor.vllm_load` (which
imports nothing) is imported.
"""

from __future__ import annotations

import os

from monitor.vllm_load import WORKER_SWITCH, set_default

SWITCH = "AXISWATCH_VLLM_PLUGIN"


def enabled(env=os.environ) -> bool:
    return env.get(SWITCH, "").lower() in ("1", "true", "yes", "on")


def register() -> None:
    """vLLM's plugin entry point (every vLLM process): start the monitor where a model loads, when switched on."""
    if enabled() or os.environ.get(WORKER_SWITCH):
        set_default(_start)


def _start(runner):
    from monitor.vllm_runner import on_rank  # the service loads only where a model does

    return on_rank(runner, plugin=enabled(), spec=os.environ.get(WORKER_SWITCH),
                   workers=os.environ.get(f"{SWITCH}_WORKERS", "1") != "0")
