"""``POST /v1/audit``: score finished conversations (the body of an ``axiswatch audit`` file: JSON, or JSON
lines) and answer each one's verdict (:func:`monitor.verdict.verdict`, what ``axiswatch audit --json``
prints)."""

from __future__ import annotations

import asyncio
from typing import Literal

from fastapi import APIRouter, Request

from monitor.api.context import Ctx
from monitor.errors import InputError, TooLargeError
from monitor.settings import MAX_AUDIT_BYTES
from probes.audit import transcripts_in

router = APIRouter()

_TEXT_PART = {"type": "object", "required": ["type", "text"],
              "properties": {"type": {"type": "string", "enum": ["text"]}, "text": {"type": "string"}}}
_CONTENT = {"anyOf": [{"type": "string"}, {"type": "array", "items": _TEXT_PART}]}  # OpenAI's text parts too
_MESSAGE = {"type": "object", "required": ["role", "content"],
            "properties": {"role": {"type": "string", "enum": ["system", "user", "assistant"]}, "content": _CONTENT}}
_TURN = {"type": "object", "required": ["role", "content"],  # the paper's transcript JSON
         "properties": {"role": {"type": "string"}, "content": _CONTENT}}
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


def _records(raw: bytes) -> list[tuple[str | None, list[dict]]]:
    """The body's conversations, read as ``axiswatch audit`` reads a file (one JSON document, or JSON lines:
    :func:`probes.audit.transcripts_in`), every one checked before any is scored (one bad record rejects all)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"the body is not UTF-8 text ({e.reason} at byte {e.start})") from None
    parsed = []
    for _where, rec in transcripts_in(text, "body"):
        if isinstance(rec, InputError):
            raise rec
        parsed.append(rec)
    if not parsed:
        raise InputError("expected a conversation object ({messages} or {conversation}) or a non-empty list of them")
    for i, (rid, _msgs) in enumerate(parsed):  # the id names a stored session: keep it printable
        if rid is not None and (not rid or len(rid) > 200 or any(ord(c) < 32 or 127 <= ord(c) < 160 for c in rid)):
            raise InputError(f"record {i}: 'id' must be 1-200 characters without control characters")
    return parsed


@router.post("/v1/audit", openapi_extra={"requestBody": AUDIT_BODY})
async def audit(request: Request, ctx: Ctx, policy: Literal["observe", "flag", "cap"] | None = None):
    """Score finished conversations (the body of an ``axiswatch audit`` file: one conversation
    object or a list of them); each is stored as a session with source ``audit``. Every record is
    checked first: one bad record rejects the request and nothing is scored."""
    raw = await request.body()
    if len(raw) > MAX_AUDIT_BYTES:
        raise TooLargeError(f"audit body is {len(raw)} bytes; the limit is {MAX_AUDIT_BYTES}")
    parsed = _records(raw)
    for _rid, msgs in parsed:  # template problems surface before anything is stored
        ctx.engine.backend.validate_transcript(msgs)
    out = []
    for rid, msgs in parsed:
        out.append(await asyncio.to_thread(ctx.engine.score_transcript, rid, msgs, "audit", policy or "observe"))
    return out
