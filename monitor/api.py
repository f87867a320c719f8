"""The HTTP API: OpenAI-compatible chat completions with per-token Assistant-Axis scores.

``POST /v1/chat/completions`` (streaming and not) works with the official
``openai`` client unchanged; each response carries an ``axiswatch`` object.
A conversation is a session: its id comes from the body's ``session_id``
(``extra_body={"session_id": ...}`` in the client) or the ``X-Session-Id``
header; without one a new session is created, returned in the header and the body.
Sampling is greedy unless the request sets ``temperature``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Any, Literal

from fastapi import FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from pydantic import BaseModel, ConfigDict, Field

from monitor.auth import OPEN_PATHS, allowed, bearer
from monitor.engine import ChatRequest, ChatResult, Engine
from monitor.errors import AxiswatchError, InputError
from monitor.settings import MAX_AUDIT_BYTES
from monitor.streams import REDIS_DOWN
from probes.audit import parse_record
from probes.generation import GenerationOptions

log = logging.getLogger(__name__)
MAX_NEW_TOKENS = 1024
MAX_BODY_BYTES = MAX_AUDIT_BYTES  # no request body may be larger (chat bodies are far smaller)


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class CompletionBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    messages: list[Message] = Field(min_length=1, max_length=512)
    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_NEW_TOKENS)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_NEW_TOKENS)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = None
    stream: bool = False
    session_id: str | None = Field(default=None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")
    policy: Literal["observe", "flag", "cap"] | None = None


class AckBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    by: str = Field(min_length=1, max_length=200, description="who acknowledges (an e-mail, a name, an on-call handle)")
    note: str = Field(default="", max_length=2000)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("axiswatch_requests", "chat completion requests", ["stream"], registry=self.registry)
        self.tokens = Counter("axiswatch_tokens_scored", "generated tokens scored", registry=self.registry)
        self.alerts = Counter("axiswatch_alerts", "drift alerts raised", ["level"], registry=self.registry)
        self.capped = Counter("axiswatch_sessions_capped", "sessions switched to capping", registry=self.registry)
        self.sessions = Gauge("axiswatch_sessions", "sessions known to this replica", registry=self.registry)
        self.lag = Gauge("axiswatch_stream_lag", "stream entries not yet delivered to a group", ["stream", "group"],
                         registry=self.registry)
        self.publish_errors = Gauge("axiswatch_publish_errors", "records the engine could not hand to the outbox "
                                    "(cumulative; each is logged)", registry=self.registry)
        self.redis_up = Gauge("axiswatch_redis_up", "1 when this scrape could read the stream lag from Redis",
                              registry=self.registry)
        self.outbox = Gauge("axiswatch_outbox", "the outbox between the engine and Redis: records queued in "
                            "memory, spilled to the store, replayed, live entries dropped, outages (cumulative), "
                            "and redis_down (1 while Redis is unreachable)", ["what"], registry=self.registry)

    def observe(self, res: ChatResult, stream: bool) -> None:
        self.requests.labels(str(stream).lower()).inc()
        self.tokens.inc(len(res.scores))
        for a in res.alerts:
            self.alerts.labels(a.level).inc()
        self.capped.inc(len(res.interventions))


class _Guard:
    """ASGI middleware in front of every route: API keys, then the body size limit.

    With ``keys``, every path but the health checks needs ``Authorization: Bearer <key>`` (401).
    A body over ``limit`` bytes gets 413, whether it declares its length or comes chunked (a chunked
    body is read up to the limit before the route sees it)."""

    def __init__(self, app, keys: tuple[str, ...], limit: int):
        self.app, self.keys, self.limit = app, keys, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.keys and scope["path"] not in OPEN_PATHS and not allowed(bearer(headers.get("authorization")),
                                                                          self.keys):
            reply = JSONResponse({"error": {"message": "missing or invalid API key: send 'Authorization: Bearer "
                                                       "<key>' with one of AXISWATCH_API_KEYS",
                                            "type": "authentication_error"}},
                                 status_code=401, headers={"WWW-Authenticate": "Bearer"})
            return await reply(scope, receive, send)
        too_large = _error(413, f"request body over the limit of {self.limit} bytes", "TooLarge")
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit() or int(length) > self.limit:
                return await too_large(scope, receive, send)
            return await self.app(scope, receive, send)
        if "chunked" not in headers.get("transfer-encoding", "").lower():
            return await self.app(scope, receive, send)
        parts, seen, more = [], 0, True
        while more:
            msg = await receive()
            if msg["type"] != "http.request":  # the client went away
                return
            parts.append(msg.get("body") or b"")
            seen += len(parts[-1])
            if seen > self.limit:
                return await too_large(scope, receive, send)
            more = msg.get("more_body", False)
        whole = [{"type": "http.request", "body": b"".join(parts), "more_body": False}]

        async def replay():
            return whole.pop() if whole else await receive()

        return await self.app(scope, replay, send)


_MESSAGE = {"type": "object", "required": ["role", "content"],
            "properties": {"role": {"type": "string", "enum": ["system", "user", "assistant"]},
                           "content": {"type": "string"}}}
_TURN = {"type": "object", "required": ["role", "content"],  # the paper's transcript JSON
         "properties": {"role": {"type": "string"}, "content": {"type": "string"}}}
_CONVERSATION = {"anyOf": [
    {"type": "object", "required": ["messages"],
     "properties": {"id": {"type": "string", "minLength": 1, "maxLength": 200},
                    "messages": {"type": "array", "items": _MESSAGE, "minItems": 1}}},
    {"type": "object", "required": ["conversation"],
     "properties": {"id": {"type": "string", "minLength": 1, "maxLength": 200},
                    "conversation": {"type": "array", "items": _TURN, "minItems": 1}}},
]}
# /v1/audit reads its body itself (one conversation, a list of them, or a bare message list); the schema
# says what it takes, so clients and the schema fuzzer see it
AUDIT_BODY = {"required": True, "content": {"application/json": {"schema": {"anyOf": [
    _CONVERSATION, {"type": "array", "items": _CONVERSATION, "minItems": 1},
    {"type": "array", "items": _MESSAGE, "minItems": 1}]}}}}


def _events(res: ChatResult) -> dict:
    return {"alerts": [a.to_dict() for a in res.alerts], "interventions": [i.to_dict() for i in res.interventions]}


def _error(status: int, message: str, kind: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status)


def create_app(engine: Engine, store=None, streams=None, api_keys: tuple[str, ...] = (),
               max_new_tokens: int = MAX_NEW_TOKENS) -> FastAPI:
    """The ASGI app. ``api_keys``: bearer tokens every endpoint but the health checks requires (none: open).
    ``max_new_tokens``: the most tokens one request may ask for (``AXISWATCH_MAX_NEW_TOKENS``).
    No CORS headers are sent: browsers on other origins cannot call the API."""
    app = FastAPI(title="axiswatch", version="0.1.0",
                  description="Persona-drift monitoring on the Assistant Axis (OpenAI-compatible).")
    metrics = Metrics()
    model_id = engine.model_id
    keys = tuple(api_keys)

    app.add_middleware(_Guard, keys=keys, limit=MAX_BODY_BYTES)

    @app.exception_handler(AxiswatchError)
    async def _axiswatch_error(_req: Request, e: AxiswatchError):
        return _error(e.http_status, str(e), type(e).__name__)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_req: Request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        status = 400 if first.get("type") == "json_invalid" else 422
        return _error(status, f"{where or 'body'}: {first.get('msg', 'invalid request')}", "invalid_request_error")

    def _request(body: CompletionBody, header_sid: str | None) -> ChatRequest:
        sid = body.session_id or header_sid
        if sid is not None and (len(sid) > 128 or not all(c.isalnum() or c in "_.:-" for c in sid)):
            raise InputError("X-Session-Id must be 1-128 characters of letters, digits, '_', '.', ':' or '-'")
        asked = body.max_completion_tokens or body.max_tokens
        if asked is not None and asked > max_new_tokens:
            raise InputError(f"max_tokens is {asked}; this server allows at most {max_new_tokens}")
        session = engine.session(sid, body.policy)
        opts = GenerationOptions(max_new_tokens=asked or min(256, max_new_tokens),
                                 temperature=body.temperature or 0.0, top_p=body.top_p or 1.0, seed=body.seed)
        return ChatRequest(session.id, [m.model_dump() for m in body.messages], opts, body.policy)

    def _usage(req: ChatRequest, res: ChatResult) -> dict:
        prompt = engine.backend.prompt_tokens(req.messages)
        return {"prompt_tokens": prompt, "completion_tokens": len(res.tokens), "total_tokens": prompt + len(res.tokens)}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: CompletionBody, x_session_id: str | None = Header(default=None)):
        # off the event loop: continuing a stored session reads it from the database
        req = await asyncio.to_thread(_request, body, x_session_id)
        cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        headers = {"X-Session-Id": req.session_id}
        if not body.stream:
            res: ChatResult = await asyncio.wrap_future(await asyncio.to_thread(engine.submit, req))
            metrics.observe(res, False)
            usage = await asyncio.to_thread(_usage, req, res)  # tokenising the prompt: off the event loop too
            return JSONResponse({
                "id": cid, "object": "chat.completion", "created": created, "model": model_id,
                "session_id": res.session_id,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": res.text},
                             "finish_reason": res.finish_reason}],
                "usage": usage,
                "axiswatch": {"session_id": res.session_id, "turn": res.turn, "layer": res.layer, "scores": res.scores,
                              "mean": res.mean, "state": res.state, "running": res.running, "drift": res.drift,
                              "reference": res.reference, "capped": res.capped, **_events(res)},
            }, headers=headers)

        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        req.on_token = lambda tok: loop.call_soon_threadsafe(q.put_nowait, tok)
        # submit off the event loop: opening a turn talks to Redis
        fut = asyncio.wrap_future(await asyncio.to_thread(engine.submit, req))
        fut.add_done_callback(lambda _f: q.put_nowait(None))

        def chunk(delta: dict, finish: str | None, extra: dict) -> str:
            return "data: " + json.dumps({"id": cid, "object": "chat.completion.chunk", "created": created,
                                          "model": model_id, "session_id": req.session_id,
                                          "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                                          "axiswatch": extra}) + "\n\n"

        async def events():
            yield chunk({"role": "assistant", "content": ""}, None, {"session_id": req.session_id})
            while (tok := await q.get()) is not None:
                yield chunk({"content": tok["token"]}, None, tok)
            try:
                res = fut.result()
            except Exception as e:  # noqa: BLE001 - the client gets an error event, then the end of the stream
                kind = type(e).__name__ if isinstance(e, AxiswatchError) else "server_error"
                msg = str(e) if isinstance(e, AxiswatchError) else "generation failed; see the server log"
                yield "data: " + json.dumps({"error": {"message": msg, "type": kind}}) + "\n\n"
                yield "data: [DONE]\n\n"
                return
            metrics.observe(res, True)
            yield chunk({}, res.finish_reason, {"session_id": res.session_id, "turn": res.turn, "layer": res.layer,
                                                "mean": res.mean, "state": res.state, "running": res.running,
                                                "drift": res.drift, "reference": res.reference,
                                                "capped": res.capped, **_events(res)})
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)

    @app.post("/v1/audit", openapi_extra={"requestBody": AUDIT_BODY})
    async def audit(request: Request, policy: Literal["observe", "flag", "cap"] | None = None):
        """Score finished conversations (the body of an ``axiswatch audit`` file: one conversation
        object or a list of them); each is stored as a session with source ``audit``. Every record is
        checked first: one bad record rejects the request and nothing is scored."""
        raw = await request.body()
        if len(raw) > MAX_AUDIT_BYTES:
            return _error(413, f"audit body is {len(raw)} bytes; the limit is {MAX_AUDIT_BYTES}", "TooLarge")
        try:
            doc = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InputError(f"the body is not UTF-8 JSON: {e}") from None
        single = isinstance(doc, dict) or (isinstance(doc, list) and doc and isinstance(doc[0], dict) and "role" in doc[0])
        records = [doc] if single else doc if isinstance(doc, list) else None
        if not records:
            raise InputError("expected a conversation object ({messages} or {conversation}) or a non-empty list of them")
        parsed = [parse_record(rec, f"record {i}") for i, rec in enumerate(records)]
        for i, (rid, _msgs) in enumerate(parsed):  # the id names a stored session: keep it printable
            if rid is not None and (not rid or len(rid) > 200 or any(ord(c) < 32 or 127 <= ord(c) < 160 for c in rid)):
                raise InputError(f"record {i}: 'id' must be 1-200 characters without control characters")
        for _rid, msgs in parsed:  # template problems surface before anything is stored
            engine.backend.validate_transcript(msgs)
        out = []
        for rid, msgs in parsed:
            out.append(await asyncio.to_thread(engine.score_transcript, rid, msgs, "audit", policy or "observe"))
        return out

    served = {"id": model_id, "object": "model", "created": int(time.time()), "owned_by": "axiswatch"}

    @app.get("/v1/models")
    async def list_models() -> Any:
        """The one model this replica serves (OpenAI clients list models before they chat)."""
        return {"object": "list", "data": [served]}

    @app.get("/v1/models/{model:path}")
    async def get_model(model: str) -> Any:
        return served if model == model_id else _error(404, f"no model {model!r}; this replica serves {model_id!r}",
                                                        "NotFound")

    @app.get("/v1/sessions")
    async def list_sessions(state: str | None = None, source: str | None = None, limit: int = 100) -> Any:
        _need_store()
        rows = await asyncio.to_thread(store.list_sessions, state=state, source=source, limit=min(max(limit, 1), 1000))
        return {"sessions": rows}

    @app.get("/v1/sessions/{session_id:path}/verify")
    async def verify_session(session_id: str) -> Any:
        """Check the session's hash chain against its stored records (``axiswatch sessions verify``)."""
        _need_store()
        return await asyncio.to_thread(store.verify_session, session_id)

    @app.get("/v1/sessions/{session_id:path}")  # an audit id may hold a "/"
    async def get_session(session_id: str) -> Any:
        _need_store()
        s = await asyncio.to_thread(store.get_session, session_id)
        if s is None:
            return _error(404, f"no session {session_id!r}", "NotFound")
        return s

    @app.get("/v1/alerts")
    async def list_alerts(session_id: str | None = None, level: str | None = None, limit: int = 100) -> Any:
        _need_store()
        rows = await asyncio.to_thread(store.list_alerts, session_id=session_id, level=level,
                                       limit=min(max(limit, 1), 1000))
        return {"alerts": rows}

    @app.post("/v1/alerts/{event_id}/acknowledge")
    async def acknowledge(event_id: str, body: AckBody) -> Any:
        """Acknowledge an alert: who and when are stored with it (in the session's hash chain)."""
        _need_store()
        return await asyncio.to_thread(store.acknowledge_alert, event_id, body.by, body.note)

    def _need_store():
        if store is None:
            raise AxiswatchError("this replica has no store configured")

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        checks = {"model": True}
        if streams is not None:
            try:
                checks["redis"] = streams.ping()
            except REDIS_DOWN:  # not ready
                checks["redis"] = False
        # Redis down does not make a replica unready: generation goes on and the outbox buffers
        box = engine.publisher
        checks["outbox"] = "buffering" if getattr(box, "down", False) else "ok"
        ok = checks["model"] and (checks.get("redis", True) or hasattr(box, "down"))
        return JSONResponse({"status": "ready" if ok else "not ready", "checks": checks}, status_code=200 if ok else 503)

    def _lag() -> dict[tuple[str, str], int]:
        return {(stream, group): lag["undelivered"] + lag["pending"]
                for stream in ("turns", "alerts", "interventions") for group, lag in streams.lag(stream).items()}

    @app.get("/metrics")
    async def prometheus():
        metrics.sessions.set(len(engine.sessions))
        metrics.publish_errors.set(engine.publish_errors)
        box = engine.publisher
        if hasattr(box, "stats"):
            for what in ("spilled", "replayed", "live_dropped", "outages", "lost"):
                metrics.outbox.labels(what).set(box.stats[what])
            metrics.outbox.labels("queued").set(box.queued)
            metrics.outbox.labels("redis_down").set(int(box.down))
        if streams is not None:  # off the event loop: a slow or dead Redis must not stall the streams
            try:
                lags = await asyncio.to_thread(_lag)
                metrics.redis_up.set(1)
            except REDIS_DOWN as e:  # the scrape still answers, with redis_up 0
                log.warning("metrics: stream lag unavailable: %s", e)
                lags = {}
                metrics.redis_up.set(0)
                metrics.lag.clear()  # no stale values while nothing could be read
            for (stream, group), n in lags.items():
                metrics.lag.labels(stream, group).set(n)
        return PlainTextResponse(generate_latest(metrics.registry).decode(), media_type="text/plain; version=0.0.4")

    return app
