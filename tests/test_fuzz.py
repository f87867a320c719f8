"""The HTTP API fuzzed from its own OpenAPI schema with schemathesis: no input gives a 5xx.

Runs in-process (ASGI) against the real engine on the tests' tiny random Llama; requests may ask for at
most 4 new tokens here so that a few hundred generated cases stay quick.

The cases are derandomized, so a CI run tries the same inputs as the run that was reviewed. To
explore new inputs, set ``AXISWATCH_FUZZ_SEED`` (any integer) and optionally
``AXISWATCH_FUZZ_EXAMPLES`` (cases per operation, default 40); a failure prints a curl command
that reproduces it. Shrinking is off: the model makes each case slow, and the curl is enough.
"""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from schemathesis.checks import not_a_server_error


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory, tiny_settings):
    from monitor import service
    from monitor.api import create_app

    db = tmp_path_factory.mktemp("fuzz") / "aw.db"
    rt = service.start(tiny_settings.with_(database_url=f"sqlite:///{db}", batch_size=4))
    try:
        yield schemathesis.openapi.from_asgi("/openapi.json", create_app(rt.engine, rt.store,
                                                                         rt.streams, max_new_tokens=4))
    finally:
        rt.close()


FUZZ_SEED = os.environ.get("AXISWATCH_FUZZ_SEED")
FUZZ_EXAMPLES = int(os.environ.get("AXISWATCH_FUZZ_EXAMPLES", "40"))


def test_no_input_gives_a_server_error(api_schema):
    """Every operation, ~40 generated cases each (valid and invalid bodies, headers, parameters)."""
    ops = [r.ok() for r in api_schema.get_all_operations()]
    assert {op.label for op in ops} >= {"POST /v1/chat/completions", "POST /v1/audit", "GET /v1/sessions",
                                        "GET /v1/sessions/{session_id}"}
    calls = {}
    for op in ops:
        @given(case=op.as_strategy())
        @settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
                  database=None, derandomize=FUZZ_SEED is None,
                  phases=[Phase.explicit, Phase.reuse, Phase.generate])
        def fuzz(case):
            calls[op.label] = calls.get(op.label, 0) + 1  # noqa: B023 - run within this iteration
            case.call_and_validate(checks=[not_a_server_error], timeout=120)

        (seed(int(FUZZ_SEED))(fuzz) if FUZZ_SEED is not None else fuzz)()
    print("fuzzed:", calls)
    assert sum(calls.values()) >= 100  # 4 operations x 40, at least
