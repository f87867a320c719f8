"""Stored sessions over HTTP: ``/v1/sessions`` (list), one session, and the check of its hash chain.
Every route reads the store off the event loop."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter

from monitor.api.context import Ctx
from monitor.errors import NotFoundError

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
