"""vLLM as real servers: ``axiswatch serve --backend vllm`` and an unchanged vLLM OpenAI server with the
axiswatch plugin, driven over HTTP (the plugin by the official ``openai`` client); both record to a store
that ``axiswatch sessions show`` reads. Run from .venv-vllm (``make test-vllm``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from polling import wait_until
from serving import free_port, wait_http
from vllm_env import capping_at_the_monitor_layer, require_vllm

from monitor.backends.hf import HFBackend
from monitor.drift import DriftConfig, Thresholds
from monitor.engine import ChatRequest, Engine
from probes.generation import GenerationOptions

pytestmark = [pytest.mark.vllm, pytest.mark.smollm]  # the default model, in vLLM and serve processes
BIN = Path(sys.executable).parent
SCORE_TOL = 2e-3  # as in test_vllm_backend


def _stop(proc) -> str:
    proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out or ""


def _show(db, sid) -> dict | None:
    r = subprocess.run([str(BIN / "axiswatch"), "sessions", "show", sid, "--json", "--database-url", f"sqlite:///{db}"],
                       capture_output=True, text=True)
    return json.loads(r.stdout) if r.returncode == 0 else None


def test_serve_backend_vllm_short_request_overtakes_a_long_one(tmp_path):
    """Through `axiswatch serve --backend vllm`: an 8-token request sent while a long one generates comes back
    first (the hf backend's static batches made it wait for the whole batch); both are stored with scores."""
    require_vllm()
    db, port = tmp_path / "aw.db", free_port()
    env = {**os.environ, "AXISWATCH_DATABASE_URL": f"sqlite:///{db}", "AXISWATCH_PORT": str(port), "REDIS_URL": "",
           "AXISWATCH_VLLM_MEMORY_GB": "0.5", "AXISWATCH_VLLM_MAX_MODEL_LEN": "1024"}
    proc = subprocess.Popen([str(BIN / "axiswatch"), "serve", "--backend", "vllm"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/healthz", proc, timeout_s=240)
        done: dict[str, float] = {}
        replies: dict[str, dict] = {}

        def ask(name, text, n):
            r = httpx.post(f"{url}/v1/chat/completions", timeout=300,
                           json={"messages": [{"role": "user", "content": text}], "max_tokens": n,
                                 "session_id": f"cb-{name}"})
            r.raise_for_status()
            replies[name], done[name] = r.json(), time.monotonic()

        long = threading.Thread(target=ask, args=("long", "Count from 1 to 300, separated by commas.", 200))
        long.start()
        time.sleep(3)
        t0 = time.monotonic()
        ask("short", "Say hi.", 8)
        assert "long" not in done, "the long request ended first"
        short_s = done["short"] - t0
        long.join(300)
        assert done["long"] > done["short"]
        for name in ("long", "short"):
            ax = replies[name]["axiswatch"]
            assert ax["session_id"] == f"cb-{name}" and len(ax["scores"]) > 0
            n = len(ax["scores"])
            assert wait_until(lambda n=n, name=name: (s := _show(db, f"cb-{name}")) and
                              sum(len(t.get("scores") or []) for t in s["turns"]) == n, 60)
        assert len(replies["long"]["axiswatch"]["scores"]) > 50
        print(f"short request took {short_s:.1f} s while the long one generated")
    finally:
        out = _stop(proc)
    assert "backend vllm" in out


def test_plugin_in_an_unchanged_vllm_server(tmp_path, redis_url, lm, shipped):
    """`python -m vllm.entrypoints.openai.api_server $(axiswatch vllm-args)` with AXISWATCH_VLLM_PLUGIN=1, policy
    cap and thresholds every session crosses: the official openai client with a session id; `axiswatch sessions
    show` then finds every generated token with its score, the same tokens, scores, capping start and intervention
    as the hf engine under the same settings, and a request without a session id gets a session of its own."""
    require_vllm()
    from openai import OpenAI

    db, port = tmp_path / "plugin.db", free_port()
    capping = capping_at_the_monitor_layer(shipped)  # the shipped window starts below it: vLLM cannot cap with that
    capping.save(tmp_path / "capping")
    drift_env = {"AXISWATCH_POLICY": "cap", "AXISWATCH_CAPPING": str(tmp_path / "capping"),
                 "AXISWATCH_THRESHOLD_WATCH": "1e4", "AXISWATCH_THRESHOLD_WARNING": "9e3",
                 "AXISWATCH_THRESHOLD_CRITICAL": "8e3", "AXISWATCH_DRIFT_BASELINE": "absolute",
                 "AXISWATCH_EWMA_ALPHA": "0.5", "AXISWATCH_MIN_TOKENS": "4", "AXISWATCH_COOLDOWN_TOKENS": "1000"}
    env = {**os.environ, **drift_env, "AXISWATCH_VLLM_PLUGIN": "1", "REDIS_URL": redis_url,
           "AXISWATCH_DATABASE_URL": f"sqlite:///{db}", "AXISWATCH_VLLM_MEMORY_GB": "0.5",
           "AXISWATCH_VLLM_MAX_MODEL_LEN": "1024"}
    args = subprocess.run([str(BIN / "axiswatch"), "vllm-args"], env=env, capture_output=True, text=True, check=True)
    argv = args.stdout.split()
    # vLLM's default compiled mode: the monitor's op is inside the compiled graph
    assert "--no-enable-prefix-caching" in argv and "--enforce-eager" not in argv
    proc = subprocess.Popen([sys.executable, "-m", "vllm.entrypoints.openai.api_server", *argv, "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    msgs = [{"role": "user", "content": "Tell me about the ocean."}]
    try:
        wait_http(f"http://127.0.0.1:{port}/v1/models", proc, timeout_s=300)
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
        model = argv[argv.index("--served-model-name") + 1]
        r = client.chat.completions.create(model=model, messages=msgs, max_tokens=24, temperature=0,
                                           extra_body={"vllm_xargs": {"session_id": "plug-1"}})
        text = r.choices[0].message.content
        anon = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hello!"}],
                                              max_tokens=6, temperature=0)
        assert anon.choices[0].message.content
        s = wait_until(lambda: (s := _show(db, "plug-1")) and any(t["role"] == "assistant" for t in s["turns"]) and s,
                       60, "the plugin's turn in the store")
        # axiswatch's own clients work there as plain chat clients, say once that no scores come back, and
        # name their session so that the plugin stores it under that id
        base = f"http://127.0.0.1:{port}/v1"
        chat = subprocess.run([str(BIN / "axiswatch"), "chat", "--url", base, "--session", "plug-chat",
                               "--max-tokens", "6"], input="Hi\nAnd you?\n\n", env=env, capture_output=True,
                              text=True, timeout=300)
        assert chat.returncode == 0 and chat.stderr.count("sends no axiswatch data") == 1, chat.stderr
        demo = subprocess.run([str(BIN / "axiswatch"), "demo", "--url", base, "--max-tokens", "4"], env=env,
                              capture_output=True, text=True, timeout=600)
        assert demo.returncode == 0 and demo.stdout.count("sends no axiswatch data") == 1, demo.stdout + demo.stderr
        chatted = wait_until(lambda: (c := _show(db, "plug-chat")) and sum(t["role"] == "assistant"
                                                                            for t in c["turns"]) == 2 and c,
                             60, "the chat client's session in the plugin's store")
        assert all(t["scores"] for t in chatted["turns"] if t["role"] == "assistant")
    finally:
        out = _stop(proc)
    assert f"axiswatch plugin: scoring every token at layer {shipped.monitor_layer}" in out, out[-3000:]
    assert "in vLLM's compiled graph" in out, out[-3000:]
    # the same turn through the hf engine with the same settings
    th = Thresholds(watch=1e4, warning=9e3, critical=8e3)
    eng = Engine(HFBackend(lm, shipped, capping), th, policy="cap",
                 drift=DriftConfig(alpha=0.5, min_tokens=4, cooldown_tokens=1000, baseline="absolute"))
    ref = eng.submit(ChatRequest("ref", msgs, GenerationOptions(max_new_tokens=24))).result(120)
    user, reply = [t for t in s["turns"] if t["role"] == "user"], [t for t in s["turns"] if t["role"] == "assistant"]
    assert [u["text"] for u in user] == ["Tell me about the ocean."]
    assert len(reply) == 1 and reply[0]["text"] == text == ref.text
    assert reply[0]["tokens"] == ref.tokens and r.usage.completion_tokens >= len(ref.tokens)
    assert reply[0]["scores"] == pytest.approx(ref.scores, abs=SCORE_TOL)
    assert reply[0]["capped"] == ref.cap_flags and any(ref.cap_flags)
    assert reply[0]["pre_cap_scores"] == pytest.approx(ref.pre_cap_scores, abs=SCORE_TOL)
    assert [i["token_index"] for i in s["interventions"]] == [i.token_index for i in ref.interventions]
    assert s["state"] == ref.state and s["model_id"] == lm.model_id
    others = subprocess.run([str(BIN / "axiswatch"), "sessions", "list", "--json", "--database-url", f"sqlite:///{db}"],
                            capture_output=True, text=True, check=True).stdout.splitlines()
    ids = [json.loads(line)["id"] for line in others]
    assert "plug-1" in ids and "plug-chat" in ids and sum(i.startswith("demo-") for i in ids) == 3
    assert len(ids) == 6  # and the request without a session id: a session of its own


def test_plugin_stores_every_reply_when_vllm_is_stopped_as_the_last_one_arrives(tmp_path, lm):
    """vLLM's default shutdown (--shutdown-timeout 0) SIGTERMs and then kills its engine core at once, and
    the plugin's outbox, embedded Redis and persistence worker live there: 24 requests, 16 at a time, and
    SIGTERM the moment the last response arrives; every reply a client received is in the store."""
    require_vllm()
    from concurrent.futures import ThreadPoolExecutor

    from openai import OpenAI

    db, port = tmp_path / "stop.db", free_port()
    env = {**os.environ, "AXISWATCH_VLLM_PLUGIN": "1", "REDIS_URL": "", "AXISWATCH_DATABASE_URL": f"sqlite:///{db}",
           "AXISWATCH_VLLM_MEMORY_GB": "0.5", "AXISWATCH_VLLM_MAX_MODEL_LEN": "1024"}
    argv = subprocess.run([str(BIN / "axiswatch"), "vllm-args"], env=env, capture_output=True, text=True,
                          check=True).stdout.split()
    proc = subprocess.Popen([sys.executable, "-m", "vllm.entrypoints.openai.api_server", *argv, "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    model = argv[argv.index("--served-model-name") + 1]
    replies: dict[str, str] = {}
    try:
        wait_http(f"http://127.0.0.1:{port}/v1/models", proc, timeout_s=300)
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)

        def ask(i):
            sid = f"stop-{i}"
            r = client.chat.completions.create(model=model, max_tokens=12 + i % 5, temperature=0,
                                               messages=[{"role": "user", "content": f"Name a colour ({i})."}],
                                               extra_body={"vllm_xargs": {"session_id": sid}})
            replies[sid] = r.choices[0].message.content

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(ask, range(24)))
        proc.send_signal(signal.SIGTERM)  # as the last response arrives
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            _stop(proc)
    assert len(replies) == 24
    for sid, text in replies.items():
        s = _show(db, sid)
        reply = [t for t in (s or {}).get("turns", []) if t["role"] == "assistant"]
        assert reply and reply[0]["text"] == text and reply[0]["scores"], f"{sid}: the reply the client got is not stored"
