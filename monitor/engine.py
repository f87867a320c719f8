"""The engine: batched generation with per-token scores, drift tracking and
per-session capping, publishing what happens to Redis.

One :class:`Engine` owns the model and the sessions. :meth:`Engine.run_batch`
generates for several chat requests at once; the score of every token comes
from the forward pass that produced it (:func:`probes.generation.generate`),
each token is fed to its session's :class:`~monitor.drift.DriftTracker` as it
is produced, and a session whose policy is ``cap`` is capped from the next
token on once it alerts at ``warning`` or worse, for the rest of the session.
:class:`Batcher` (in :mod:`monitor.batcher`) feeds it from many threads.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch

from monitor.drift import DriftConfig, DriftTracker, Thresholds, parse_policy
from monitor.records import AlertEvent, InterventionRecord, TurnRecord, new_id
from probes.artifacts import AxisArtifact, CappingConfig
from probes.generation import CapPlan, GenerationOptions, generate
from probes.models import LoadedModel, format_chat

log = logging.getLogger(__name__)



class Publisher(Protocol):
    def publish(self, record) -> None: ...
    def publish_live_many(self, items: list[tuple[str, dict]]) -> None: ...
    # optional: ``reserve_turns([(session_id, floor, n)]) -> [first]``, turn numbers shared by every replica


@dataclass
class Session:
    id: str
    tracker: DriftTracker
    policy: str
    source: str = "live"
    next_turn: int = 0  # record index of the next stored turn (user and assistant turns both count)
    capped: bool = False


@dataclass
class ChatRequest:
    session_id: str
    messages: list[dict]
    options: GenerationOptions = field(default_factory=GenerationOptions)
    policy: str | None = None  # None: the session's (or the deployment's) policy
    on_token: Callable[[dict], None] | None = None  # streaming: called once per content token


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

    @property
    def mean(self) -> float | None:
        return sum(self.scores) / len(self.scores) if self.scores else None


class Engine:
    def __init__(self, lm: LoadedModel, axis: AxisArtifact, thresholds: Thresholds,
                 capping: CappingConfig | None = None, drift: DriftConfig | None = None,
                 policy: str = "flag", publisher: Publisher | None = None,
                 session_lookup: Callable[[str], dict | None] | None = None, max_sessions: int = 10_000,
                 replica: str = ""):
        self.lm, self.axis, self.capping, self.thresholds = lm, axis, capping, thresholds
        self.drift = drift or DriftConfig()
        self.policy = parse_policy(policy)
        self.publisher = publisher
        self.replica = replica  # this process' id in live entries; its heartbeat tells others it is alive
        # continues sessions this process has not seen (a restart, another replica): {source, policy, capped, next_turn}
        self.session_lookup = session_lookup
        self.layer = axis.monitor_layer
        self.v = axis.unit()
        self.sessions: OrderedDict[str, Session] = OrderedDict()  # most recently used last
        self.max_sessions = max_sessions
        self.publish_errors = 0
        self._lock = threading.Lock()
        self._model_lock = threading.Lock()  # one forward pass at a time: hooks are installed on the shared model
        self._plan = (CapPlan(tuple(capping.layers), capping.vectors, torch.tensor(capping.taus))
                      if capping is not None else None)

    def session(self, session_id: str | None = None, policy: str | None = None, source: str = "live") -> Session:
        """The session with this id, created on first use (a new id when None)."""
        with self._lock:
            sid = session_id or new_id("sess")
            s = self.sessions.get(sid)
            if s is not None:
                self.sessions.move_to_end(sid)
            else:
                while len(self.sessions) >= self.max_sessions:
                    # the least recently used session leaves memory; the store keeps its turns and a later
                    # request continues it through session_lookup (its drift state rebuilt from them)
                    self.sessions.popitem(last=False)
                known = None
                if session_id and self.session_lookup is not None:
                    try:
                        known = self.session_lookup(sid)
                    except Exception as e:  # noqa: BLE001 - the store being down must not stop serving
                        log.warning("could not look up session %s: %s", sid, e)
                pol = parse_policy(policy or (known or {}).get("policy") or self.policy)
                if pol == "cap" and self.capping is None:
                    from monitor.errors import InputError

                    raise InputError("policy 'cap' needs a capping config; none is loaded")
                s = self.sessions[sid] = Session(sid, DriftTracker(self.thresholds, self.drift, pol), pol, source)
                if known:  # numbering goes on where the store left it; a capped session stays capped
                    s.source, s.next_turn = known.get("source") or source, int(known.get("next_turn") or 0)
                    s.capped = bool(known.get("capped")) and self.capping is not None
                    # the tracker's reference, running score and state, replayed from the stored turns (their
                    # events were published when they happened); as the dashboard replays them too
                    for turn, scores in known.get("history") or ():
                        s.tracker.update(list(scores), turn)
                        s.tracker.end_turn()
            return s

    def validate(self, request: ChatRequest) -> None:
        """Refuse a request the model cannot take, before it touches any session state."""
        from monitor.errors import InputError

        text = format_chat(self.lm.tokenizer, request.messages)  # validates roles, contents, the template
        limit = getattr(self.lm.model.config, "max_position_embeddings", None)
        if limit:
            n = len(self.lm.tokenizer(text, add_special_tokens=False)["input_ids"])
            if n + request.options.max_new_tokens > limit:
                raise InputError(f"prompt of {n} tokens + {request.options.max_new_tokens} new tokens exceeds "
                                 f"the model's {limit} positions")
        if request.policy == "cap" and self.capping is None:
            raise InputError("policy 'cap' needs a capping config; none is loaded")
        s = self.sessions.get(request.session_id)  # a known session's own checks, so they fail alone too
        if s is not None and s.source != "live":
            raise InputError(f"session {s.id!r} is a {s.source} session; chat in a new session")

    def run_batch(self, requests: list[ChatRequest]) -> list[ChatResult]:
        """Generate one assistant turn for each request (each a different session)."""
        from monitor.errors import InputError

        ids = [r.session_id for r in requests]
        if len(set(ids)) != len(ids):
            raise InputError("one batch cannot hold two requests of the same session")
        for r in requests:
            self.validate(r)
        sessions = [self.session(r.session_id, r.policy) for r in requests]
        for r, s in zip(requests, sessions):
            if s.source != "live":
                raise InputError(f"session {s.id!r} is a {s.source} session; chat in a new session")
            if r.policy and r.policy != s.policy:  # a request may change its session's policy from now on
                s.policy = s.tracker.policy = parse_policy(r.policy)
        opts = requests[0].options
        # reserve the stored turn numbers: the new user message (if any), then the reply
        counts = [1 + int(bool(r.messages) and r.messages[-1]["role"] == "user") for r in requests]
        user_turns, turns = [], []
        for s, n, first in zip(sessions, counts, self._reserve(sessions, counts)):
            user_turns.append(first if n == 2 else None)
            turns.append(first + n - 1)
            s.next_turn = first + n
        for r, s, ut in zip(requests, sessions, user_turns):  # recorded before the reply: a crash keeps it
            if ut is not None:
                self._publish(TurnRecord(s.id, ut, "user", r.messages[-1]["content"], self.layer, source=s.source,
                                         model_id=self.lm.model_id, policy=s.policy))
        opened = []
        try:
            for s, t in zip(sessions, turns):
                s.tracker.update([], t)  # opens the turn, so an empty reply still ends one
                opened.append(s)
            sink = _Sink(self, requests, sessions, turns)
            cap_rows = torch.tensor([s.capped for s in sessions])
            with self._model_lock:
                outs = generate(self.lm, [r.messages for r in requests], opts, axis=self.v,
                                monitor_layer=self.layer, capping=self._plan, cap_rows=cap_rows, sink=sink)
        except BaseException:
            for s in opened:  # close the half-scored turn so the session can go on
                s.tracker.end_turn()
            if "sink" in locals():  # the dashboard must not show these rows as generating forever
                sink.flush_live(list(range(len(sessions))), final=True)
            raise
        summaries = [s.tracker.end_turn() for s in sessions]  # every session is consistent before any I/O
        results = []
        rest = [k for k in range(len(sessions)) if not sink.done[k]]  # rows that ran to max_new_tokens
        sink.done = [True] * len(sessions)
        sink.flush_live(rest)  # their replies are complete too
        for k, (r, s, g, summary) in enumerate(zip(requests, sessions, outs, summaries)):
            turn = turns[k]
            capped_any = any(g.cap_flags)
            self._publish(TurnRecord(s.id, turn, "assistant", g.text, self.layer, g.tokens, g.scores,
                                     g.pre_cap_scores if capped_any else None, g.cap_flags if capped_any else None,
                                     summary.state, summary.running, s.source, self.lm.model_id, policy=s.policy))
            results.append(ChatResult(s.id, turn, self.layer, g.text, g.tokens, g.scores, g.pre_cap_scores,
                                      g.cap_flags, summary.state, summary.running, s.capped, g.finish_reason,
                                      sink.alerts[k], sink.interventions[k], summary.drift, summary.reference))
        # only now, with every turn record handed over, are the tails final: until then a dead replica's
        # reply (even one whose row ended early in the batch) is still recovered from the tail
        sink.flush_live(list(range(len(sessions))), final=True)
        return results

    def _reserve(self, sessions: list[Session], counts: list[int]) -> list[int]:
        """The first of ``counts[k]`` new turn numbers for each session. From Redis where the publisher
        offers it (one atomic counter per session that every replica shares, so a session continued on
        another replica, or after a restart, never reuses a number the store has not seen yet); else
        from memory."""
        floors = [s.next_turn for s in sessions]
        reserve = getattr(self.publisher, "reserve_turns", None)
        if reserve is not None:
            try:
                got = reserve([(s.id, f, n) for s, f, n in zip(sessions, floors, counts)])
                if got is not None and len(got) == len(sessions):
                    return [max(int(g), f) for g, f in zip(got, floors)]
            except Exception as e:  # noqa: BLE001 - Redis down: this replica's own count
                log.warning("turn numbers from memory (Redis: %s)", e)
        return floors

    def score_transcript(self, session_id: str | None, messages: list[dict], source: str = "audit",
                         policy: str | None = None) -> dict:
        """Score a finished conversation by teacher forcing (audit and shadow mode).

        Messages the session has already recorded (a shadowed conversation that
        grows turn by turn) are not recorded again; the new turns are tracked and
        published like live ones. Stored turn numbers are message indices. Capping
        cannot act on text that exists already, so policy ``cap`` alerts like ``flag``.
        Returns the ``axiswatch audit --json`` object plus the drift state."""
        from probes.audit import score_conversation

        pol = parse_policy(policy or self.policy)
        s = self.session(session_id or new_id(source), "flag" if pol == "cap" else pol, source)
        if s.source != source:
            from monitor.errors import InputError

            raise InputError(f"session {s.id!r} is a {s.source} session; give the {source} transcript another id")
        with self._model_lock:
            turns = score_conversation(self.lm, messages, self.v, self.layer)
        scored = {t.index: t for t in turns}
        out_turns, alerts = [], []
        for i, m in enumerate(messages):
            if i < s.next_turn:
                continue
            t = scored.get(i)
            if m["role"] != "assistant" or t is None:
                self._publish(TurnRecord(s.id, i, m["role"], m["content"], self.layer, source=source,
                                         model_id=self.lm.model_id, policy=s.policy))
                continue
            for ev in s.tracker.update(t.scores, i):
                if ev.kind == "alert":
                    alerts.append(AlertEvent(s.id, i, ev.token_index, ev.level, ev.running, ev.threshold, policy=s.policy))
            summary = s.tracker.end_turn()
            for a in alerts:
                if a.turn == i:
                    self._publish(a)
            self._publish(TurnRecord(s.id, i, "assistant", m["content"], self.layer, t.tokens, t.scores,
                                     state=summary.state, running=summary.running, source=source,
                                     model_id=self.lm.model_id, policy=s.policy))
            out_turns.append(t.as_dict())
        s.next_turn = max(s.next_turn, len(messages))
        return {"id": s.id, "model": self.lm.model_id, "layer": self.layer, "turns": out_turns,
                "state": s.tracker.state, "running": s.tracker.running, "drift": s.tracker.drift,
                "alerts": [a.to_dict() for a in alerts]}

    def _publish(self, record) -> None:
        """Hand a record to the publisher (the outbox, which buffers while Redis is down). A failure
        is logged and counted, never raised into generation."""
        if self.publisher is None:
            return
        try:
            self.publisher.publish(record)
        except Exception as e:  # noqa: BLE001 - Redis errors of any kind
            self.publish_errors += 1
            log.error("could not publish %s of session %s: %s", type(record).__name__, record.session_id, e)


class _Sink:
    """Feeds each produced token to its session's tracker; asks for capping where the policy says so."""

    def __init__(self, engine: Engine, requests: list[ChatRequest], sessions: list[Session], turns: list[int]):
        self.e, self.requests, self.sessions, self.turns = engine, requests, sessions, turns
        b = len(requests)
        self.ids: list[list[int]] = [[] for _ in range(b)]
        # per row, the tokens not yet in the live tail: (index, score, text piece, capped, pre-cap score)
        self.live: list[list[tuple[int, float, str, bool, float]]] = [[] for _ in range(b)]
        self.alerts: list[list[AlertEvent]] = [[] for _ in range(b)]
        self.interventions: list[list[InterventionRecord]] = [[] for _ in range(b)]
        self.offsets = [(0, 0)] * b  # streaming detokenisation window per row: (context start, emitted up to)
        self.done = [False] * b  # the row's turn has ended (its "ended" live entry is out)
        self.ended: list[int] = []  # rows whose turn ended at this step

    def put(self, step, tokens, scores, content, pre_scores=None):
        more = torch.zeros(len(self.sessions), dtype=torch.bool)
        calls = []
        for k, s in enumerate(self.sessions):
            if not bool(content[k]):
                if not self.done[k]:  # this row just ended its turn: say so now, not at the end of the batch
                    self.done[k] = True
                    self.ended.append(k)
                continue
            score = float(scores[k])
            # the tracker follows the score before the monitor layer's own cap: floored there, a capped
            # session would otherwise look safe however far the model itself keeps drifting. Capped layers
            # below the monitor layer have already acted on it (one forward pass has no uncapped copy):
            # the tracker then follows the capped model's state there, which is not floored and can fall
            seen = float(pre_scores[k]) if pre_scores is not None else score
            on = s.capped  # capping acts on this token only if it was on before it
            idx = len(self.ids[k])
            self.ids[k].append(int(tokens[k]))
            for ev in s.tracker.update([seen], self.turns[k]):
                if ev.kind == "alert":
                    a = AlertEvent(s.id, self.turns[k], idx, ev.level, ev.running, ev.threshold, policy=s.policy)
                    self.alerts[k].append(a)
                    self.e._publish(a)  # alerted now, not at the end of the turn
                elif ev.kind == "cap" and not s.capped:
                    s.capped = True
                    more[k] = True
                    cfg = self.e.capping
                    iv = InterventionRecord(s.id, self.turns[k], idx + 1, cfg.id, self.e.thresholds.as_dict(),
                                            list(cfg.layers))
                    self.interventions[k].append(iv)
                    self.e._publish(iv)
            piece = self._piece(k)
            self.live[k].append((idx, score, piece, on, seen))
            if self.requests[k].on_token is not None:
                calls.append((k, {"session_id": s.id, "token_index": idx, "token": piece, "score": score,
                                  "state": s.tracker.state, "drift": s.tracker.drift, "capped": s.capped}))
        self.flush_live([k for k in range(len(self.sessions)) if self.live[k]])  # one round trip per step
        for k, tok in calls:  # after the live tail has them: what a client saw is never lost
            self.requests[k].on_token(tok)
        return more

    def _piece(self, k: int) -> str:
        """The text the row's newest token adds, decoding only a short window (not the whole reply)
        each step: the tokens since the last emitted piece plus the piece before them as context,
        so tokenizers that drop a leading space at a decode boundary still come out right."""
        ids, tok = self.ids[k], self.e.lm.tokenizer
        start, read = self.offsets[k]
        prefix = tok.decode(ids[start:read], skip_special_tokens=True)
        text = tok.decode(ids[start:], skip_special_tokens=True)
        if len(text) <= len(prefix) or text.endswith("\ufffd"):  # nothing yet, or half a multi-byte character
            return ""
        self.offsets[k] = (read, len(ids))
        return text[len(prefix):]

    def flush_live(self, rows: list[int], final: bool = False) -> None:
        """Publish the rows' new token scores (and the rows that just ended) in one round trip.

        ``ended``: the row's reply is complete; ``final`` (only once its turn record is handed to the
        publisher): nothing of this turn is left to recover from the tail."""
        pub = self.e.publisher
        ended, self.ended = set(self.ended), []
        rows = sorted(set(rows) | ended)
        if pub is None or not rows:
            return
        items = []
        for k in rows:
            s = self.sessions[k]
            items.append((s.id, {"kind": "tokens", "session_id": s.id, "turn": self.turns[k],
                                 "start": self.live[k][0][0] if self.live[k] else len(self.ids[k]),
                                 "scores": [x[1] for x in self.live[k]], "tokens": [x[2] for x in self.live[k]],
                                 "cap_flags": [x[3] for x in self.live[k]],
                                 # what the tracker saw, where capping acted (else the scores themselves)
                                 "pre_cap_scores": ([x[4] for x in self.live[k]] if any(x[3] for x in self.live[k])
                                                    else None),
                                 "state": s.tracker.state, "running": s.tracker.running, "capped": s.capped,
                                 "ended": final or self.done[k], "final": final,
                                 "replica": self.e.replica, "layer": self.e.layer,
                                 "model_id": self.e.lm.model_id}))
            self.live[k] = []
        try:  # the live tail is a display buffer: a failure must not stop generation
            pub.publish_live_many(items)
        except Exception as e:  # noqa: BLE001
            log.warning("live tail of %d session(s) not published: %s", len(items), e)

    def end(self):
        pass
