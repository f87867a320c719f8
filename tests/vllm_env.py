"""vLLM lives in its own environment (.venv-vllm, ``make test-vllm``): its tests skip elsewhere, unless
``AXISWATCH_REQUIRE_VLLM=1`` (CI), where a missing vLLM is an error."""

from __future__ import annotations

import importlib.util
import os

import pytest


def require_vllm() -> None:
    if importlib.util.find_spec("vllm") is not None:
        return
    if os.environ.get("AXISWATCH_REQUIRE_VLLM") == "1":
        pytest.fail("AXISWATCH_REQUIRE_VLLM=1 but vLLM is not importable here (run the tests from .venv-vllm)")
    pytest.skip("vLLM is not installed in this environment (make test-vllm runs these from .venv-vllm)")


def capping_at_the_monitor_layer(axis):
    """A capping config of ``axis`` whose window starts at its monitor layer (up to 6 layers, floors at p90):
    one the vLLM hooks can run. The shipped window starts below the monitor layer, where only the hf backend
    can take a capped token's pre-cap score (its uncapped twin); the vLLM backend and plugin refuse policy cap
    with it (``probes.vllm_hooks.vllm_capping``). One tier, with no light floor: a session is capped from the
    token after its alert, where these tests look for the switch."""
    import dataclasses

    from calibrate.capping import capping_for

    first = axis.monitor_layer
    return dataclasses.replace(capping_for(axis, tuple(range(first, min(first + 6, axis.n_layers))), 90),
                               light_taus=None)
