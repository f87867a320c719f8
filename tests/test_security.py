"""Security: API keys on every endpoint but the health checks, no CORS, request size limits,
no pickle loading anywhere, SQL only through the store."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from serving import uvicorn_thread

from monitor.auth import allowed, bearer, client_key, parse_keys
from monitor.errors import InputError
from monitor.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
KEY, OTHER, ADMIN = "k-" + "a" * 30, "k-" + "b" * 30, "k-" + "c" * 30


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_settings):
    """The service on the tests' tiny random Llama, with two API keys."""
    from monitor import service
    from monitor.api import create_app

    db = tmp_path_factory.mktemp("db") / "aw.db"
    rt = service.start(tiny_settings.with_(database_url=f"sqlite:///{db}", batch_size=2))
    try:
        with uvicorn_thread(create_app(rt.engine, rt.store, rt.streams, api_keys=(KEY, OTHER), admin_keys=(ADMIN,))) as url:
            yield url
    finally:
        rt.close()


GUARDED = [("POST", "/v1/chat/completions"), ("POST", "/v1/audit"), ("GET", "/v1/sessions"), ("GET", "/v1/sessions/x"),
           ("GET", "/v1/sessions/x/verify"), ("GET", "/v1/alerts"), ("POST", "/v1/alerts/x/acknowledge"),
           ("GET", "/v1/models"), ("GET", "/v1/models/x/y"), ("GET", "/metrics"), ("GET", "/openapi.json"),
           ("GET", "/docs"), ("POST", "/v1/sessions/purge"), ("POST", "/v1/sessions/x/erase")]


def test_the_guarded_list_covers_every_route():
    """A new endpoint must be added to GUARDED (or to the open health checks) to pass."""
    import re

    from monitor.api import create_app
    from monitor.auth import OPEN_PATHS

    def flat(routes):  # the app's own routes and those of the routers it includes (one per resource)
        for r in routes:
            inner = getattr(r, "original_router", None)
            yield from flat(inner.routes) if inner is not None else [r]

    app = create_app(type("E", (), {"model_id": "m"})())
    routes = {(m, re.sub(r"\{[^}]+\}", "x", r.path)) for r in flat(app.routes) for m in set(r.methods) - {"HEAD"}}
    covered = {(m, re.sub(r"/x(/y)?$", "/x", p)) for m, p in GUARDED} | {("GET", p) for p in OPEN_PATHS}
    assert routes - covered - {("GET", "/docs/oauth2-redirect"), ("GET", "/redoc")} == set()


@pytest.mark.parametrize("method,path", GUARDED)
def test_every_endpoint_but_health_needs_a_key(server, method, path):
    for headers in ({}, {"authorization": "Bearer wrong-key-wrong-key-wrong"}, {"authorization": f"Basic {KEY}"},
                    {"authorization": f"Bearer {KEY}x"}):
        r = httpx.request(method, server + path, headers=headers, json={})
        assert r.status_code == 401, (path, headers)
        assert r.headers["www-authenticate"] == "Bearer" and r.json()["error"]["type"] == "AuthenticationError"
        assert "AXISWATCH_API_KEY" in r.json()["error"]["message"]  # what a client sets (not the server's ..._KEYS)
        assert "AXISWATCH_API_KEYS" not in r.json()["error"]["message"]
        assert KEY not in r.text
    r = httpx.request(method, server + path, headers={"authorization": f"Bearer {OTHER}"}, json={})
    assert r.status_code != 401


