"""End to end: the service as ``axiswatch serve`` assembles it (:func:`monitor.service.start`, the tests' tiny
random Llama, real HTTP), configured only by the standard OpenTelemetry variables, sends its turns' spans to a
real Arize Phoenix server (tests/phoenix_server.py); they are read back through Phoenix's REST API with their
GenAI and axiswatch attributes, alert and capping events, and the caller's trace as their parent."""

from __future__ import annotations

import uuid

import pytest
from phoenix_server import phoenix_server, project_spans
from serving import uvicorn_thread

TRACE_ID, CALLER_SPAN = "5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174"
MSGS = [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Who are you?"}]


@pytest.fixture(scope="module")
def phoenix(tmp_path_factory):
    with phoenix_server(tmp_path_factory.mktemp("phoenix")) as url:
        yield url


def test_a_session_s_turns_reach_phoenix_as_genai_spans_of_the_callers_trace(phoenix, tiny_settings, tmp_path,
                                                                            monkeypatch):
    from openai import OpenAI

    from monitor import service
    from monitor.api import create_app

    project = f"axiswatch-e2e-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", phoenix)  # the standard way: Phoenix's OTLP/HTTP at /v1/traces
    monkeypatch.setenv("OTEL_SERVICE_NAME", "axiswatch-e2e")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", f"openinference.project.name={project}")  # Phoenix's project
    # policy cap and thresholds above every score: the session alerts at its 3rd token and is capped from its 4th
    settings = tiny_settings.with_(database_url=f"sqlite:///{tmp_path / 'aw.db'}", policy="cap",
                                   thresholds=(1e4, 9e3, 8e3), drift_baseline="absolute", ewma_alpha=0.5,
                                   min_tokens=3, cooldown_tokens=1000)
    rt = service.start(settings)
    try:
        assert rt.tracing is not None and rt.tracing.where == f"{phoenix}/v1/traces"
        with uvicorn_thread(create_app(rt.engine, rt.store, rt.streams)) as url:
            client = OpenAI(base_url=f"{url}/v1", api_key="unused")
            caller = {"traceparent": f"00-{TRACE_ID}-{CALLER_SPAN}-01"}
            first = client.chat.completions.create(model="default", messages=MSGS, max_tokens=8,
                                                   extra_headers=caller, extra_body={"session_id": "e2e-1"})
            history = MSGS + [{"role": "assistant", "content": first.choices[0].message.content},
                              {"role": "user", "content": "And your ship?"}]
            second = client.chat.completions.create(model="default", messages=history, max_tokens=8,
                                                    extra_headers=caller, extra_body={"session_id": "e2e-1"})
    finally:
        rt.close()  # the runtime's close flushes the spans
    spans = project_spans(phoenix, project, 2)
    assert len(spans) == 2
    for span, reply in zip(spans, (first, second)):
        aw, a = reply.model_extra["axiswatch"], span["attributes"]
        assert span["name"] == f"chat {rt.engine.model_id}"
        assert span["context"]["trace_id"] == TRACE_ID and span["parent_id"] == CALLER_SPAN  # the caller's trace
        assert span["status_code"] == "UNSET"
        assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.provider.name"] == "axiswatch"
        assert a["gen_ai.request.model"] == a["gen_ai.response.model"] == rt.engine.model_id
        assert a["gen_ai.conversation.id"] == "e2e-1" and a["gen_ai.request.max_tokens"] == 8
        assert a["gen_ai.usage.input_tokens"] == reply.usage.prompt_tokens
        assert a["gen_ai.usage.output_tokens"] == reply.usage.completion_tokens == len(aw["scores"])
        assert a["gen_ai.response.finish_reasons"] == [reply.choices[0].finish_reason]
        assert a["axiswatch.turn"] == aw["turn"] and a["axiswatch.policy"] == "cap"
        assert a["axiswatch.turn_mean"] == pytest.approx(aw["mean"]) and a["axiswatch.state"] == aw["state"]
        assert a["axiswatch.capped"] is aw["capped"] is True and a["axiswatch.detector"] == aw["detector"]
        assert a["axiswatch.min_drift"] <= aw["drift"] and a["axiswatch.layer"] == aw["layer"]
        assert a["axiswatch.replica"] == rt.engine.replica
        alerts = [e["attributes"] for e in span["events"] if e["name"] == "axiswatch.alert"]
        caps = [e["attributes"] for e in span["events"] if e["name"] == "axiswatch.capping"]
        assert [(x["axiswatch.alert.event_id"], x["axiswatch.alert.level"], x["axiswatch.alert.token_index"])
                for x in alerts] == [(x["event_id"], x["level"], x["token_index"]) for x in aw["alerts"]]
        assert [x["axiswatch.alert.score"] for x in alerts] == pytest.approx([x["score"] for x in aw["alerts"]])
        assert [x["axiswatch.alert.threshold"] for x in alerts] == pytest.approx([x["threshold"] for x in aw["alerts"]])
        assert [(x["axiswatch.capping.token_index"], x["axiswatch.capping.config_id"]) for x in caps] == \
            [(x["token_index"], x["config_id"]) for x in aw["interventions"]]
    # the first turn alerted and switched capping on (from the token after the alert); the second was capped throughout
    a1 = spans[0]["attributes"]
    assert [e["name"] for e in spans[0]["events"]] == ["axiswatch.alert", "axiswatch.capping"]
    assert spans[0]["events"][0]["attributes"]["axiswatch.alert.token_index"] == 2
    assert spans[0]["events"][1]["attributes"]["axiswatch.capping.token_index"] == 3
    assert a1["axiswatch.turn"] == 1 and spans[1]["attributes"]["axiswatch.turn"] == 3
    assert not [e for e in spans[1]["events"] if e["name"] == "axiswatch.capping"]
    assert spans[0]["context"]["span_id"] != spans[1]["context"]["span_id"]
