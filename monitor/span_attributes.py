"""What a turn's trace span says, as plain attribute dicts: the OpenTelemetry GenAI semantic conventions'
inference span (operation ``chat``, provider, model, conversation id = the session id, request options,
finish reason, token usage) with axiswatch's own attributes under ``axiswatch.``, and one event per alert
(``axiswatch.alert``) and per capping switch (``axiswatch.capping``).

Pure: no OpenTelemetry, no I/O (:mod:`monitor.tracing` puts these on spans). An attribute whose value is
unknown (None) is left out: OpenTelemetry attributes cannot be null. docs/tracing.md lists them all.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from monitor.records import AlertEvent, InterventionRecord
    from monitor.turns import ChatResult
    from probes.generation import GenerationOptions

OPERATION = "chat"  # gen_ai.operation.name: an OpenAI-style chat completion
PROVIDER = "axiswatch"  # gen_ai.provider.name: the model runs here (hf or vLLM inside axiswatch), not at a vendor
ALERT_EVENT = "axiswatch.alert"
CAPPING_EVENT = "axiswatch.capping"

Attributes = dict[str, Any]


def span_name(model_id: str) -> str:
    """``{gen_ai.operation.name} {gen_ai.request.model}``, as the conventions name an inference span."""
    return f"{OPERATION} {model_id}"


def _present(pairs: Iterable[tuple[str, Any]]) -> Attributes:
    return {k: v for k, v in pairs if v is not None}


def start_attributes(*, session_id: str, turn: int, model_id: str, layer: int, policy: str,
                     options: GenerationOptions, stream: bool, replica: str = "") -> Attributes:
    """What is known when the turn opens (the conventions ask for the sampling-relevant ones at span creation)."""
    return _present([
        ("gen_ai.operation.name", OPERATION),
        ("gen_ai.provider.name", PROVIDER),
        ("gen_ai.system", PROVIDER),  # its name before semantic conventions 1.37, which some backends still read
        ("gen_ai.request.model", model_id),
        ("gen_ai.conversation.id", session_id),
        ("gen_ai.output.type", "text"),
        ("gen_ai.request.max_tokens", int(options.max_new_tokens)),
        ("gen_ai.request.temperature", float(options.temperature)),
        ("gen_ai.request.top_p", float(options.top_p)),
        ("gen_ai.request.seed", options.seed),
        ("gen_ai.request.stream", True if stream else None),  # set if and only if the request streams
        ("axiswatch.turn", int(turn)),
        ("axiswatch.layer", int(layer)),
        ("axiswatch.policy", policy),
        ("axiswatch.replica", replica or None),
    ])


def end_attributes(res: ChatResult, *, model_id: str, min_drift: float | None,
                   input_tokens: int | None) -> Attributes:
    """What the finished turn adds: the response and usage, and where the session stands after it.
    ``min_drift``: the lowest the primary detector's statistic (the running drift) went during the turn."""
    return _present([
        ("gen_ai.response.model", model_id),
        ("gen_ai.response.finish_reasons", [res.finish_reason] if res.finish_reason else None),
        ("gen_ai.usage.input_tokens", input_tokens),
        ("gen_ai.usage.output_tokens", len(res.tokens)),
        ("axiswatch.turn_mean", res.mean),
        ("axiswatch.min_drift", min_drift),
        ("axiswatch.drift", res.drift),
        ("axiswatch.running", res.running),
        ("axiswatch.reference", res.reference),
        ("axiswatch.state", res.state),
        ("axiswatch.detector", res.detector),
        ("axiswatch.capped", bool(res.capped)),
        ("axiswatch.capped_tokens", sum(1 for c in res.cap_flags if c)),
        ("axiswatch.alerts", len(res.alerts)),
        *((f"axiswatch.statistics.{name}", value) for name, value in sorted(res.statistics.items())),
    ])


def alert_attributes(a: AlertEvent) -> Attributes:
    """An ``axiswatch.alert`` event: the level the session crossed into, the running score that crossed it and the
    threshold (raw projection units), the token it happened at, the detector, and the alert's id in the store."""
    return _present([
        ("axiswatch.alert.level", a.level),
        ("axiswatch.alert.score", float(a.score)),
        ("axiswatch.alert.threshold", float(a.threshold)),
        ("axiswatch.alert.token_index", int(a.token_index)),
        ("axiswatch.alert.detector", a.detector),
        ("axiswatch.alert.event_id", a.event_id),
    ])


def capping_attributes(iv: InterventionRecord) -> Attributes:
    """An ``axiswatch.capping`` event: capping is on for the session from this token on, with this config."""
    return _present([
        ("axiswatch.capping.token_index", int(iv.token_index)),
        ("axiswatch.capping.config_id", iv.config_id),
        ("axiswatch.capping.layers", [int(x) for x in iv.layers]),
    ])
