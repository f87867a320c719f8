"""Generation backends: who runs the model, behind one interface the engine drives.

The engine (:mod:`monitor.engine`: sessions, turns, drift, policy, publishing) does not care
who runs the model. A :class:`Backend` generates for :class:`Job` objects, one per request, each
with its own options, and reports every decoding step to a :class:`StepSink` as a list of
``(job, TokenEvent)`` pairs plus the jobs that ended at that step. Between steps it reads each
job's ``capped`` flag: the sink sets it to cap that request from its next token on. Designed for
a continuous-batching engine: jobs may join and leave between steps; nothing assumes the jobs of
one call share options or start together.

``hf`` (:mod:`monitor.backends.hf`) is our transformers loop, the embedded default: it batches
statically, and its :class:`~monitor.backends.hf.Scheduler` gathers concurrent requests into
batches. This module holds only the interface; a backend's own module is imported only by what
builds one (:mod:`monitor.service`, tests, benchmarks).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

from probes.generation import GenerationOptions


@dataclass(frozen=True)
class TokenEvent:
    """One generated content token of one request (end-of-turn markers never produce one)."""

    token_id: int
    piece: str  # the text it adds to the reply (the one detokeniser, probes.generation.Detokenizer)
    score: float  # the monitor layer's projection, after the monitor layer's own cap where it acted
    pre_cap_score: float  # the same before capping acted on it (equal to ``score`` where it did not)
    capped: bool  # capping was on for this token


@dataclass(eq=False)
class Job:
    """One request's generation: the chat, its own options, and whether capping is on.

    The engine creates it and may set ``capped`` while it runs (from the next token on); the backend
    fills ``token_ids``, ``text`` and ``finish_reason`` when it ends."""

    messages: list[dict]
    options: GenerationOptions = field(default_factory=GenerationOptions)
    capped: bool = False  # the strong tier: the session was flagged under policy cap
    light: bool = False  # the session is under policy cap: a config's light tier floors it from its first token
    tag: Any = None  # the engine's own handle (its turn); backends never look at it
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str = ""  # "stop" | "length"


class StepSink(Protocol):
    """The engine's side of a backend: one call per decoding step."""

    def step(self, events: Sequence[tuple[Job, TokenEvent]], ended: Sequence[Job]) -> None:
        """This step's tokens (at most one per job) and the jobs whose generation ended at it (an
        end-of-turn token, or its ``max_new_tokens``); an ended job has ``token_ids``, ``text`` and
        ``finish_reason`` set already."""


class Backend(Protocol):
    """Runs the model: generation with per-token scores and capping, and teacher-forced audits."""

    model_id: str
    layer: int  # the monitor layer (output of decoder block L)
    axis: Any  # probes.artifacts.AxisArtifact
    capping: Any  # probes.artifacts.CappingConfig | None

    @property
    def template_system(self) -> str | None:
        """The system prompt the chat template puts in for messages without one, as the store records it
        (read each turn: a template may date it); None when it puts in none."""

    def validate(self, messages: list[dict], options: GenerationOptions) -> None:
        """Raise :class:`~probes.errors.InputError` for a chat the model cannot take."""

    def prompt_tokens(self, messages: list[dict]) -> int:
        """How many tokens the rendered chat (with the generation prompt) takes."""

    def run(self, jobs: Sequence[Job], sink: StepSink) -> None:
        """Generate for these jobs, reporting every step to ``sink``; returns when every job has ended.
        Safe to call from several threads (a backend serialises or merges the calls)."""

    def submit(self, job: Job, sink: StepSink) -> Future:
        """Schedule one job (it joins the running batch where the backend can); the future resolves,
        with None, when the job has ended, or with the error that stopped it."""

    def validate_transcript(self, messages: list[dict]) -> None:
        """Raise :class:`~probes.errors.InputError` for a finished conversation the model cannot score."""

    def score_conversation(self, messages: list[dict]) -> list:
        """Teacher-forced per-token scores of a finished conversation's assistant turns
        (:func:`probes.audit.score_conversation`)."""


__all__ = ["Backend", "Job", "StepSink", "TokenEvent"]
