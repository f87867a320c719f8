"""Traces from vLLM: the plugin in an unchanged vLLM OpenAI server (its engine core) sends a span per turn, with
alert and capping events, continuing the caller's ``traceparent`` (read from ``vllm_xargs``). On the tests'
random Llama whose heads vLLM-CPU can run (``tp_model_dir``). Run from .venv-vllm (``make test-vllm``); the
spans go to a real Phoenix (tests/phoenix_server.py). ``serve``'s vllm backend is traced in
tests/test_vllm_backend.py, on that module's engine: an engine of its own, closed here, would tear vLLM's
process groups down under the engines the later test modules use."""

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
