"""Traces of the turns with the real OpenTelemetry SDK (its in-memory exporter): the span attributes built from a
turn, the engine's span per turn with its alert and capping events on the tests' tiny random Llama, the HTTP
API continuing a caller's ``traceparent`` (streaming or not), and the standard variables switching tracing on
and off. tests/test_tracing_phoenix.py sends them to a real Phoenix."""

from __future__ import annotations

import logging

import httpx
import pytest
from opentelemetry.context import Context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from serving import free_port, uvicorn_thread

from monitor import span_attributes as sa
from monitor.backends.hf import HFBackend
from monitor.drift import DriftConfig, DriftTracker, Thresholds
from monitor.engine import ChatRequest, Engine
from monitor.records import AlertEvent, InterventionRecord
from monitor.replay import tracked_score
from monitor.tracing import TurnTracer, attached, enabled, extract
from monitor.turns import ChatResult
from probes.artifacts import load_capping
from probes.generation import GenerationOptions

TRACE_ID, PARENT_ID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
OPTS = GenerationOptions(max_new_tokens=10)
# thresholds above every score: a session under policy cap alerts at its 3rd token and is capped from the 4th
HIGH = Thresholds(watch=1e4, warning=9e3, critical=8e3)
DRIFT = DriftConfig(alpha=0.5, min_tokens=3, cooldown_tokens=1000, baseline="absolute")
MSGS = [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Who are you?"}]


@pytest.fixture
def spans():
    """A real SDK provider exporting to memory, synchronously: (turn tracer, exporter)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield TurnTracer(provider.get_tracer("axiswatch-test")), exporter
    provider.shutdown()


def _plain(attributes) -> dict:
    """Span or event attributes as the attribute builders made them (the SDK keeps a list as a tuple)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in attributes.items()}


def _engine(tiny_lm, tiny_axis, tracer, policy="cap"):
    return Engine(HFBackend(tiny_lm, tiny_axis, load_capping(tiny_axis.path)), HIGH, drift=DRIFT, policy=policy,
                  tracer=tracer)


# ------------------------------------------------------------------------------------------ the attributes
def test_attributes_of_a_turn_follow_the_genai_conventions_and_leave_out_what_is_unknown():
    start = sa.start_attributes(session_id="s-1", turn=3, model_id="m", layer=12, policy="cap",
                                options=GenerationOptions(max_new_tokens=7, temperature=0.5, top_p=0.9), stream=False)
    assert start == {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "axiswatch", "gen_ai.system": "axiswatch",
                     "gen_ai.request.model": "m", "gen_ai.conversation.id": "s-1", "gen_ai.output.type": "text",
                     "gen_ai.request.max_tokens": 7, "gen_ai.request.temperature": 0.5, "gen_ai.request.top_p": 0.9,
                     "axiswatch.turn": 3, "axiswatch.layer": 12, "axiswatch.policy": "cap"}
    streamed = sa.start_attributes(session_id="s-1", turn=1, model_id="m", layer=1, policy="flag", replica="serve-1",
                                   options=GenerationOptions(seed=5), stream=True)
    assert streamed["gen_ai.request.stream"] is True and streamed["gen_ai.request.seed"] == 5
    assert streamed["axiswatch.replica"] == "serve-1"
    assert sa.span_name("HuggingFaceTB/SmolLM2") == "chat HuggingFaceTB/SmolLM2"

    alert = AlertEvent("s-1", 3, 4, "critical", -12.5, -9.0, detector="drift")
    iv = InterventionRecord("s-1", 3, 5, "L12-17_p90", layers=[12, 13])
    res = ChatResult("s-1", 3, 12, "Arr", ["A", "rr"], [1.0, -2.0], [1.0, -1.0], [False, True], "critical", -3.5,
                     True, "length", [alert], [iv], drift=-4.0, reference=0.5, detector="drift",
                     statistics={"drift": -4.0, "level": None})
    end = sa.end_attributes(res, model_id="m", min_drift=-4.5, input_tokens=21)
    assert end == {"gen_ai.response.model": "m", "gen_ai.response.finish_reasons": ["length"],
                   "gen_ai.usage.input_tokens": 21, "gen_ai.usage.output_tokens": 2,
                   "axiswatch.turn_mean": -0.5, "axiswatch.min_drift": -4.5, "axiswatch.drift": -4.0,
                   "axiswatch.running": -3.5, "axiswatch.reference": 0.5, "axiswatch.state": "critical",
                   "axiswatch.detector": "drift", "axiswatch.capped": True, "axiswatch.capped_tokens": 1,
                   "axiswatch.alerts": 1, "axiswatch.statistics.drift": -4.0}  # the level detector's None: left out
    empty = ChatResult("s-2", 1, 12, "", [], [], [], [], "ok", None, False, "")
    assert sa.end_attributes(empty, model_id="m", min_drift=None, input_tokens=None) == {
        "gen_ai.response.model": "m", "gen_ai.usage.output_tokens": 0, "axiswatch.state": "ok",
        "axiswatch.capped": False, "axiswatch.capped_tokens": 0, "axiswatch.alerts": 0}
    assert sa.alert_attributes(alert) == {"axiswatch.alert.level": "critical", "axiswatch.alert.score": -12.5,
                                          "axiswatch.alert.threshold": -9.0, "axiswatch.alert.token_index": 4,
                                          "axiswatch.alert.detector": "drift",
                                          "axiswatch.alert.event_id": alert.event_id}
    assert sa.capping_attributes(iv) == {"axiswatch.capping.token_index": 5, "axiswatch.capping.config_id": "L12-17_p90",
                                         "axiswatch.capping.layers": [12, 13]}