def test_erasure_over_the_api_takes_a_key_and_keeps_the_chain_verifiable(server):
    """An operator erases a session through the API (with a key): the texts go, verify still passes and
    names the erasure; a purge with a dry run lists without erasing."""
    from polling import wait_until

    auth = {"authorization": f"Bearer {KEY}"}
    r = httpx.post(server + "/v1/chat/completions", headers={**auth, "X-Session-Id": "api-erase"}, timeout=60,
                   json={"messages": [{"role": "user", "content": "Tell me a secret."}], "max_tokens": 4})
    assert r.status_code == 200
    wait_until(lambda: len(httpx.get(server + "/v1/sessions/api-erase", headers=auth).json().get("turns", [])) == 2,
               what="the user turn and the reply in the store")
    assert httpx.post(server + "/v1/sessions/api-erase/erase", json={"by": "dpo", "reason": "x"}).status_code == 401
    admin = {"authorization": f"Bearer {ADMIN}"}
    for path, body in (("/v1/sessions/api-erase/erase", {"by": "dpo", "reason": "x"}),
                       ("/v1/sessions/purge", {"older_than": "1s", "by": "ops"})):
        r = httpx.post(server + path, headers=auth, json=body)  # a chat client's key may not erase
        assert r.status_code == 403 and r.json()["error"]["type"] == "ForbiddenError" and ADMIN not in r.text
    assert httpx.get(server + "/v1/sessions", headers=admin).status_code == 200  # an admin key is an API key too
    bad = httpx.post(server + "/v1/sessions/api-erase/erase", headers=admin, json={"by": "dpo"})
    assert bad.status_code == 422  # the reason is required: it is kept in the audit trail
    r = httpx.post(server + "/v1/sessions/api-erase/erase", headers=admin, json={"by": "dpo", "reason": "request 7"})
    assert r.status_code == 200 and r.json()["erased"] and r.json()["counts"]["turns"] == 2
    s = httpx.get(server + "/v1/sessions/api-erase", headers=auth).json()
    assert s["turns"] == [] and s["messages"] == {} and s["erasures"][0]["reason"] == "request 7"
    v = httpx.get(server + "/v1/sessions/api-erase/verify", headers=auth).json()
    assert v["ok"] and v["erasures"][0]["by"] == "dpo", v
    assert r.json()["redis"]["live"] == 1  # its live tail went too
    dry = httpx.post(server + "/v1/sessions/purge", headers=admin, json={"older_than": "1s", "by": "ops", "dry_run": True})
    assert dry.status_code == 200 and "api-erase" not in dry.json()["sessions"]  # erased already
    assert httpx.post(server + "/v1/sessions/purge", headers=admin, json={"older_than": "soon", "by": "ops"}).status_code == 422
    assert httpx.post(server + "/v1/sessions/nobody/erase", headers=admin, json={"by": "a", "reason": "b"}).status_code == 404


def test_health_checks_are_open(server):
    assert httpx.get(server + "/healthz").status_code == 200
    assert httpx.get(server + "/readyz").status_code == 200


def test_the_openai_client_authenticates_with_its_api_key(server):
    from openai import AuthenticationError, OpenAI

    r = OpenAI(base_url=server + "/v1", api_key=KEY).chat.completions.create(
        model="default", messages=[{"role": "user", "content": "Hi"}], max_tokens=3)
    assert r.model_extra["axiswatch"]["scores"]
    with pytest.raises(AuthenticationError):
        OpenAI(base_url=server + "/v1", api_key="nope").chat.completions.create(
            model="default", messages=[{"role": "user", "content": "Hi"}], max_tokens=3)


def test_no_cors_headers(server):
    pre = httpx.options(server + "/v1/chat/completions", headers={
        "origin": "https://evil.example", "access-control-request-method": "POST", "authorization": f"Bearer {KEY}"})
    got = httpx.get(server + "/v1/sessions", headers={"origin": "https://evil.example", "authorization": f"Bearer {KEY}"})
    for r in (pre, got):
        assert not any(h.startswith("access-control-") for h in r.headers)


def test_request_bodies_are_limited(server):
    from monitor.api import MAX_BODY_BYTES

    big = b"{" + b" " * MAX_BODY_BYTES + b"}"
    for path in ("/v1/chat/completions", "/v1/audit"):
        r = httpx.post(server + path, content=big, headers={"authorization": f"Bearer {KEY}",
                                                            "content-type": "application/json"})
        assert r.status_code == 413 and "limit" in r.json()["error"]["message"]


