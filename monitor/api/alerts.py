"""Alerts over HTTP: ``/v1/alerts`` (list, with their lifecycle) and acknowledging one. Every route
reads the store off the event loop."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from monitor.api.context import Ctx

router = APIRouter()


class AckBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    by: str = Field(min_length=1, max_length=200, description="who acknowledges (an e-mail, a name, an on-call handle)")
    note: str = Field(default="", max_length=2000)


@router.get("/v1/alerts")
async def list_alerts(ctx: Ctx, session_id: str | None = None, level: str | None = None, limit: int = 100) -> Any:
    rows = await asyncio.to_thread(ctx.need_store().list_alerts, session_id=session_id, level=level,
                                   limit=min(max(limit, 1), 1000))
    return {"alerts": rows}


@router.post("/v1/alerts/{event_id}/acknowledge")
async def acknowledge(event_id: str, body: AckBody, ctx: Ctx) -> Any:
    """Acknowledge an alert: who and when are stored with it (in the session's hash chain)."""
    return await asyncio.to_thread(ctx.need_store().acknowledge_alert, event_id, body.by, body.note)
