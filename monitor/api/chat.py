"""``POST /v1/chat/completions`` (streaming and not) and the OpenAI model listing.

A conversation is a session: its id comes from the body's ``session_id`` (``extra_body`` in the
OpenAI client) or the ``X-Session-Id`` header; without one a new session is created, returned in the
header and the body. Sampling is greedy unless the request sets ``temperature``. Each response
carries an ``axiswatch`` object. Where tracing is on, the turn's span continues the request's W3C
``traceparent`` (:mod:`monitor.tracing`).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any, Literal

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from monitor.api.context import ApiContext, Ctx
from monitor.engine import ChatRequest, ChatResult
from monitor.errors import AxiswatchError, InputError, NotFoundError, ServerError
from monitor.tracing import attached, extract
from probes.generation import GenerationOptions
from probes.models import content_text

MAX_NEW_TOKENS = 1024

router = APIRouter()


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    # a string, or OpenAI content parts: text parts are joined (probes.models.content_text), others refused
    content: str | list[dict[str, Any]]


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


def _events(res: ChatResult) -> dict:
    return {"alerts": [a.to_dict() for a in res.alerts], "interventions": [i.to_dict() for i in res.interventions]}


def _request(ctx: ApiContext, body: CompletionBody, header_sid: str | None) -> ChatRequest:
    sid = body.session_id or header_sid
    if sid is not None and (len(sid) > 128 or not all(c.isalnum() or c in "_.:-" for c in sid)):
        raise InputError("X-Session-Id must be 1-128 characters of letters, digits, '_', '.', ':' or '-'")
    asked = body.max_completion_tokens or body.max_tokens
    if asked is not None and asked > ctx.max_new_tokens:
        raise InputError(f"max_tokens is {asked}; this server allows at most {ctx.max_new_tokens}")
    messages = [{"role": m.role, "content": content_text(m.content, f"messages.{i}")} for i, m in enumerate(body.messages)]
    session = ctx.engine.session(sid, body.policy)
    opts = GenerationOptions(max_new_tokens=asked or min(256, ctx.max_new_tokens),
                             temperature=body.temperature or 0.0, top_p=body.top_p or 1.0, seed=body.seed)
    return ChatRequest(session.id, messages, opts, body.policy)


def _usage(ctx: ApiContext, req: ChatRequest, res: ChatResult) -> dict:
    prompt = ctx.engine.backend.prompt_tokens(req.messages)
    return {"prompt_tokens": prompt, "completion_tokens": len(res.tokens), "total_tokens": prompt + len(res.tokens)}


@router.post("/v1/chat/completions")
async def chat_completions(body: CompletionBody, ctx: Ctx, request: Request,
                           x_session_id: str | None = Header(default=None)):
    # off the event loop: continuing a stored session reads it from the database
    req = await asyncio.to_thread(_request, ctx, body, x_session_id)
    cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
    headers = {"X-Session-Id": req.session_id}
    # the caller's trace (W3C traceparent), which the turn's span continues where tracing is on
    parent = extract(request.headers) if ctx.engine.tracer is not None else None
    if not body.stream:
        with attached(parent):  # the engine takes the turn's parent from the context it is submitted in
            submitted = await asyncio.to_thread(ctx.engine.submit, req)
        res: ChatResult = await asyncio.wrap_future(submitted)
        ctx.metrics.observe(res, False)
        usage = await asyncio.to_thread(_usage, ctx, req, res)  # tokenising the prompt: off the event loop too
        return JSONResponse({
            "id": cid, "object": "chat.completion", "created": created, "model": ctx.model_id,
            "session_id": res.session_id,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": res.text},
                         "finish_reason": res.finish_reason}],
            "usage": usage,
            "axiswatch": {"session_id": res.session_id, "turn": res.turn, "layer": res.layer, "scores": res.scores,
                          "mean": res.mean, "state": res.state, "running": res.running, "drift": res.drift,
                          "reference": res.reference, "detector": res.detector, "statistics": res.statistics,
                          "capped": res.capped, **_events(res)},
        }, headers=headers)
    return StreamingResponse(_stream(ctx, req, cid, created, parent), media_type="text/event-stream",
                             headers=headers)


async def _stream(ctx: ApiContext, req: ChatRequest, cid: str, created: int, parent=None):
    """The server-sent events of one streamed reply: a chunk per token, then the turn's summary."""
    loop = asyncio.get_running_loop()
    q: asyncio.Queue = asyncio.Queue()
    req.on_token = lambda tok: loop.call_soon_threadsafe(q.put_nowait, tok)
    # submit off the event loop: opening a turn talks to Redis
    with attached(parent):
        submitted = await asyncio.to_thread(ctx.engine.submit, req)
    fut = asyncio.wrap_future(submitted)
    fut.add_done_callback(lambda _f: q.put_nowait(None))

    def chunk(delta: dict, finish: str | None, extra: dict) -> str:
        return "data: " + json.dumps({"id": cid, "object": "chat.completion.chunk", "created": created,
                                      "model": ctx.model_id, "session_id": req.session_id,
                                      "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                                      "axiswatch": extra}) + "\n\n"

    yield chunk({"role": "assistant", "content": ""}, None, {"session_id": req.session_id})
    while (tok := await q.get()) is not None:
        yield chunk({"content": tok["token"]}, None, tok)
    try:
        res = fut.result()
    except Exception as e:  # noqa: BLE001 - the client gets an error event, then the end of the stream
        err = e if isinstance(e, AxiswatchError) else ServerError("generation failed; see the server log")
        yield "data: " + json.dumps({"error": {"message": str(err), "type": type(err).__name__}}) + "\n\n"
        yield "data: [DONE]\n\n"
        return
    ctx.metrics.observe(res, True)
    yield chunk({}, res.finish_reason, {"session_id": res.session_id, "turn": res.turn, "layer": res.layer,
                                        "mean": res.mean, "state": res.state, "running": res.running,
                                        "drift": res.drift, "reference": res.reference,
                                        "detector": res.detector, "statistics": res.statistics,
                                        "capped": res.capped, **_events(res)})
    yield "data: [DONE]\n\n"


def _served(ctx: ApiContext) -> dict:
    return {"id": ctx.model_id, "object": "model", "created": ctx.started, "owned_by": "axiswatch"}


@router.get("/v1/models")
async def list_models(ctx: Ctx) -> Any:
    """The one model this replica serves (OpenAI clients list models before they chat)."""
    return {"object": "list", "data": [_served(ctx)]}


@router.get("/v1/models/{model:path}")
async def get_model(model: str, ctx: Ctx) -> Any:
    if model != ctx.model_id:
        raise NotFoundError(f"no model {model!r}; this replica serves {ctx.model_id!r}")
    return _served(ctx)
