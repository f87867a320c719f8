"""The commands that talk to a running server (`chat --url`, `demo --url`): against a plain OpenAI-compatible
server that sends no axiswatch data (as an unchanged vLLM server with the plugin answers; tests/test_vllm_serving.py
runs them against the real one), against a server that is down, and their options checked before anything loads."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from serving import free_port, uvicorn_thread

from monitor.cli import cli

AXISWATCH = str(Path(sys.executable).parent / "axiswatch")
REPLY = ["Hello", " there", "."]


@pytest.fixture(scope="module")
def plain():
    """An OpenAI-compatible server that answers every chat with REPLY and no axiswatch object; it keeps the
    request bodies it got."""
    app, bodies = FastAPI(), []

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": "plain-model", "object": "model"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        bodies.append(body)
        if not body.get("stream"):
            return {"id": "c1", "object": "chat.completion", "model": "plain-model",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(REPLY)},
                                 "finish_reason": "stop"}]}

        def events():
            for k, piece in enumerate(REPLY):
                delta = {"content": piece, **({"role": "assistant"} if k == 0 else {})}
                yield "data: " + json.dumps({"choices": [{"index": 0, "delta": delta, "finish_reason": None}]}) + "\n\n"
            yield "data: " + json.dumps({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}) + "\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    with uvicorn_thread(app) as url:
        yield SimpleNamespace(url=url + "/v1", bodies=bodies)


def test_chat_against_a_server_without_axiswatch_data(plain):
    plain.bodies.clear()
    r = CliRunner().invoke(cli, ["chat", "--url", plain.url, "--session", "plain-1", "--max-tokens", "8"],
                           input="Hi\nAnd again\n\n")
    assert r.exit_code == 0, r.output
    assert r.output.count("Hello there.") == 2 and r.output.count("sends no axiswatch data") == 1
    assert "axiswatch sessions show plain-1" in r.output
    # the session is named for axiswatch serve and for the vLLM plugin alike
    assert [(b["session_id"], b["vllm_xargs"]["session_id"]) for b in plain.bodies] == [("plain-1", "plain-1")] * 2
    assert plain.bodies[1]["messages"][-2] == {"role": "assistant", "content": "Hello there."}


def test_demo_against_a_server_without_axiswatch_data(plain):
    r = CliRunner().invoke(cli, ["demo", "--url", plain.url, "--max-tokens", "4"])
    assert r.exit_code == 0, r.output
    assert "monitor at " + plain.url + ": plain-model" in r.output and r.output.count("sends no axiswatch data") == 1
    replies = [x for x in r.output.splitlines() if " mean " in x]
    assert replies and all("mean    -   [" in x and "alerts unknown" in x for x in replies)


@pytest.mark.parametrize("command", [["chat", "--session", "down-1"], ["demo"]])
def test_a_client_against_a_server_that_is_down_says_so_in_one_line(command):
    url = f"http://127.0.0.1:{free_port()}/v1"
    r = subprocess.run([AXISWATCH, *command, "--url", url], input="Hi\n\n", capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [f"error: cannot reach the server at {url} (ConnectError: "
                                             f"{r.stderr.split('ConnectError: ')[1].split(')')[0]}); is it running "
                                             "there ('axiswatch serve'), and is the URL its /v1 base?"]


def test_max_tokens_over_the_limit_is_refused_before_the_model_loads():
    t0 = time.monotonic()
    r = subprocess.run([AXISWATCH, "chat", "--max-tokens", "100000"], input="Hi\n\n", capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1 and r.stdout == ""  # no session line: nothing was read, no model loaded
    assert r.stderr.strip() == ("error: --max-tokens 100000 is over this deployment's limit of 1024 tokens a reply "
                                "(AXISWATCH_MAX_NEW_TOKENS)")
    assert time.monotonic() - t0 < 20
    r = CliRunner().invoke(cli, ["generate", "--input", "nowhere.jsonl", "--max-tokens", "0"])
    assert r.exit_code == 2 and "--max-tokens" in r.output  # below 1: click's own usage error, before any file


@pytest.mark.parametrize("command", [["chat"], ["demo"], ["generate"], ["calibrate-alerts"], ["evaluate-steering"]])
def test_every_generating_command_calls_it_max_tokens(command):
    out = CliRunner().invoke(cli, [*command, "--help"]).output
    assert "--max-tokens" in out and "--max-new-tokens" not in out


def test_the_old_spelling_max_new_tokens_still_works():
    r = CliRunner().invoke(cli, ["generate", "--input", "nowhere.jsonl", "--max-new-tokens", "0"])
    assert r.exit_code == 2 and "--max-tokens" in r.output  # the same option, checked the same way


def test_the_banner_of_a_server_with_api_keys_sends_a_key(capsys):
    from monitor.cli.serve import _banner
    from monitor.settings import Settings

    rt = SimpleNamespace(engine=SimpleNamespace(model_id="m", layer=3, policy="flag", backend=SimpleNamespace(name="hf")),
                         redis_url="redis://x", store=SimpleNamespace(url="sqlite:///x.db"))
    _banner(Settings(api_keys=("k" * 32,), host="0.0.0.0", port=8123), rt)
    out = capsys.readouterr().out
    assert "API keys required" in out and "curl -s http://127.0.0.1:8123/v1/chat/completions" in out
    assert '-H "authorization: Bearer $AXISWATCH_API_KEY"' in out and "AXISWATCH_API_KEY set to one of" in out
    _banner(Settings(port=8123), rt)
    open_out = capsys.readouterr().out
    assert "authorization" not in open_out and "no API keys" in open_out
