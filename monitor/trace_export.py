"""Where the turns' spans go: the OpenTelemetry SDK configured the standard way, from the environment.

Read by the SDK itself: ``OTEL_EXPORTER_OTLP_ENDPOINT`` (a collector's base URL; traces go to ``/v1/traces``) or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (the full URL), their ``_HEADERS``/``_TIMEOUT``/``_COMPRESSION``/certificate
variables, ``OTEL_SERVICE_NAME`` (default ``axiswatch``) and ``OTEL_RESOURCE_ATTRIBUTES``,
``OTEL_TRACES_SAMPLER``/``_ARG``, ``OTEL_BSP_*``; here: ``OTEL_TRACES_EXPORTER`` (``otlp``, ``console``, ``none``)
and ``OTEL_SDK_DISABLED``. Spans go over OTLP/HTTP (protobuf) from a batch processor's background thread and
are flushed when the runtime closes. With no endpoint and no exporter named, tracing is off
(:func:`monitor.tracing.enabled`): :func:`monitor.service.start` does not import this module, and nothing is built.

The provider is this process' own (not the global one): a runtime's spans stop with its close, and an
application that embeds axiswatch keeps its own global provider. A collector that cannot be reached never
stops serving: its first failure is logged (the exporter's own lines and one of ours), then nothing until an
export succeeds again; the spans of the outage are dropped.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME as SERVICE_KEY
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter, SpanExportResult

from monitor.tracing import TurnTracer, enabled, exporter_names

log = logging.getLogger(__name__)

SERVICE_NAME = "axiswatch"  # the resource's service.name unless OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES name one
SCOPE = "axiswatch"  # the instrumentation scope of the turns' spans
_EXPORTER_LOGGER = "opentelemetry.exporter.otlp.proto.http.trace_exporter"


@dataclass
class Tracing:
    """The tracer provider this process exports with, and the engine's :class:`~monitor.tracing.TurnTracer` on it."""

    provider: TracerProvider
    turns: TurnTracer
    where: str  # what the exporters send to, for the log
    _filter: logging.Filter | None = None

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Export every ended span now; whether all went within ``timeout_s``."""
        return bool(self.provider.force_flush(int(timeout_s * 1000)))

    def close(self) -> None:
        """Export what is left and stop the exporters (the runtime's close; a dead collector may take up to
        ``OTEL_EXPORTER_OTLP_TIMEOUT``, 10 s by default)."""
        try:
            self.provider.shutdown()
        finally:
            if self._filter is not None:
                logging.getLogger(_EXPORTER_LOGGER).removeFilter(self._filter)


def from_env(service_name: str = SERVICE_NAME) -> Tracing | None:
    """Tracing as the standard ``OTEL_*`` variables configure it, or None where they do not ask for it
    (:func:`enabled`) or name nothing usable (each problem logged once; serving goes on untraced)."""
    env = os.environ
    if not enabled(env):
        return None
    exporters = [e for e in (_exporter(n, env) for n in exporter_names(env) or ["otlp"]) if e is not None]
    if not exporters:
        return None
    resource = Resource.create()  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
    if str(resource.attributes.get(SERVICE_KEY, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_KEY: service_name}))
    provider = TracerProvider(resource=resource)  # its sampler from OTEL_TRACES_SAMPLER
    reported = [_Reported(exp, where) for exp, where in exporters]
    for r in reported:
        provider.add_span_processor(BatchSpanProcessor(r))  # OTEL_BSP_* size and schedule it
    quiet = _Quiet(reported)
    logging.getLogger(_EXPORTER_LOGGER).addFilter(quiet)
    where = ", ".join(w for _, w in exporters)
    log.info("tracing: a span per turn to %s (service.name %s)", where, resource.attributes.get(SERVICE_KEY))
    return Tracing(provider, TurnTracer(provider.get_tracer(SCOPE)), where, quiet)


def _exporter(name: str, env: Mapping[str, str]) -> tuple[SpanExporter, str] | None:
    """``(exporter, where)`` for one ``OTEL_TRACES_EXPORTER`` name, or None (logged) where it cannot be used."""
    if name == "console":
        return ConsoleSpanExporter(), "the console"
    if name != "otlp":
        log.warning("tracing: OTEL_TRACES_EXPORTER names %r, which axiswatch does not ship (otlp, console or none); "
                    "ignored", name)
        return None
    protocol = (env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "http/protobuf").strip().lower()
    if protocol != "http/protobuf":
        log.warning("tracing off: axiswatch exports OTLP over HTTP (http/protobuf), not %r; unset "
                    "OTEL_EXPORTER_OTLP_PROTOCOL and point OTEL_EXPORTER_OTLP_ENDPOINT at the collector's OTLP/HTTP "
                    "port (4318 by default)", protocol)
        return None
    url = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or \
        (env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or "http://localhost:4318").rstrip("/") + "/v1/traces"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        log.warning("tracing off: the OTLP endpoint %r is not an http(s) URL (OTEL_EXPORTER_OTLP_ENDPOINT is a "
                    "collector's base URL, e.g. http://127.0.0.1:4318)", url)
        return None
    return OTLPSpanExporter(), url  # it reads the endpoint, headers, timeout and TLS variables itself


class _Reported(SpanExporter):
    """An exporter whose failures are logged once per outage: the first failed batch, then nothing until one
    succeeds (logged too, with the number of spans lost meanwhile)."""

    def __init__(self, inner: SpanExporter, where: str):
        self.inner, self.where = inner, where
        self.failing, self.dropped = False, 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self.inner.export(spans)
        except Exception as e:  # noqa: BLE001 - an exporter that raises has failed this batch
            log.debug("trace export to %s raised: %s", self.where, e)
            result = SpanExportResult.FAILURE
        if result is SpanExportResult.SUCCESS:
            if self.failing:
                log.warning("tracing: spans reach %s again (%d spans were dropped meanwhile)", self.where, self.dropped)
                self.failing, self.dropped = False, 0
            return result
        self.dropped += len(spans)
        if not self.failing:
            self.failing = True
            log.warning("tracing: could not export %d spans to %s; serving goes on and spans are dropped until it "
                        "answers (further failures are not logged; check OTEL_EXPORTER_OTLP_ENDPOINT)",
                        len(spans), self.where)
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return bool(self.inner.force_flush(timeout_millis))


class _Quiet(logging.Filter):
    """Silences the OTLP exporter's own per-batch error lines while an outage is already reported."""

    def __init__(self, exporters: list[_Reported]):
        super().__init__()
        self.exporters = exporters

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(e.failing for e in self.exporters)
