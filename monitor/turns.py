"""One assistant turn while it is generated: its request, its session, what its tokens were,
and what has not reached the live tail yet. The engine (:mod:`monitor.engine`) opens a turn,
feeds it the backend's token events, and finishes or aborts it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from monitor.backends import Job, TokenEvent
from monitor.drift import DriftEvent
from monitor.live import LiveToken
from monitor.records import AlertEvent, InterventionRecord
from monitor.replay import tracked_score
from monitor.sessions import Session
from probes.generation import GenerationOptions


@dataclass
class ChatRequest:
    session_id: str
    messages: list[dict]
    options: GenerationOptions = field(default_factory=GenerationOptions)
    policy: str | None = None  # None: the session's (or the deployment's) policy
    on_token: Callable[[dict], object] | None = None  # streaming: called once per content token


@dataclass
class ChatResult:
    session_id: str
    turn: int
    layer: int
    text: str
    tokens: list[str]
    scores: list[float]
    pre_cap_scores: list[float]
    cap_flags: list[bool]
    state: str
    running: float | None
    capped: bool
    finish_reason: str
    alerts: list[AlertEvent] = field(default_factory=list)
    interventions: list[InterventionRecord] = field(default_factory=list)
    drift: float | None = None  # running minus the session's opening reference (what the thresholds apply to)
    reference: float | None = None
    token_ids: list[int] = field(default_factory=list)  # the generated content tokens (no end-of-turn marker)
    detector: str | None = None  # the detector whose statistic holds the state (None while ok)
    statistics: dict[str, float | None] = field(default_factory=dict)  # every detector's statistic at the end

    @property
    def mean(self) -> float | None:
        return sum(self.scores) / len(self.scores) if self.scores else None


@dataclass(eq=False)
class Turn:
    request: ChatRequest
    session: Session
    number: int  # the stored turn number of the reply
    job: Job
    tokens: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    pre_cap_scores: list[float] = field(default_factory=list)
    cap_flags: list[bool] = field(default_factory=list)
    alerts: list[AlertEvent] = field(default_factory=list)
    interventions: list[InterventionRecord] = field(default_factory=list)
    pending: list[LiveToken] = field(default_factory=list)  # not yet in the live tail
    input: list[dict] = field(default_factory=list)  # the request's messages as hash-chain nodes
    diverged_at: int | None = None  # where they first differ from the session's stored conversation
    ended: bool = False  # the reply is complete (its "ended" live entry is out or due)

    def add(self, ev: TokenEvent) -> list[DriftEvent]:
        """Record one token and feed it to the session's tracker (its :func:`~monitor.replay.tracked_score`,
        the score before capping acted on it); the tracker's events."""
        idx = len(self.scores)
        self.tokens.append(ev.piece)
        self.scores.append(ev.score)
        self.pre_cap_scores.append(ev.pre_cap_score)
        self.cap_flags.append(ev.capped)
        self.pending.append(LiveToken(idx, ev.score, ev.piece, ev.capped, ev.pre_cap_score))
        return self.session.tracker.update([tracked_score(ev.score, ev.pre_cap_score)], self.number)

    def excerpt(self, upto: int, chars: int = 200) -> str:
        """The reply's text up to token ``upto`` (its last ``chars`` characters)."""
        return "".join(self.tokens[:upto + 1])[-chars:]

    def take_pending(self) -> list[LiveToken]:
        out, self.pending = self.pending, []
        return out

    def result(self, layer: int, summary) -> ChatResult:
        s = self.session
        return ChatResult(s.id, self.number, layer, self.job.text, self.tokens, self.scores, self.pre_cap_scores,
                          self.cap_flags, summary.state, summary.running, s.capped, self.job.finish_reason,
                          self.alerts, self.interventions, summary.drift, summary.reference, list(self.job.token_ids),
                          summary.detector, dict(summary.statistics or {}))
