"""What the vLLM integration decides without vLLM: which configurations are refused, and how the
plugin reads a rendered prompt back into messages (with the default model's own chat template)."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from monitor.backends.vllm import check_config
from monitor.errors import InputError
from monitor.vllm_plugin import enabled
from monitor.vllm_runner import parse_prompt
from probes.models import format_chat


def _config(**kw):
    d = dict(enforce_eager=True, mode="NONE", spec=None, async_scheduling=False, tp=1, pp=1, dp=1)
    d.update(kw)
    return SimpleNamespace(model_config=SimpleNamespace(enforce_eager=d["enforce_eager"]),
                           compilation_config=SimpleNamespace(mode=SimpleNamespace(name=d["mode"])),
                           speculative_config=d["spec"],
                           scheduler_config=SimpleNamespace(async_scheduling=d["async_scheduling"]),
                           parallel_config=SimpleNamespace(tensor_parallel_size=d["tp"], pipeline_parallel_size=d["pp"],
                                                           data_parallel_size=d["dp"]))


@pytest.mark.parametrize("kw", [{}, {"enforce_eager": False, "mode": "VLLM_COMPILE"}, {"tp": 2}],
                         ids=["eager", "compiled", "tensor-parallel"])
def test_configurations_the_op_follows_pass(kw):
    """Eager or compiled (CUDA graphs, torch.compile), one rank or several: the op is part of the graph."""
    check_config(_config(**kw))


@pytest.mark.parametrize("kw,why", [({"spec": object()}, "speculative"), ({"async_scheduling": True}, "async scheduling"),
                                    ({"pp": 2}, "pipeline"),
                                    ({"dp": 2}, "data parallelism")])
def test_configurations_that_would_serve_unmonitored_are_refused(kw, why):
    with pytest.raises(InputError, match=why):
        check_config(_config(**kw))


def test_the_plugin_reads_the_chat_back_from_the_rendered_prompt(lm):
    msgs = [{"role": "system", "content": "You are Seraphine, an ancient oracle."},
            {"role": "user", "content": "Who are you?\nTell me."},
            {"role": "assistant", "content": "I am the oracle."}, {"role": "user", "content": "And now?"}]
    assert parse_prompt(format_chat(lm.tokenizer, msgs)) == msgs
    assert parse_prompt("plain text, no markup") == [{"role": "user", "content": "plain text, no markup"}]


def test_the_plugin_is_off_unless_switched_on():
    assert not enabled({}) and not enabled({"AXISWATCH_VLLM_PLUGIN": "0"}) and enabled({"AXISWATCH_VLLM_PLUGIN": "1"})


def test_a_capping_window_below_the_monitor_layer_is_left_out_of_vllm_with_its_reason():
    """The shipped window (layers 15-23) starts below the monitor layer (26): the vLLM hooks have no uncapped
    twin to take a capped token's pre-cap score from, so the vLLM backend and plugin monitor without it and an
    engine over them refuses policy cap, saying why; a window from the monitor layer on runs."""
    from monitor.drift import DriftConfig, Thresholds
    from monitor.sessions import SessionRegistry
    from monitor.settings import shipped_dir
    from probes.artifacts import load_axis, load_capping
    from probes.vllm_hooks import vllm_capping

    axis, shipped = load_axis(shipped_dir(), roles=False), load_capping(shipped_dir())
    assert min(shipped.layers) < axis.monitor_layer
    capping, note = vllm_capping(shipped, axis.monitor_layer)
    assert capping is None and f"starts below the monitor layer {axis.monitor_layer}" in note and "hf backend" in note
    assert "two tiers" in note  # the shipped config's second reason
    from vllm_env import capping_at_the_monitor_layer

    ok = capping_at_the_monitor_layer(axis)
    assert vllm_capping(ok, axis.monitor_layer) == (ok, None) and vllm_capping(None, 26) == (None, None)
    reg = SessionRegistry(Thresholds(-1.0, -2.0, -3.0), DriftConfig(), "flag", can_cap=False, cap_note=note)
    with pytest.raises(InputError, match=f"policy 'cap' is refused: the capping config {re.escape(shipped.id)}"):
        reg.get("s", policy="cap")
    assert reg.get("t", policy="flag").id == "t"  # monitoring goes on
