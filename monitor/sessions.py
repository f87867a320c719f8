"""The sessions one engine holds in memory: an LRU registry that continues sessions from the store.

A session is created on first use. When the registry is full the least recently used session leaves
memory; the store keeps its turns, and a later request continues it through ``lookup`` (a restart,
another replica, an eviction): its source, policy, capping, next turn number, its drift tracker (restored
from the snapshot stored with its last turn, then any later stored scores replayed on top), its open
alerts, and the conversation as stored (to tell when a client's history differs from it).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from monitor.drift import DriftConfig, DriftTracker, Thresholds, parse_policy
from monitor.errors import InputError, StoreError
from monitor.records import new_id
from monitor.replay import replay, scored_turns

log = logging.getLogger(__name__)

# what a lookup returns for a stored session: Store.session_meta's dict
Lookup = Callable[[str], "dict | None"]


@dataclass
class Session:
    id: str
    tracker: DriftTracker
    policy: str
    source: str = "live"
    next_turn: int = 0  # record index of the next stored turn (user and assistant turns both count)
    capped: bool = False
    open_alerts: list[tuple[str, str]] = field(default_factory=list)  # (event id, level) not yet resolved
    conversation: list[str] = field(default_factory=list)  # message hashes of the stored conversation
    sent: set[str] = field(default_factory=set)  # message hashes already handed to the store
    served: bool = False  # this engine has opened a turn of it (since it was created or continued)


class SessionRegistry:
    def __init__(self, thresholds: Thresholds, drift: DriftConfig, policy: str, can_cap: bool,
                 lookup: Lookup | None = None, max_sessions: int = 10_000, cap_note: str | None = None):
        self.thresholds, self.drift, self.policy, self.can_cap = thresholds, drift, parse_policy(policy), can_cap
        self.cap_note = cap_note  # why the backend cannot cap although a capping config is loaded
        self.lookup, self.max_sessions = lookup, max_sessions
        self.sessions: OrderedDict[str, Session] = OrderedDict()  # most recently used last
        self._lock = threading.Lock()

    def get(self, session_id: str | None = None, policy: str | None = None, source: str = "live") -> Session:
        """The session with this id, created on first use (a new id when None)."""
        sid = session_id or new_id("sess")
        if (s := self._held(sid)) is not None:
            return s
        # read and replayed outside the lock: other sessions go on meanwhile
        known = self._stored(sid) if session_id else None
        fresh = self._new(sid, policy or (known or {}).get("policy"), source)
        if known:
            self._continue(fresh, known)
        with self._lock:
            if (s := self.sessions.get(sid)) is not None:  # a concurrent request continued it first
                self.sessions.move_to_end(sid)
                return s
            while len(self.sessions) >= self.max_sessions:
                self.sessions.popitem(last=False)  # the store keeps its turns; a later request continues it
            self.sessions[sid] = fresh
            return fresh

    def _held(self, sid: str) -> Session | None:
        with self._lock:
            s = self.sessions.get(sid)
            if s is not None:
                self.sessions.move_to_end(sid)
            return s

    def refresh(self, s: Session) -> bool:
        """Continue a session held in memory from the store again: another replica served it since this
        one did (a failover and back), so the tracker here is behind. False when the store does not know
        it (it goes on from memory)."""
        known = self._stored(s.id)
        if not known:
            return False
        s.policy = self.check_policy(known.get("policy") or s.policy)
        s.tracker = DriftTracker(self.thresholds, self.drift, s.policy)
        self._continue(s, known)
        return True

    def peek(self, session_id: str) -> Session | None:
        """The session if it is in memory (no lookup, no LRU change)."""
        return self.sessions.get(session_id)

    def check_policy(self, policy: str | None) -> str:
        pol = parse_policy(policy or self.policy)
        if pol == "cap" and not self.can_cap:
            raise InputError(f"policy 'cap' is refused: {self.cap_note}" if self.cap_note
                             else "policy 'cap' needs a capping config; none is loaded")
        return pol

    def _stored(self, sid: str) -> dict | None:
        if self.lookup is None:
            return None
        try:
            return self.lookup(sid)
        except StoreError as e:  # the store being down must not stop serving: a fresh session
            log.warning("could not look up session %s: %s", sid, e)
            return None

    def _new(self, sid: str, policy: str | None, source: str) -> Session:
        pol = self.check_policy(policy)
        return Session(sid, DriftTracker(self.thresholds, self.drift, pol), pol, source)

    def _continue(self, s: Session, known: dict) -> None:
        """Numbering goes on where the store left it; a capped session stays capped; the tracker goes on
        from its stored snapshot (cooldowns, dwell, open alert levels included), and the scores stored
        after it (a turn recovered from a dead replica's tail) are replayed (their events were published
        when they happened), as the dashboard replays them too."""
        s.source, s.next_turn = known.get("source") or s.source, int(known.get("next_turn") or 0)
        s.capped = bool(known.get("capped")) and self.can_cap
        s.open_alerts = [(str(e), str(lv)) for e, lv in known.get("open_alerts") or ()]
        s.conversation = list(known.get("conversation") or ())
        s.sent = set(s.conversation[:-1])  # the last is the reply: stored once a later input holds it
        if known.get("tracker"):
            try:
                s.tracker.restore(known["tracker"])
            except InputError as e:
                log.warning("session %s: stored drift state not usable (%s); replaying its scores", s.id, e)
        for _ in replay(s.tracker, scored_turns(known.get("history") or ())):
            pass