# ------------------------------------------------------------------------------------------ the engine
def _lowest_drift(res: ChatResult) -> float:
    """The lowest running drift over the turn, replayed token by token on a tracker of the same settings."""
    tracker = DriftTracker(HIGH, DRIFT, "cap")
    lowest = []
    for s, p in zip(res.scores, res.pre_cap_scores):
        tracker.update([tracked_score(s, p)], res.turn)
        if tracker.drift is not None:
            lowest.append(tracker.drift)
    return min(lowest)


def test_a_turn_is_one_span_with_an_event_per_alert_and_capping_switch(tiny_lm, tiny_axis, spans):
    tracer, exporter = spans
    eng = _engine(tiny_lm, tiny_axis, tracer)
    with attached(extract({"traceparent": TRACEPARENT})):
        res = eng.run_batch([ChatRequest("tr-1", MSGS, OPTS)])[0]
    assert res.alerts and res.interventions and res.capped
    (span,) = exporter.get_finished_spans()
    assert span.name == f"chat {eng.model_id}" and span.kind is SpanKind.INTERNAL
    # the caller's span is its parent, in the caller's trace
    assert span.parent is not None and span.parent.span_id == int(PARENT_ID, 16) and span.parent.is_remote
    assert span.context.trace_id == int(TRACE_ID, 16)
    a = dict(span.attributes)
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.provider.name"] == "axiswatch"
    assert a["gen_ai.request.model"] == a["gen_ai.response.model"] == eng.model_id
    assert a["gen_ai.conversation.id"] == "tr-1" and a["gen_ai.request.max_tokens"] == 10
    assert a["gen_ai.usage.output_tokens"] == len(res.tokens)
    assert a["gen_ai.usage.input_tokens"] == eng.backend.prompt_tokens(MSGS)
    assert a["gen_ai.response.finish_reasons"] == (res.finish_reason,)
    assert a["axiswatch.turn"] == res.turn == 1 and a["axiswatch.policy"] == "cap" and a["axiswatch.layer"] == eng.layer
    assert a["axiswatch.turn_mean"] == pytest.approx(res.mean) and a["axiswatch.state"] == res.state == "critical"
    assert a["axiswatch.capped"] is True and a["axiswatch.capped_tokens"] == sum(res.cap_flags)
    assert a["axiswatch.detector"] == res.detector and a["axiswatch.running"] == pytest.approx(res.running)
    assert a["axiswatch.min_drift"] == pytest.approx(_lowest_drift(res)) and a["axiswatch.min_drift"] <= res.drift
    assert a["axiswatch.alerts"] == len(res.alerts) and "axiswatch.replica" not in a  # an engine without a name
    alerts = [e for e in span.events if e.name == "axiswatch.alert"]
    caps = [e for e in span.events if e.name == "axiswatch.capping"]
    assert [_plain(e.attributes) for e in alerts] == [sa.alert_attributes(x) for x in res.alerts]
    assert alerts[0].attributes["axiswatch.alert.token_index"] == 2 and alerts[0].attributes["axiswatch.alert.level"] == "critical"
    assert [_plain(e.attributes) for e in caps] == [sa.capping_attributes(x) for x in res.interventions]
    assert caps[0].attributes["axiswatch.capping.token_index"] == 3
    # events carry the time they happened: within the span, in order
    assert span.start_time <= alerts[0].timestamp <= caps[0].timestamp <= span.end_time
    assert tracer.open_spans == 0

    # a turn submitted without a trace context starts a trace of its own; the session's next turn is turn 3
    exporter.clear()
    res2 = eng.submit(ChatRequest("tr-1", MSGS, OPTS)).result(120)
    (span2,) = exporter.get_finished_spans()
    assert span2.parent is None and span2.context.trace_id != int(TRACE_ID, 16)
    assert span2.attributes["axiswatch.turn"] == res2.turn == 3 and span2.attributes["axiswatch.capped"] is True
    assert not [e for e in span2.events if e.name == "axiswatch.capping"]  # capped from its first token: no switch


