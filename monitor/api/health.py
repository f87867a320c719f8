"""Health and metrics: ``/healthz``, ``/readyz`` and the Prometheus ``/metrics`` (the counters are
:class:`~monitor.api.metrics.Metrics`)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import generate_latest

from monitor.api.context import Ctx
from monitor.streams import REDIS_DOWN

log = logging.getLogger(__name__)
router = APIRouter()


@router.get("/healthz")
async def healthz():
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(ctx: Ctx):
    checks: dict[str, object] = {"model": True}
    if ctx.streams is not None:
        try:
            checks["redis"] = ctx.streams.ping()
        except REDIS_DOWN:  # not ready
            checks["redis"] = False
    # Redis down does not make a replica unready: generation goes on and the outbox buffers
    box: Any = ctx.engine.publisher  # the outbox (or another publisher, or none)
    checks["outbox"] = "buffering" if getattr(box, "down", False) else "ok"
    ok = checks["model"] and (checks.get("redis", True) or hasattr(box, "down"))
    return JSONResponse({"status": "ready" if ok else "not ready", "checks": checks}, status_code=200 if ok else 503)


def _lag(streams) -> dict[tuple[str, str], int]:
    return {(stream, group): lag["undelivered"] + lag["pending"]
            for stream in ("turns", "alerts", "interventions") for group, lag in streams.lag(stream).items()}


@router.get("/metrics")
async def prometheus(ctx: Ctx):
    metrics, engine = ctx.metrics, ctx.engine
    metrics.sessions.set(len(engine.sessions))
    metrics.publish_errors.set(engine.publish_errors)
    box: Any = engine.publisher
    if hasattr(box, "stats"):
        for what in ("spilled", "replayed", "live_dropped", "outages", "lost"):
            metrics.outbox.labels(what).set(box.stats[what])
        metrics.outbox.labels("queued").set(box.queued)
        metrics.outbox.labels("redis_down").set(int(box.down))
    if ctx.streams is not None:  # off the event loop: a slow or dead Redis must not stall the streams
        try:
            lags = await asyncio.to_thread(_lag, ctx.streams)
            metrics.redis_up.set(1)
        except REDIS_DOWN as e:  # the scrape still answers, with redis_up 0
            log.warning("metrics: stream lag unavailable: %s", e)
            lags = {}
            metrics.redis_up.set(0)
            metrics.lag.clear()  # no stale values while nothing could be read
        for (stream, group), n in lags.items():
            metrics.lag.labels(stream, group).set(n)
    return PlainTextResponse(generate_latest(metrics.registry).decode(), media_type="text/plain; version=0.0.4")
