"""What the API counts for Prometheus (prometheus_client): requests, scored tokens, alerts, capping
switches, sessions, stream lag, publish errors and the outbox; one registry per app.

Two kinds of series. This replica's own (requests, tokens, alerts, capping, sessions, publish errors, the
outbox): sum them over replicas. The deployment's, read from Redis at each scrape and the same on every
replica (stream lag, webhook attempts, dead letters, replica heartbeats): take their ``max`` over replicas.
The rules and dashboard under ``deploy/`` do both; ``tests/test_deploy.py`` checks every name they use
is exported here."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from monitor.engine import ChatResult


class Reading(Collector):
    """A family whose samples are read elsewhere (Redis) at each scrape and set whole with :meth:`set`;
    no samples until then, or after :meth:`clear` (nothing stale while Redis cannot be read).
    ``kind`` ``counter`` gets the ``_total`` suffix, as a prometheus_client Counter does."""

    def __init__(self, name: str, doc: str, kind: str, labels: tuple[str, ...], registry: CollectorRegistry):
        if kind not in ("counter", "gauge"):
            raise ValueError(f"a reading is a counter or a gauge, not {kind!r}")
        self.name, self.doc, self.kind, self.labels = name, doc, kind, labels
        self._values: dict[tuple[str, ...], float] = {}
        registry.register(self)

    def set(self, values: dict[tuple[str, ...], float]) -> None:
        """All samples at once: label values (in ``labels``' order; ``()`` without labels) -> value."""
        if any(len(k) != len(self.labels) for k in values):
            raise ValueError(f"{self.name} takes the labels {self.labels}")
        self._values = dict(values)

    def clear(self) -> None:
        self._values = {}

    def _family(self) -> CounterMetricFamily | GaugeMetricFamily:
        cls = CounterMetricFamily if self.kind == "counter" else GaugeMetricFamily
        return cls(self.name, self.doc, labels=list(self.labels))

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        fam = self._family()
        for labels, v in sorted(self._values.items()):
            fam.add_metric(list(labels), v)
        yield fam


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
        # the deployment's, read from Redis at each scrape (monitor.api.health)
        self.webhook_attempts = Reading(
            "axiswatch_webhook_attempts", "alert webhook delivery attempts of every alert worker and "
            "'alerts replay' of the deployment, by outcome (delivered: a 2xx answer; failed: any other status, "
            "a timeout or a connection error)", "counter", ("outcome",), self.registry)
        self.dead_letters = Reading(
            "axiswatch_dead_letters", "alerts and resolve notices dead-lettered after their last delivery attempt "
            "and not delivered since ('axiswatch alerts replay' tries them again)", "gauge", (), self.registry)
        self.heartbeats = Reading(
            "axiswatch_replica_heartbeat_timestamp_seconds", "when each serve replica last wrote its heartbeat "
            "(epoch seconds, its own clock; every 3 s while it runs); a replica that stopped cleanly is left out, "
            "one silent for an hour forgotten", "gauge", ("replica",), self.registry)

    def observe(self, res: ChatResult, stream: bool) -> None:
        self.requests.labels(str(stream).lower()).inc()
        self.tokens.inc(len(res.scores))
        for a in res.alerts:
            self.alerts.labels(a.level).inc()
        self.capped.inc(len(res.interventions))