def test_several_sessions_in_one_batch_each_get_their_span_and_parent(tiny_lm, tiny_axis, spans):
    tracer, exporter = spans
    eng = _engine(tiny_lm, tiny_axis, tracer, policy="observe")
    other = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with attached(extract({"traceparent": TRACEPARENT})):
        first = eng.submit(ChatRequest("b-1", MSGS, OPTS))
    with attached(extract({"traceparent": other})):
        second = eng.submit(ChatRequest("b-2", MSGS, OPTS))
    first.result(120), second.result(120)
    by_session = {s.attributes["gen_ai.conversation.id"]: s for s in exporter.get_finished_spans()}
    assert by_session["b-1"].parent.span_id == int(PARENT_ID, 16)
    assert by_session["b-2"].parent.span_id == int("b7ad6b7169203331", 16)
    assert all(not s.events and s.attributes["axiswatch.policy"] == "observe" for s in by_session.values())


def test_a_failed_turn_ends_its_span_with_an_error(tiny_lm, tiny_axis, spans):
    tracer, exporter = spans
    eng = _engine(tiny_lm, tiny_axis, tracer)
    eng.submit(ChatRequest("ok-1", MSGS, OPTS)).result(60)
    eng.backend.close()  # the next turn opens, then the closed backend refuses its job
    with pytest.raises(RuntimeError, match="closed"):
        eng.submit(ChatRequest("err-1", MSGS, OPTS)).result(60)
    ok, span = exporter.get_finished_spans()
    assert ok.status.status_code is StatusCode.UNSET and "error.type" not in ok.attributes
    assert span.status.status_code is StatusCode.ERROR and span.attributes["error.type"] == "RuntimeError"
    assert [e.name for e in span.events] == ["exception"]
    assert span.attributes["gen_ai.conversation.id"] == "err-1" and tracer.open_spans == 0


