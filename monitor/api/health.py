"""Health and metrics: ``/healthz``, ``/readyz`` and the Prometheus ``/metrics`` (the counters are
:class:`~monitor.api.metrics.Metrics`; what the deployment's Redis holds, :func:`read_redis`, is read at each
scrape: stream lag, webhook attempts, dead letters, replica heartbeats)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import generate_latest

from monitor.api.context import Ctx
from monitor.streams import REDIS_DOWN, Streams
from monitor.streams.alerts import AlertLedger

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


@dataclass(frozen=True)
class RedisReadings:
    """What ``/metrics`` reads from Redis at a scrape: the deployment's, the same on every replica."""

    lag: dict[tuple[str, str], int]  # (stream, group) -> entries undelivered or unacknowledged
    attempts: dict[str, int]  # webhook delivery attempts by outcome
    dead_letters: int
    heartbeats: dict[str, float]  # replica -> time of its latest heartbeat


def read_redis(streams: Streams) -> RedisReadings:
    ledger = AlertLedger(streams)
    lag = {(stream, group): n["undelivered"] + n["pending"]
           for stream in ("turns", "alerts", "interventions") for group, n in streams.lag(stream).items()}
    return RedisReadings(lag, ledger.attempt_counts(), ledger.waiting(), streams.replicas())


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
            got = await asyncio.to_thread(read_redis, ctx.streams)
        except REDIS_DOWN as e:  # the scrape still answers, with redis_up 0 and no stale readings
            log.warning("metrics: Redis unavailable: %s", e)
            metrics.redis_up.set(0)
            metrics.lag.clear()
            for reading in (metrics.webhook_attempts, metrics.dead_letters, metrics.heartbeats):
                reading.clear()
        else:
            metrics.redis_up.set(1)
            metrics.lag.clear()  # a group deleted since the last scrape goes away
            for (stream, group), n in got.lag.items():
                metrics.lag.labels(stream, group).set(n)
            metrics.webhook_attempts.set({(o,): n for o, n in got.attempts.items()})
            metrics.dead_letters.set({(): got.dead_letters})
            metrics.heartbeats.set({(r,): t for r, t in got.heartbeats.items()})
    return PlainTextResponse(generate_latest(metrics.registry).decode(), media_type="text/plain; version=0.0.4")
