"""Stored sessions over HTTP: ``/v1/sessions`` (list), one session, the check of its hash chain, and
erasure (one session, or every session idle past a retention). Every route uses the store off the event loop."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Header
from pydantic import BaseModel, ConfigDict, Field

from monitor.api.context import ApiContext, Ctx
from monitor.durations import parse_duration
from monitor.errors import NotFoundError
from monitor.streams.forget import forget_sessions

router = APIRouter()


@router.get("/v1/sessions")
async def list_sessions(ctx: Ctx, state: str | None = None, source: str | None = None, limit: int = 100) -> Any:
    rows = await asyncio.to_thread(ctx.need_store().list_sessions, state=state, source=source,
                                   limit=min(max(limit, 1), 1000))
    return {"sessions": rows}


@router.get("/v1/sessions/{session_id:path}/verify")
async def verify_session(session_id: str, ctx: Ctx) -> Any:
    """Check the session's hash chain against its stored records (``axiswatch sessions verify``)."""
    return await asyncio.to_thread(ctx.need_store().verify_session, session_id)


@router.get("/v1/sessions/{session_id:path}")  # an audit id may hold a "/"
async def get_session(session_id: str, ctx: Ctx) -> Any:
    s = await asyncio.to_thread(ctx.need_store().get_session, session_id)
    if s is None:
        raise NotFoundError(f"no session {session_id!r}")
    return s


class EraseBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    by: str = Field(min_length=1, max_length=200, description="who asks for the erasure (kept in the tombstone)")
    reason: str = Field(min_length=1, max_length=2000, description="why (kept in the tombstone)")


class PurgeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    older_than: str = Field(description="erase sessions idle for longer than this: 30d, 12h, 2w")
    by: str = Field(min_length=1, max_length=200)
    reason: str | None = Field(default=None, max_length=2000, description="default: 'retention <older_than>'")
    dry_run: bool = False


def _forget(ctx: ApiContext, session_ids: list[str]) -> dict | None:
    """Remove what Redis holds of the erased sessions (live tails, handled stream entries, dead-letter
    excerpts); None when this replica has no Redis or could not reach it (logged)."""
    return forget_sessions(ctx.streams, session_ids) if ctx.streams is not None and session_ids else None


def _erase(ctx: ApiContext, session_id: str, reason: str, by: str) -> dict:
    r = ctx.need_store().erase_session(session_id, reason=reason, by=by)
    return {**r, "redis": _forget(ctx, [session_id])}


def _purge(ctx: ApiContext, seconds: float, reason: str, by: str) -> dict:
    r = ctx.need_store().purge(seconds, reason=reason, by=by)
    return {**r, "redis": _forget(ctx, r["sessions"])}


@router.post("/v1/sessions/purge")
async def purge(body: PurgeBody, ctx: Ctx, authorization: str | None = Header(default=None)) -> Any:
    """Erase every session idle for longer than ``older_than`` (``axiswatch sessions purge``); with
    ``AXISWATCH_ADMIN_API_KEYS`` set, only an admin key may."""
    ctx.need_admin(authorization)
    seconds = parse_duration(body.older_than, "older_than")
    if body.dry_run:
        return {"sessions": await asyncio.to_thread(ctx.need_store().expired_sessions, seconds), "dry_run": True}
    return await asyncio.to_thread(_purge, ctx, seconds, body.reason or f"retention {body.older_than}", body.by)


@router.post("/v1/sessions/{session_id:path}/erase")
async def erase(session_id: str, body: EraseBody, ctx: Ctx, authorization: str | None = Header(default=None)) -> Any:
    """Erase one session's conversation (``axiswatch sessions erase``): a tombstone keeps its chain verifiable.
    With ``AXISWATCH_ADMIN_API_KEYS`` set, only an admin key may."""
    ctx.need_admin(authorization)
    return await asyncio.to_thread(_erase, ctx, session_id, body.reason, body.by)