# ------------------------------------------------------------------------------------------ the HTTP API
def test_the_api_continues_the_callers_traceparent_streaming_or_not(tiny_lm, tiny_axis, spans):
    tracer, exporter = spans
    from monitor.api import create_app

    eng = _engine(tiny_lm, tiny_axis, tracer)
    try:
        with uvicorn_thread(create_app(eng)) as url:
            body = {"messages": MSGS, "max_tokens": 6, "session_id": "api-tr"}
            plain = httpx.post(f"{url}/v1/chat/completions", json=body, headers={"traceparent": TRACEPARENT},
                               timeout=120)
            assert plain.status_code == 200, plain.text
            with httpx.stream("POST", f"{url}/v1/chat/completions", json={**body, "stream": True}, timeout=120,
                              headers={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                                       "tracestate": "vendor=1"}) as r:
                assert r.status_code == 200 and "[DONE]" in r.read().decode()
            # no traceparent (or a malformed one): a trace of the turn's own
            bare = httpx.post(f"{url}/v1/chat/completions", json=body, headers={"traceparent": "00-zz-01"}, timeout=120)
            assert bare.status_code == 200
    finally:
        eng.close()
    first, streamed, alone = exporter.get_finished_spans()
    usage = plain.json()["usage"]
    assert first.parent.span_id == int(PARENT_ID, 16) and first.context.trace_id == int(TRACE_ID, 16)
    assert first.attributes["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert first.attributes["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    assert first.attributes["axiswatch.turn"] == plain.json()["axiswatch"]["turn"]
    assert "gen_ai.request.stream" not in first.attributes and streamed.attributes["gen_ai.request.stream"] is True
    assert streamed.parent.span_id == int("b7ad6b7169203331", 16)
    assert streamed.context.trace_state.get("vendor") == "1"
    assert alone.parent is None and alone.context.trace_id not in (first.context.trace_id, streamed.context.trace_id)


def test_without_a_tracer_the_api_and_engine_trace_nothing(tiny_lm, tiny_axis, spans):
    _, exporter = spans
    eng = _engine(tiny_lm, tiny_axis, None)
    with attached(extract({"traceparent": TRACEPARENT})):
        assert eng.run_batch([ChatRequest("none-1", MSGS, OPTS)])[0].tokens
    assert eng.tracer is None and not exporter.get_finished_spans()
    assert extract({}) == Context() and extract({"traceparent": "garbage"}) == Context()


# ------------------------------------------------------------------------------------------ switching it on
def test_the_standard_variables_switch_tracing_on_and_off():
    assert not enabled({})
    assert enabled({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    assert enabled({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"})
    assert enabled({"OTEL_TRACES_EXPORTER": "console"})
    assert not enabled({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318", "OTEL_TRACES_EXPORTER": "none"})
    assert not enabled({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318", "OTEL_SDK_DISABLED": "true"})


def test_a_bad_or_dead_endpoint_is_logged_once_and_never_stops_a_turn(tiny_lm, tiny_axis, monkeypatch, caplog):
    from monitor.trace_export import from_env

    caplog.set_level(logging.INFO)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")  # no scheme: not a URL
    assert from_env() is None
    assert [r.message for r in caplog.records if "not an http(s) URL" in r.message]
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
    assert from_env() is None and "OTLP over HTTP (http/protobuf), not 'grpc'" in caplog.text
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_PROTOCOL")

    caplog.clear()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "aw-dead-collector")
    tracing = from_env()
    assert tracing is not None and tracing.provider.resource.attributes["service.name"] == "aw-dead-collector"
    eng = _engine(tiny_lm, tiny_axis, tracing.turns, policy="observe")
    try:
        for i in range(3):
            assert eng.run_batch([ChatRequest(f"dead-{i}", MSGS, OPTS)])[0].tokens
            tracing.flush(5)  # each export fails (flushing says only that it was tried in time)
    finally:
        tracing.close()
    ours = [r for r in caplog.records if r.name == "monitor.trace_export" and "could not export" in r.message]
    assert len(ours) == 1 and "127.0.0.1" in ours[0].message
    theirs = [r for r in caplog.records if r.name.startswith("opentelemetry.exporter") and r.levelno >= logging.ERROR]
    assert len(theirs) <= 1  # the exporter's own line for the first failure; later ones are silenced


def test_the_default_service_name_is_axiswatch(monkeypatch):
    from monitor.trace_export import from_env

    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    tracing = from_env()
    assert tracing is not None
    try:
        assert tracing.provider.resource.attributes["service.name"] == "axiswatch"
        assert tracing.where == "the console"
    finally:
        tracing.close()
