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
