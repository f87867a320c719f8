"""OpenTelemetry traces of the turns: one span per generated turn (:mod:`monitor.span_attributes` says what it
holds), from the turn's opening to its end, with an event per alert and per capping switch, a child of the
caller's span where the request carries a W3C ``traceparent``.

The engine holds a :class:`TurnTracer` where tracing is on (:func:`monitor.trace_export.from_env`, started by
:func:`monitor.service.start`: the standard ``OTEL_*`` variables) and calls it as a turn opens, scores each
token, alerts, switches capping on and ends; where tracing is off it holds none and makes no call. This module
needs only the OpenTelemetry API; the SDK and the exporter load in :mod:`monitor.trace_export`.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from monitor.span_attributes import (
    ALERT_EVENT,
    CAPPING_EVENT,
    alert_attributes,
    capping_attributes,
    end_attributes,
    span_name,
    start_attributes,
)

if TYPE_CHECKING:
    from monitor.records import AlertEvent, InterventionRecord
    from monitor.turns import ChatResult, Turn

log = logging.getLogger(__name__)

_PROPAGATOR = TraceContextTextMapPropagator()


# ---------------------------------------------------------------------------------------- trace context
def extract(carrier: Mapping[str, Any]) -> Context:
    """The trace context a W3C ``traceparent`` (and ``tracestate``) in ``carrier`` continues: HTTP request
    headers, or the vLLM plugin's extra args. Without a valid one, an empty context: the turn starts a trace."""
    return _PROPAGATOR.extract(carrier, context=Context())


@contextmanager
def attached(ctx: Context | None) -> Iterator[None]:
    """``ctx`` is the current trace context while the block runs (the engine takes a turn's parent from the
    current context where the turn is submitted). None: the current one stays."""
    if ctx is None:
        yield
        return
    token = otel_context.attach(ctx)
    try:
        yield
    finally:
        otel_context.detach(token)


# ---------------------------------------------------------------------------------------- switched on?
def enabled(env: Mapping[str, str] | None = None) -> bool:
    """Whether the variables ask for traces: an OTLP endpoint, or an exporter named (other than ``none``)."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    names = exporter_names(env)
    return "none" not in names if names else \
        bool(env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def exporter_names(env: Mapping[str, str]) -> list[str]:
    """``OTEL_TRACES_EXPORTER``'s names, lower case, each once (empty: none named)."""
    return list(dict.fromkeys(n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()))


# ---------------------------------------------------------------------------------------- the turns' spans
def _guarded(fn: Callable[..., None]) -> Callable[..., None]:
    """A fault in tracing is logged (the first one) and counted; it never reaches generation."""

    @functools.wraps(fn)
    def call(self: TurnTracer, *a: Any, **kw: Any) -> None:
        try:
            fn(self, *a, **kw)
        except Exception:  # tracing is a by-product of serving, never a reason to fail it
            self.errors += 1
            if self.errors == 1:
                log.exception("tracing failed in %s; turns are served untraced where it fails (further "
                              "tracing errors are counted, not logged)", fn.__name__)

    return call


@dataclass(eq=False)
class _Open:
    span: Span
    model_id: str
    min_drift: float | None = None
    input_tokens: int | None = None


@dataclass(eq=False)
class TurnTracer:
    """The engine's side of tracing: a span per turn from its opening to its end, the turn's lowest running
    drift, an event per alert and capping switch. Every call is cheap and never raises."""

    tracer: Tracer
    errors: int = 0
    _open: dict[Turn, _Open] = field(default_factory=dict)

    @staticmethod
    def parent() -> Context:
        """The current trace context, where a turn is submitted: its span's parent."""
        return otel_context.get_current()

    @_guarded
    def start(self, turn: Turn, parent: Context | None, *, model_id: str, layer: int, replica: str = "") -> None:
        s, req = turn.session, turn.request
        attrs = start_attributes(session_id=s.id, turn=turn.number, model_id=model_id, layer=layer, policy=s.policy,
                                 options=req.options, stream=req.on_token is not None, replica=replica)
        span = self.tracer.start_span(span_name(model_id), context=parent, kind=SpanKind.INTERNAL, attributes=attrs)
        self._open[turn] = _Open(span, model_id)

    def token(self, turn: Turn, drift: float | None) -> None:
        """After each scored token: the session's running drift now (None until its reference is complete)."""
        o = self._open.get(turn)
        if o is not None and drift is not None and (o.min_drift is None or drift < o.min_drift):
            o.min_drift = drift

    def usage(self, turn: Turn, input_tokens: int) -> None:
        """The prompt's token count where the caller knows it (the vLLM plugin); else :meth:`end` asks the backend."""
        o = self._open.get(turn)
        if o is not None:
            o.input_tokens = int(input_tokens)

    @_guarded
    def alert(self, turn: Turn, alert: AlertEvent) -> None:
        o = self._open.get(turn)
        if o is not None:
            o.span.add_event(ALERT_EVENT, alert_attributes(alert))

    @_guarded
    def capping(self, turn: Turn, intervention: InterventionRecord) -> None:
        o = self._open.get(turn)
        if o is not None:
            o.span.add_event(CAPPING_EVENT, capping_attributes(intervention))

    @_guarded
    def end(self, turn: Turn, result: ChatResult,
            prompt_tokens: Callable[[list[dict]], int] | None = None) -> None:
        """The turn is finished: the response, usage and drift attributes, then the span ends. ``prompt_tokens``:
        counts the prompt's tokens (the backend's), asked only for a recorded span whose count is not known."""
        o = self._open.pop(turn, None)
        if o is None:
            return
        n = o.input_tokens
        if n is None and prompt_tokens is not None and o.span.is_recording():
            try:
                n = int(prompt_tokens(turn.request.messages))
            except Exception as e:  # noqa: BLE001 - the span goes without a prompt count
                log.debug("no prompt token count for session %s's span: %s", turn.session.id, e)
        o.span.set_attributes(end_attributes(result, model_id=o.model_id, min_drift=o.min_drift, input_tokens=n))
        o.span.end()

    @_guarded
    def fail(self, turn: Turn, error: BaseException) -> None:
        """The turn was aborted (the backend failed, or the request was refused after it opened)."""
        o = self._open.pop(turn, None)
        if o is None:
            return
        o.span.set_attribute("error.type", type(error).__qualname__)
        o.span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"[:500]))
        if isinstance(error, Exception):
            o.span.record_exception(error)
        o.span.end()

    @property
    def open_spans(self) -> int:
        return len(self._open)
