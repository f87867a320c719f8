"""The HTTP API fuzzed from its own OpenAPI schema with schemathesis: no input gives a 5xx.

Runs in-process (ASGI) against the real engine and model; requests may ask for at most 4 new
tokens here so that a few hundred generated cases stay quick.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from monitor.settings import Settings


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory):
    from monitor import service
    from monitor.api import create_app

    db = tmp_path_factory.mktemp("fuzz") / "aw.db"
    rt = service.start(Settings(database_url=f"sqlite:///{db}", batch_size=4))
    try:
        yield schemathesis.openapi.from_asgi("/openapi.json", create_app(rt.engine, rt.batcher, rt.store,
                                                                         rt.streams, max_new_tokens=4))
    finally:
        rt.close()


def test_no_input_gives_a_server_error(api_schema):
    """Every operation, ~40 generated cases each (valid and invalid bodies, headers, parameters)."""
    ops = [r.ok() for r in api_schema.get_all_operations()]
    assert {op.label for op in ops} >= {"POST /v1/chat/completions", "POST /v1/audit", "GET /v1/sessions",
                                        "GET /v1/sessions/{session_id}"}
    calls = {}
    for op in ops:
        @given(case=op.as_strategy())
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def fuzz(case):
            calls[op.label] = calls.get(op.label, 0) + 1
            case.call_and_validate(checks=[not_a_server_error], timeout=120)

        fuzz()
    print("fuzzed:", calls)
    assert sum(calls.values()) >= 100  # 4 operations x 40, at least
