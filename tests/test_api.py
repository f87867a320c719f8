"""The HTTP API over real HTTP: uvicorn, the official openai client, embedded Redis, SQLite; the service runs
the tests' tiny random Llama."""

from __future__ import annotations

import json

import httpx
import pytest
from polling import wait_until
from serving import uvicorn_thread


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_settings):
    from monitor import service
    from monitor.api import create_app

    db = tmp_path_factory.mktemp("db") / "aw.db"
    rt = service.start(tiny_settings.with_(database_url=f"sqlite:///{db}", batch_size=4))
    try:
        with uvicorn_thread(create_app(rt.engine, rt.store, rt.streams)) as url:
            yield {"url": url, "rt": rt}
    finally:
        rt.close()


@pytest.fixture
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server["url"] + "/v1", api_key="unused")


MSGS = [{"role": "user", "content": "What is the capital of France?"}]


def test_non_streaming_with_the_openai_client(client, server):
    r = client.chat.completions.create(model="default", messages=MSGS, max_tokens=8, extra_body={"session_id": "api-1"})
    aw = r.model_extra["axiswatch"]
    assert aw["session_id"] == "api-1" and aw["turn"] == 1 and aw["layer"] == server["rt"].engine.layer
    assert len(aw["scores"]) == r.usage.completion_tokens > 0
    assert aw["mean"] == pytest.approx(sum(aw["scores"]) / len(aw["scores"]))
    assert aw["state"] in ("ok", "watch", "warning", "critical") and aw["capped"] is False
    assert isinstance(aw["running"], float)
    assert r.choices[0].message.content and r.choices[0].finish_reason in ("stop", "length")
    # the worker persists the turn: every scored token is in the store
    store = server["rt"].store
    s = wait_until(lambda: store.get_session("api-1") if store.token_count("api-1") == len(aw["scores"]) else None)
    assert [t["role"] for t in s["turns"]] == ["user", "assistant"]
    assert s["turns"][1]["scores"] == pytest.approx(aw["scores"], abs=1e-4)
    got = httpx.get(server["url"] + "/v1/sessions/api-1").json()
    assert got["id"] == "api-1" and len(got["turns"]) == 2
    assert got["policy"] == server["rt"].engine.policy  # the deployment's, recorded though it never alerted
    assert any(x["id"] == "api-1" for x in httpx.get(server["url"] + "/v1/sessions").json()["sessions"])


def test_streaming_matches_non_streaming(client):
    plain = client.chat.completions.create(model="default", messages=MSGS, max_tokens=8, extra_body={"session_id": "api-2"})
    chunks = list(client.chat.completions.create(model="default", messages=MSGS, max_tokens=8, stream=True,
                                                 extra_body={"session_id": "api-3"}))
    tokens = [c.model_extra["axiswatch"] for c in chunks if c.choices[0].delta.content]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == plain.choices[0].message.content
    assert [t["token_index"] for t in tokens] == list(range(len(tokens)))
    assert [t["score"] for t in tokens] == pytest.approx(plain.model_extra["axiswatch"]["scores"], abs=1e-4)
    assert all(t["session_id"] == "api-3" and "state" in t and "capped" in t for t in tokens)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_new_session_id_is_returned(client):
    raw = client.chat.completions.with_raw_response.create(model="default", messages=MSGS, max_tokens=2)
    sid = raw.headers["x-session-id"]
    assert sid.startswith("sess_") and raw.parse().model_extra["session_id"] == sid
    # the header carries a session too
    raw2 = client.chat.completions.with_raw_response.create(model="default", messages=MSGS, max_tokens=2,
                                                             extra_headers={"X-Session-Id": "hdr-1"})
    assert raw2.headers["x-session-id"] == "hdr-1"


def test_bad_requests_are_4xx(server):
    url = server["url"] + "/v1/chat/completions"
    empty = httpx.post(url, json={"messages": []})
    assert empty.status_code == 422 and empty.json()["error"]["type"] == "InputError"
    assert "messages" in empty.json()["error"]["message"]
    assert httpx.post(url, json={"messages": [{"role": "wizard", "content": "x"}]}).status_code == 422
    assert httpx.post(url, json={"messages": MSGS, "max_tokens": 0}).status_code == 422
    r = httpx.post(url, json={"messages": MSGS}, headers={"X-Session-Id": "bad id!"})
    assert r.status_code == 422 and "X-Session-Id" in r.json()["error"]["message"]
    assert httpx.post(url, content=b"\xff\xfe not json", headers={"content-type": "application/json"}).status_code == 400
    assert httpx.get(server["url"] + "/v1/sessions/nope").status_code == 404


def test_models_lists_the_served_model(server, client):
    """OpenAI clients (and tools built on them) list models before they chat."""
    served = server["rt"].engine.model_id
    assert [m.id for m in client.models.list()] == [served]
    assert client.models.retrieve(served).id == served  # ids with a slash work too
    r = httpx.get(server["url"] + "/v1/models/gpt-4")
    assert r.status_code == 404 and served in r.json()["error"]["message"]


