"""The store's reads of sessions and alerts as plain dicts: the session list, one session whole (turns,
alerts with their lifecycle, interventions, messages, erasures), the alert feed, and what an engine
continues a session from. A part of :class:`~monitor.store.db.Store` (it owns the engine and the
transactions)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from monitor.records import SOURCES, STATES
from monitor.store.rows import DELIVERY_STATUSES, LEVELS, from_row, is_int, is_num, need, one_of, raw_row
from monitor.store.schema import (
    AlertRow,
    AlertUpdateRow,
    InterventionRow,
    MessageRow,
    SessionRow,
    TurnContextRow,
    TurnRow,
)
from monitor.store.views import continuation, lifecycle


class Reads:
    def _tx(self, write: bool = False) -> AbstractContextManager[Session]:
        raise NotImplementedError  # the Store's

    erasures: Callable[[str], list[dict[str, Any]]]  # the Store's (monitor/store/erasure.py); declared only

    def list_sessions(self, state: str | Sequence[str] | None = None, source: str | Sequence[str] | None = None,
                      since: float | None = None, limit: int = 100,
                      active_since: float | None = None) -> list[dict[str, Any]]:
        """Sessions newest first (by created_at); ``since`` keeps those created at or after it.
        ``active_since`` keeps those updated at or after it and orders by the latest update.
        ``state`` and ``source``: one value or several (any of them)."""
        states = (state,) if state is None or isinstance(state, str) else tuple(state)
        sources = (source,) if source is None or isinstance(source, str) else tuple(source)
        for v in states:
            one_of(v, STATES, "state")
        for v in sources:
            one_of(v, SOURCES, "source")
        for name, t in (("since", since), ("active_since", active_since)):
            need(t is None or is_num(t), f"{name} must be epoch seconds, not {t!r}")
        need(is_int(limit) and limit > 0, f"limit must be a positive integer, not {limit!r}")
        where: list[Any] = [c.in_(vs) for c, vs in ((SessionRow.state, states), (SessionRow.source, sources)) if None not in vs]
        where += [SessionRow.created_at >= since] if since is not None else []
        where += [SessionRow.updated_at >= active_since] if active_since is not None else []
        newest = SessionRow.created_at if active_since is None else SessionRow.updated_at
        q = select(SessionRow).where(*where).order_by(newest.desc(), SessionRow.id.desc())
        with self._tx() as s:
            return [from_row(r) for r in s.scalars(q.limit(limit))]

    def get_session(self, session_id: str) -> dict[str, Any] | None:
        """The session with its turns (scores decoded; an assistant turn with ``input_head``,
        ``diverged_at`` and ``tracker`` where stored), alerts (each with ``status``: open, acknowledged or
        resolved, and its ``updates``), interventions, ``messages`` (hash -> node: ``conversation.walk``
        gives any turn's input) and ``peak_state``; None if unknown."""
        with self._tx() as s:
            if (row := s.get(SessionRow, session_id)) is None:
                return None
            d = from_row(row)
            for key, model, order in (("turns", TurnRow, ("turn",)), ("alerts", AlertRow, ("turn", "token_index")),
                                      ("interventions", InterventionRow, ("turn", "token_index", "config_id")),
                                      ("updates", AlertUpdateRow, ("created_at", "action"))):
                q = select(model).where(model.session_id == session_id)
                q = q.order_by(*(getattr(model, c) for c in order), model.created_at)
                d[key] = [from_row(r) for r in s.scalars(q)]
            ctx = {c.turn: raw_row(c) for c in s.scalars(select(TurnContextRow).where(TurnContextRow.session_id == session_id))}
            d["messages"] = {m.hash: {"h": m.hash, "p": m.parent, "role": m.role, "content": m.content}
                             for m in s.scalars(select(MessageRow).where(MessageRow.session_id == session_id))}
        d["erasures"] = self.erasures(session_id) if d["erased_at"] is not None else []
        for t in d["turns"]:
            c = ctx.get(t["turn"]) or {}
            t.update(input_head=c.get("input_head"), diverged_at=c.get("diverged_at"), tracker=c.get("tracker"))
        lifecycle(d)
        return d
    def list_alerts(self, status: str | None = None, limit: int = 100, session_id: str | None = None,
                    level: str | None = None, acknowledged: bool | None = None) -> list[dict]:
        """Alerts newest first, optionally only those with one delivery status, of one session, at one
        level, or (un)acknowledged."""
        one_of(status, DELIVERY_STATUSES, "delivery status")
        one_of(level, LEVELS, "level")
        need(is_int(limit) and limit > 0, f"limit must be a positive integer, not {limit!r}")
        where = [c == v for c, v in ((AlertRow.delivery_status, status), (AlertRow.session_id, session_id),
                                     (AlertRow.level, level)) if v]
        where += [AlertRow.acknowledged.is_(acknowledged)] if acknowledged is not None else []
        q = select(AlertRow).where(*where).order_by(AlertRow.created_at.desc(), AlertRow.event_id)
        with self._tx() as s:
            d = {"alerts": [from_row(a) for a in s.scalars(q.limit(limit))], "turns": []}
            ids = [a["event_id"] for a in d["alerts"]]
            d["updates"] = [from_row(u) for u in s.scalars(select(AlertUpdateRow).where(AlertUpdateRow.event_id.in_(ids)))]
        lifecycle(d)
        return d["alerts"]

    def turn_meta(self, session_id: str, turn: int) -> dict[str, Any] | None:
        """A stored turn's role and token count (None when not stored)."""
        with self._tx() as s:
            row = s.execute(select(TurnRow.role, TurnRow.n_tokens).where(TurnRow.session_id == session_id,
                                                                         TurnRow.turn == turn)).first()
            return None if row is None else {"role": row[0], "n_tokens": int(row[1])}

    def token_count(self, session_id: str) -> int:
        """Tokens stored for a session (0 when unknown)."""
        with self._tx() as s:
            return s.scalar(select(SessionRow.n_tokens).where(SessionRow.id == session_id)) or 0

    def session_meta(self, session_id: str) -> dict[str, Any] | None:
        """What a restarted engine needs to continue a session (None when unknown): source, policy,
        capped, the next free turn number, ``tracker`` (the drift tracker's snapshot after the last
        turn that stored one) and ``history``: the stored scored turns after it, for the engine to replay on
        top (:func:`monitor.replay.scored_turns`); ``open_alerts``: (event id,
        level) of the alerts not yet resolved; ``conversation``: the message hashes of the stored
        conversation (the last assistant turn's input and its reply), to tell an edited history."""
        d = self.get_session(session_id)
        return None if d is None else continuation(d)
