"""What the API counts for Prometheus (prometheus_client): requests, scored tokens, alerts, capping
switches, sessions, stream lag, publish errors and the outbox; one registry per app."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge

if TYPE_CHECKING:
    from monitor.engine import ChatResult


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