def test_audit_endpoint(server):
    conv = {"id": "audit-api-1", "messages": [{"role": "user", "content": "Hi"},
                                              {"role": "assistant", "content": "Hello! How can I help you today?"}]}
    r = httpx.post(server["url"] + "/v1/audit", json=[conv], timeout=60)
    assert r.status_code == 200, r.text
    out = r.json()[0]
    assert out["id"] == "audit-api-1" and out["turns"][0]["index"] == 1
    assert len(out["turns"][0]["scores"]) == len(out["turns"][0]["tokens"]) > 0
    store = server["rt"].store
    s = wait_until(lambda: store.get_session("audit-api-1"))
    assert s["source"] == "audit"
    bad = httpx.post(server["url"] + "/v1/audit", json=[conv, {"messages": "nope"}])
    assert bad.status_code == 422 and "record 1" in bad.json()["error"]["message"]
    assert httpx.post(server["url"] + "/v1/audit", content=b"\xff", headers={"content-type": "application/json"}).status_code == 422


def test_health_ready_metrics(server):
    assert httpx.get(server["url"] + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(server["url"] + "/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["redis"] is True
    m = httpx.get(server["url"] + "/metrics").text
    assert "axiswatch_tokens_scored_total" in m and "axiswatch_redis_up 1.0" in m
    # one sample per stream and group, read from Redis (the HELP line alone would not do)
    assert 'axiswatch_stream_lag{group="persist",stream="turns"}' in m
    assert "axiswatch_publish_errors 0.0" in m


def test_chat_command_against_the_server(server):
    import subprocess
    import sys
    from pathlib import Path

    exe = str(Path(sys.executable).parent / "axiswatch")
    r = subprocess.run([exe, "chat", "--url", server["url"] + "/v1", "--session", "chat-http", "--max-tokens", "6"],
                       input="Who are you?\nAnd now?\n\n", capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("assistant> ") == 2 and r.stdout.count("] state ") == 2
    assert "session chat-http" in r.stdout
    store = server["rt"].store
    s = wait_until(lambda: store.get_session("chat-http") if store.token_count("chat-http") > 0 and
                 len(store.get_session("chat-http")["turns"]) == 4 else None)
    assert [t["role"] for t in s["turns"]] == ["user", "assistant", "user", "assistant"]


def test_inputs_acknowledgements_and_the_chain_over_http(client, server):
    from monitor.conversation import walk
    from monitor.records import AlertEvent

    system = {"role": "system", "content": "You are Seraphine, an ancient oracle."}
    client.chat.completions.create(model="default", messages=[system, *MSGS], max_tokens=4,
                                   extra_body={"session_id": "api-ack"})
    store, url = server["rt"].store, server["url"]
    got = wait_until(lambda: (d := httpx.get(f"{url}/v1/sessions/api-ack").json()).get("turns") and d)
    reply = next(t for t in got["turns"] if t["role"] == "assistant")
    assert [m["content"] for m in walk(reply["input_head"], got["messages"])] == [system["content"], MSGS[0]["content"]]
    assert got["peak_state"] in ("ok", "watch", "warning", "critical") and got["open_alerts"] == 0
    store.write(alerts=[AlertEvent("api-ack", 1, 2, "warning", -40.0, -38.9, event_id="evt_api_ack")])
    r = httpx.post(f"{url}/v1/alerts/evt_api_ack/acknowledge", json={"by": "oncall", "note": "on it"})
    assert r.status_code == 200 and r.json()["by"] == "oncall"
    a = httpx.get(f"{url}/v1/alerts", params={"session_id": "api-ack"}).json()["alerts"][0]
    assert a["status"] == "acknowledged" and a["acknowledged_by"] == "oncall"
    assert httpx.post(f"{url}/v1/alerts/evt_nope/acknowledge", json={"by": "oncall"}).status_code == 404
    assert httpx.post(f"{url}/v1/alerts/evt_api_ack/acknowledge", json={"by": ""}).status_code == 422
    v = httpx.get(f"{url}/v1/sessions/api-ack/verify").json()
    assert v["ok"] and v["links"] >= 4 and v["session_id"] == "api-ack"  # turns, context, alert, acknowledgement


# ---------------------------------------------------------------- audits: one verdict, never a stale one
CONV = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help you today?"},
        {"role": "user", "content": "Tell me a secret."}, {"role": "assistant", "content": "I am the voice in the well."}]


def test_an_audit_sent_again_gets_its_verdict_and_another_text_under_its_id_is_refused(server):
    url = server["url"] + "/v1/audit"
    first = httpx.post(url, json={"id": "audit-again", "messages": CONV}, params={"policy": "flag"}, timeout=60)
    assert first.status_code == 200, first.text
    again = httpx.post(url, json={"id": "audit-again", "messages": CONV}, params={"policy": "flag"}, timeout=60)
    assert again.status_code == 200 and again.json() == first.json()  # the same verdict, not an empty one
    assert [t["index"] for t in again.json()[0]["turns"]] == [1, 3] and all("state" in t for t in again.json()[0]["turns"])
    changed = CONV[:3] + [{"role": "assistant", "content": "I am only an assistant."}]
    r = httpx.post(url, json={"id": "audit-again", "messages": changed}, timeout=60)
    assert r.status_code == 409 and r.json()["error"]["type"] == "ConflictError"
    assert "'audit-again'" in r.json()["error"]["message"] and "message 3 differs" in r.json()["error"]["message"]
    store = server["rt"].store
    s = wait_until(lambda: (s := store.get_session("audit-again")) and len(s["turns"]) == 4 and s)
    assert s["turns"][3]["text"] == CONV[3]["content"]  # the stored record is the first text, and says so
    longer = CONV + [{"role": "user", "content": "More?"}, {"role": "assistant", "content": "No more."}]
    grown = httpx.post(url, json={"id": "audit-again", "messages": longer}, params={"policy": "flag"}, timeout=60)
    assert grown.status_code == 200 and [t["index"] for t in grown.json()[0]["turns"]] == [1, 3, 5]


def test_the_audit_endpoint_answers_what_the_audit_command_prints(server, tiny_env, tmp_path):
    """One serialisation: `axiswatch audit --json` and `POST /v1/audit?policy=flag` on the same records."""
    from click.testing import CliRunner

    from monitor.cli import cli

    records = [{"id": "same-1", "messages": CONV}, {"id": "same-2", "conversation": CONV[:2]}]
    path = tmp_path / "two.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    r = CliRunner().invoke(cli, ["audit", str(path), "--json"], env=tiny_env)
    assert r.exit_code == 0, r.output
    printed = [json.loads(x) for x in r.output.splitlines()]
    api = httpx.post(server["url"] + "/v1/audit", content=path.read_bytes(), params={"policy": "flag"}, timeout=60)
    assert api.status_code == 200, api.text  # a JSON-lines body, as the command reads files
    assert api.json() == printed
    assert set(printed[0]) == {"id", "model", "layer", "turns", "state", "running", "drift", "detector", "statistics",
                               "alerts"}
    assert set(printed[0]["turns"][0]) == {"index", "role", "mean", "scores", "tokens", "state"}


# ---------------------------------------------------------------- what clients send
def test_openai_content_parts_are_read_as_text_and_other_parts_refused(server):
    parts = [{"type": "text", "text": "What is the capital"}, {"type": "text", "text": "of France?"}]
    r = httpx.post(server["url"] + "/v1/chat/completions", json={"messages": [{"role": "user", "content": parts}],
                                                                 "max_tokens": 4, "session_id": "parts-1"}, timeout=60)
    assert r.status_code == 200, r.text
    s = wait_until(lambda: server["rt"].store.get_session("parts-1"))
    assert s["turns"][0]["text"] == "What is the capital\nof France?"
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    bad = httpx.post(server["url"] + "/v1/chat/completions",
                     json={"messages": [{"role": "user", "content": [parts[0], image]}], "session_id": "parts-2"})
    assert bad.status_code == 422 and bad.json()["error"]["type"] == "InputError"
    assert bad.json()["error"]["message"].startswith("messages.0 content part 1 is a 'image_url' part: only text parts")
    assert server["rt"].store.get_session("parts-2") is None and "parts-2" not in server["rt"].engine.sessions
    audited = httpx.post(server["url"] + "/v1/audit", json={"id": "parts-audit", "messages": [
        {"role": "user", "content": parts}, {"role": "assistant", "content": [{"type": "text", "text": "Paris."}]}]})
    assert audited.status_code == 200 and audited.json()[0]["turns"][0]["index"] == 1


def test_errors_say_what_and_where_and_name_their_class(server):
    u = server["url"]
    r = httpx.post(u + "/v1/chat/completions", content=b'{"messages": [{"role": "user",\n "content": "Hi"},]}',
                   headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "InputError"
    assert r.json()["error"]["message"].startswith("the body is not valid JSON: ") and "at line 2 column" in \
        r.json()["error"]["message"]
    lines = httpx.post(u + "/v1/audit", content=b'{"id": "jl-1", "messages": [{"role": "user", "content": "Hi"}, '
                        b'{"role": "assistant", "content": "Hello"}]}\n{"broken',
                       headers={"content-type": "application/json"})
    assert lines.status_code == 422 and "body line 2: invalid JSON" in lines.json()["error"]["message"]
    for path in ("/v1/sessions/nobody", "/v1/models/gpt-4"):
        r = httpx.get(u + path)
        assert r.status_code == 404 and r.json()["error"]["type"] == "NotFoundError", path