def test_chunked_bodies_are_limited_too(server):
    from monitor.api import MAX_BODY_BYTES

    def chunks():  # no Content-Length: the server counts what it receives
        for _ in range(MAX_BODY_BYTES // 65536 + 2):
            yield b" " * 65536

    r = httpx.post(server + "/v1/audit", content=chunks(), headers={"authorization": f"Bearer {KEY}",
                                                                    "content-type": "application/json"})
    assert r.status_code == 413


def test_key_parsing_and_comparison():
    assert parse_keys(None) == () and parse_keys(" , ") == ()
    assert parse_keys(f"{KEY}, {OTHER} ,") == (KEY, OTHER)
    with pytest.raises(InputError, match="key number 2 is shorter"):
        parse_keys(f"{KEY},short")
    assert bearer(f"Bearer {KEY}") == KEY and bearer(f"bearer  {KEY} ") == KEY
    assert bearer(None) is None and bearer("Basic abc") is None and bearer("Bearer") is None
    assert allowed(KEY, (OTHER, KEY)) and not allowed(KEY[:-1], (KEY,)) and not allowed(None, (KEY,))
    assert client_key({"AXISWATCH_API_KEYS": f"{KEY},{OTHER}"}) == KEY
    assert client_key({"AXISWATCH_API_KEY": OTHER, "AXISWATCH_API_KEYS": KEY}) == OTHER
    s = Settings.from_env({"AXISWATCH_API_KEYS": KEY})
    assert s.api_keys == (KEY,) and KEY not in repr(s)
    s = Settings.from_env({"AXISWATCH_API_KEYS": KEY, "AXISWATCH_ADMIN_API_KEYS": ADMIN})
    assert s.admin_keys == (ADMIN,) and ADMIN not in repr(s)
    with pytest.raises(InputError, match="AXISWATCH_ADMIN_API_KEYS: key number 1 is shorter"):
        Settings.from_env({"AXISWATCH_ADMIN_API_KEYS": "short"})


def _sources():
    for folder in ("probes", "monitor", "dashboard", "bench", "eval"):
        yield from (ROOT / folder).rglob("*.py")


def test_no_pickle_loading_anywhere():
    """Model and artifact files are untrusted input: nothing may unpickle them."""
    bad = []
    unpickle = (r"weights_only\s*=\s*False|pickle\.loads?\(|pickle\.Unpickler|from\s+pickle\s+import|cPickle|"
                r"dill\.load|joblib\.load|allow_pickle\s*=\s*True|pandas\.read_pickle|pd\.read_pickle")
    for path in _sources():
        text = path.read_text()
        for n, line in enumerate(text.splitlines(), 1):
            code = line.split("#", 1)[0]
            if re.search(unpickle, code):
                bad.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
        # every torch.load call, however it is wrapped over lines, names weights_only=True
        for m in re.finditer(r"torch\.load\s*\(", text):
            depth, end = 1, m.end()
            while depth and end < len(text):
                depth += {"(": 1, ")": -1}.get(text[end], 0)
                end += 1
            if not re.search(r"weights_only\s*=\s*True", text[m.end():end]):
                bad.append(f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1}: "
                           "torch.load without weights_only=True")
    assert not bad, bad


def test_sql_only_through_the_store():
    """The store package owns the database: no driver imports or raw SQL strings elsewhere."""
    bad = []
    for path in _sources():
        if (ROOT / "monitor" / "store") in path.parents:
            continue
        text = path.read_text()
        for pat, flags in ((r"^\s*(import|from) (sqlite3|psycopg)", re.M), (r"exec_driver_sql\(", 0),
                           (r"sqlalchemy import .*\btext\b", 0),  # the raw-SQL construct, not the Text type
                           (r"\.execute\(\s*f?[\"'](SELECT|INSERT|UPDATE|DELETE)", re.I)):
            bad += [f"{path.relative_to(ROOT)}: {m.group(0)}" for m in re.finditer(pat, text, flags)]
    assert not bad, bad
