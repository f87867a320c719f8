"""The records that flow from the engine through Redis to the store and the dashboard.

Plain dataclasses with ``to_dict``/``from_dict`` (JSON-safe). Every record is
idempotent by key: a turn by ``(session_id, turn)``, an alert by ``event_id``,
an intervention by ``(session_id, turn, token_index, config_id)``, an alert's update by
``(event_id, action)``, so a
replayed stream entry never makes a duplicate row. Layer ``L`` is the output
of decoder block ``L``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

SOURCES = ("live", "audit", "shadow")
STATES = ("ok", "watch", "warning", "critical")
POLICIES = ("observe", "flag", "cap")


def now() -> float:
    return time.time()


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


class _Record:
    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        """Build from a dict, ignoring unknown keys (newer writers may add fields)."""
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]  # every subclass is a dataclass
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]


@dataclass
class TurnRecord(_Record):
    """One completed turn: per-token scores of an assistant turn (or a user turn's text only)."""

    session_id: str
    turn: int  # index of the message in the conversation
    role: str  # "assistant" | "user" | "system"
    text: str
    layer: int
    tokens: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)  # per token, after any capping
    pre_cap_scores: list[float] | None = None  # per token, before capping (None when never capped)
    capped: list[bool] | None = None  # per token: was capping active
    state: str = "ok"  # drift state at the end of the turn
    running: float | None = None  # running (EWMA) score at the end of the turn
    source: str = "live"
    model_id: str = ""
    created_at: float = field(default_factory=now)
    policy: str | None = None  # the session's policy when the turn was recorded (None: unknown)
    # what the model was given (assistant turns): the hash of the last input message, whose chain
    # of parents is the whole input (monitor/conversation.py); the nodes of that chain the store may
    # not have yet; where the client's history first differed from the stored one (None: it did not)
    input_head: str | None = None
    input: list[dict] | None = None
    diverged_at: int | None = None
    tracker: dict | None = None  # the drift tracker's snapshot after this turn (DriftTracker.snapshot)

    @classmethod
    def build(cls, session_id: str, turn: int, role: str, text: str, layer: int, *,
              tokens: Sequence[str] = (), scores: Sequence[float] = (), pre_cap_scores: Sequence[float] = (),
              cap_flags: Sequence[bool] = (), **meta: Any) -> TurnRecord:
        """The one way a turn record is made (a message without scores, or a scored reply): its per-token
        pre-cap scores and capping flags are kept only where capping acted on one of its tokens (else
        None: the scores are the model's own). ``meta``: the other fields (state, source, policy...)."""
        capped = any(cap_flags)
        return cls(session_id, turn, role, text, layer, list(tokens), list(scores),
                   list(pre_cap_scores) if capped else None, list(cap_flags) if capped else None, **meta)

    @property
    def mean(self) -> float | None:
        return sum(self.scores) / len(self.scores) if self.scores else None


@dataclass
class AlertEvent(_Record):
    """A drift alert: the running score crossed into ``level`` at ``token_index`` of ``turn``."""

    session_id: str
    turn: int
    token_index: int
    level: str  # "watch" | "warning" | "critical"
    score: float  # the running score that crossed
    threshold: float
    event_id: str = field(default_factory=lambda: new_id("evt"))
    policy: str = "flag"
    created_at: float = field(default_factory=now)
    excerpt: str = ""  # the reply's text up to the alerted token (its last ~200 characters)
    detector: str | None = None  # the detector that fired ("drift", "level"; None: stored before there were several)


@dataclass
class InterventionRecord(_Record):
    """Capping switched on for a session from ``token_index`` of ``turn`` on."""

    session_id: str
    turn: int
    token_index: int
    config_id: str
    thresholds: dict[str, float] = field(default_factory=dict)
    layers: list[int] = field(default_factory=list)
    created_at: float = field(default_factory=now)


ALERT_ACTIONS = ("acknowledged", "resolved")


@dataclass
class AlertUpdate(_Record):
    """An alert's lifecycle step: ``acknowledged`` by an operator (``by``, ``note``), or ``resolved`` by
    the engine when the session's state fell below the alert's level (at ``token_index`` of ``turn``)."""

    session_id: str
    event_id: str
    action: str  # ALERT_ACTIONS
    by: str = "axiswatch"
    note: str = ""
    turn: int | None = None
    token_index: int | None = None
    created_at: float = field(default_factory=now)
