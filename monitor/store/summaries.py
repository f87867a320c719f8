"""The session list's summaries, read in one query each for many sessions: the worst state each reached,
its drift tracker's last snapshot, its open alerts, and the tokens stored in all. A part of
:class:`~monitor.store.db.Store` (it owns the engine and the transactions)."""

from __future__ import annotations

from contextlib import AbstractContextManager

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from monitor.records import STATES
from monitor.store.schema import AlertRow, AlertUpdateRow, SessionRow, TurnContextRow, TurnRow


class Summaries:
    def _tx(self, write: bool = False) -> AbstractContextManager[Session]:
        raise NotImplementedError  # the Store's

    def peak_states(self, session_ids: list[str]) -> dict[str, str]:
        """The worst state each session reached: any assistant turn's end state or alert level."""
        if not session_ids:
            return {}
        ids = list(session_ids)
        with self._tx() as s:
            seen = list(s.execute(select(TurnRow.session_id, TurnRow.state).where(
                TurnRow.session_id.in_(ids), TurnRow.role == "assistant").distinct()))
            seen += list(s.execute(select(AlertRow.session_id, AlertRow.level).where(AlertRow.session_id.in_(ids)).distinct()))
        peak: dict[str, str] = {}
        for sid, state in seen:
            if STATES.index(state) >= STATES.index(peak.get(sid, "ok")):
                peak[sid] = state
        return peak

    def last_trackers(self, session_ids: list[str]) -> dict[str, dict]:
        """The drift tracker's snapshot after each session's latest assistant turn (sessions whose latest
        reply stored none, such as a reply recovered from the live tail of a replica that died, are left
        out); ``monitor.drift.snapshot_reading`` reads the state's statistic from it."""
        if not session_ids:
            return {}
        last = select(TurnRow.session_id, func.max(TurnRow.turn).label("last")).where(
            TurnRow.session_id.in_(list(session_ids)), TurnRow.role == "assistant").group_by(TurnRow.session_id).subquery()
        q = select(last.c.session_id, TurnContextRow.tracker).join(
            TurnContextRow, (TurnContextRow.session_id == last.c.session_id) & (TurnContextRow.turn == last.c.last))
        with self._tx() as s:
            return {sid: snap for sid, snap in s.execute(q) if isinstance(snap, dict)}

    def open_alert_counts(self, session_ids: list[str]) -> dict[str, int]:
        """Open alerts (neither acknowledged nor resolved) per session (sessions without any are left out)."""
        if not session_ids:
            return {}
        resolved = select(AlertUpdateRow.event_id).where(AlertUpdateRow.action == "resolved")
        q = (select(AlertRow.session_id, func.count()).where(AlertRow.session_id.in_(list(session_ids)),
                                                            AlertRow.acknowledged.is_(False),
                                                            AlertRow.event_id.not_in(resolved))
             .group_by(AlertRow.session_id))
        with self._tx() as s:
            return {sid: int(n) for sid, n in s.execute(q)}

    def token_count_total(self) -> int:
        """Tokens stored across all sessions."""
        with self._tx() as s:
            return int(s.scalar(select(func.coalesce(func.sum(SessionRow.n_tokens), 0))) or 0)
