"""Erasure and retention: a session's conversation removed from the store, its hash chain kept verifiable.
A part of :class:`~monitor.store.db.Store` (it owns the engine and the transactions).

:meth:`Erasure.erase_session` removes, in one transaction under the session row's lock, everything that
holds the conversation: the turns (reply texts, tokens, per-token scores), their contexts (input heads,
drift trackers), the messages (every text a turn was given), the alerts' excerpts (the alert itself stays:
level, turn, score, detector, delivery and acknowledgements) and the outbox's spilled records of the
session. A **tombstone** takes their place: a record of the session's chain (so editing or deleting it is
caught) that lists each removed record's kind, key and content digest, why, by whom and when.
``sessions verify`` then passes a link whose record is gone only where a tombstone names exactly the content
that link holds, and reports the erasures. The session row stays (its id, counters, state, ``erased_at``).

A record created before the erasure and delivered to the store after it (a lagging persistence worker,
a replay) is not stored again: :func:`after_erasure` drops such turns and blanks such alerts' excerpts,
and a tombstone of scope ``late`` names the dropped turns' messages (:func:`late_tombstones`), which a
later turn's input may continue from.

:meth:`Erasure.purge` erases every session whose last activity is older than a cut-off (retention:
``axiswatch sessions purge --older-than 30d``, ``AXISWATCH_RETENTION_DAYS`` in the persistence worker).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session

from monitor.errors import NotFoundError
from monitor.records import TurnRecord
from monitor.store.chain import append_links
from monitor.store.rows import chain_key, content_digest, is_name, is_num, message_rows, need, raw_row
from monitor.store.schema import (
    AlertRow,
    MessageRow,
    SessionRow,
    SpillRow,
    TombstoneRow,
    TurnContextRow,
    TurnRow,
    table,
)

SCOPES = ("erase", "retention")  # and "late": what after_erasure dropped (late_tombstones)


def stale(created_at: Any, erased_at: float | None) -> bool:
    """Whether a record created at ``created_at`` belongs to what an erasure at ``erased_at`` removed."""
    return erased_at is not None and (not is_num(created_at) or float(created_at) <= erased_at)


def after_erasure(erased: dict[str, float], turns: list[TurnRecord],
                  alert_rows: list[dict]) -> tuple[list[TurnRecord], list[dict], list[TurnRecord]]:
    """The turns still to store, the alert rows as to store them, and the turns dropped, for sessions erased
    at ``erased`` (session id -> time): a turn created before its session's erasure is dropped, such an
    alert keeps no excerpt. Pure."""
    if not erased:
        return turns, alert_rows, []
    kept = [t for t in turns if not stale(t.created_at, erased.get(t.session_id))]
    dropped = [t for t in turns if stale(t.created_at, erased.get(t.session_id))]
    rows = [{**a, "excerpt": None} if a["session_id"] in erased and stale(a["created_at"], erased[a["session_id"]])
            else a for a in alert_rows]
    return kept, rows, dropped


def late_tombstones(dropped: list[TurnRecord], now: float) -> list[dict]:
    """A tombstone per session for the turns :func:`after_erasure` dropped (created before an erasure,
    delivered after it): their input messages are never stored, and a later turn's input may continue from
    them, so ``verify`` must know their hashes were erased. Pure."""
    by_session: dict[str, list[TurnRecord]] = {}
    for t in dropped:
        by_session.setdefault(t.session_id, []).append(t)
    out = []
    for sid, ts in sorted(by_session.items()):
        hashes = sorted({m["hash"] for t in ts for m in message_rows(t)})
        out.append(dict(id=f"tomb_{uuid.uuid4().hex}", session_id=sid, scope="late", by="axiswatch",
                        reason="records created before the session's erasure and delivered after it: not stored",
                        records=[["message", h, h] for h in hashes],
                        counts=dict(turns=len(ts), contexts=0, messages=len(hashes), excerpts=0, spilled=0,
                                    tokens=sum(len(t.tokens) for t in ts)),
                        created_at=now))
    return out


class Erasure:
    dialect: str

    def _tx(self, write: bool = False) -> AbstractContextManager[Session]:
        raise NotImplementedError  # the Store's

    def erase_session(self, session_id: str, reason: str, by: str, scope: str = "erase",
                      now: float | None = None) -> dict[str, Any]:
        """Remove the session's conversation (see the module); ``{"session_id", "erased", "tombstone",
        "counts"}``: ``erased`` False (and no tombstone) when nothing was left to remove."""
        need(scope in SCOPES, f"scope must be one of {SCOPES}, not {scope!r}")
        need(is_name(by) and len(by) <= 200, f"an erasure needs who asked for it (by, 1-200 characters), not {by!r}")
        need(isinstance(reason, str) and 0 < len(reason.strip()) <= 2000,
             "an erasure needs a reason (1-2000 characters): it is kept in the audit trail")
        now = time.time() if now is None else now
        with self._tx(write=True) as s:
            row = s.scalars(select(SessionRow).where(SessionRow.id == session_id).with_for_update()).first()
            if row is None:
                raise NotFoundError(f"no session {session_id!r} in the store")
            records: list[list[str]] = []
            counts = dict(turns=0, contexts=0, messages=0, excerpts=0, spilled=0, tokens=0)
            for kind, model, name in (("turn", TurnRow, "turns"), ("context", TurnContextRow, "contexts")):
                for obj in s.scalars(select(model).where(model.session_id == session_id)):
                    r = raw_row(obj)
                    records.append([kind, chain_key(kind, r), content_digest(kind, r)])
                    counts[name] += 1
                    counts["tokens"] += int(r.get("n_tokens") or 0) if kind == "turn" else 0
                s.execute(delete(table(model)).where(model.session_id == session_id))
            hashes = list(s.scalars(select(MessageRow.hash).where(MessageRow.session_id == session_id)))
            records += [["message", h, h] for h in sorted(hashes)]  # a message's hash is its content's digest
            counts["messages"] = len(hashes)
            s.execute(delete(table(MessageRow)).where(MessageRow.session_id == session_id))
            relink = []
            for obj in s.scalars(select(AlertRow).where(AlertRow.session_id == session_id, AlertRow.excerpt.is_not(None),
                                                        AlertRow.excerpt != "")):
                before = raw_row(obj)
                records.append(["alert", chain_key("alert", before), content_digest("alert", before)])
                relink.append(("alert", {**before, "excerpt": None}))
                counts["excerpts"] += 1
            if relink:
                s.execute(update(table(AlertRow)).where(AlertRow.event_id.in_([r["event_id"] for _, r in relink]))
                          .values(excerpt=None))
            counts["spilled"] = self._drop_spilled(s, session_id)
            row.erased_at = now
            if not records:
                return {"session_id": session_id, "erased": False, "tombstone": None, "counts": counts}
            tomb = dict(id=f"tomb_{uuid.uuid4().hex}", session_id=session_id, scope=scope, reason=reason.strip(),
                        by=by, records=records, counts=counts, created_at=now)
            s.add(TombstoneRow(**tomb))
            s.flush()
            append_links(s, [*relink, ("tombstone", tomb)], now)
        return {"session_id": session_id, "erased": True, "tombstone": tomb["id"], "counts": counts}

    def _drop_spilled(self, s: Session, session_id: str) -> int:
        """Delete the outbox's spilled records of one session (records kept while Redis was down)."""
        needle = f'"session_id":{json.dumps(session_id)}'
        ids = [i for i, data in s.execute(select(SpillRow.id, SpillRow.data)
                                          .where(SpillRow.data.contains(needle, autoescape=True)))
               if json.loads(data).get("session_id") == session_id]
        if ids:
            s.execute(delete(table(SpillRow)).where(SpillRow.id.in_(ids)))
        return len(ids)

    def expired_sessions(self, older_than_s: float, now: float | None = None, limit: int | None = None) -> list[str]:
        """Sessions whose last activity is older than ``older_than_s`` seconds and that hold content not yet
        erased (never erased, or written to again after an erasure), oldest first."""
        need(is_num(older_than_s) and older_than_s > 0, f"older_than_s must be positive seconds, not {older_than_s!r}")
        cutoff = (time.time() if now is None else now) - older_than_s
        q = (select(SessionRow.id).where(SessionRow.updated_at < cutoff,
                                         or_(SessionRow.erased_at.is_(None), SessionRow.erased_at < SessionRow.updated_at))
             .order_by(SessionRow.updated_at, SessionRow.id))
        with self._tx() as s:
            return list(s.scalars(q if limit is None else q.limit(limit)))

    def purge(self, older_than_s: float, reason: str, by: str = "retention", now: float | None = None,
              progress: Callable[[str], None] | None = None, limit: int | None = None) -> dict[str, Any]:
        """Erase (scope ``retention``) every session :meth:`expired_sessions` names (the ``limit`` oldest),
        one transaction each,
        calling ``progress(session id)`` after each; ``{"sessions": [ids erased], "records": n, "tokens": n,
        "checked": n}``."""
        ids = self.expired_sessions(older_than_s, now=now, limit=limit)
        done: list[str] = []
        records = tokens = 0
        for sid in ids:
            r = self.erase_session(sid, reason=reason, by=by, scope="retention")
            if r["erased"]:
                done.append(sid)
                records += sum(v for k, v in r["counts"].items() if k != "tokens")
                tokens += r["counts"]["tokens"]
            if progress is not None:
                progress(sid)
        return {"sessions": done, "records": records, "tokens": tokens, "checked": len(ids)}

    def erasures(self, session_id: str) -> list[dict[str, Any]]:
        """The session's tombstones, oldest first (without the digests they carry)."""
        with self._tx() as s:
            return [{k: v for k, v in raw_row(t).items() if k != "records"} | {"records": len(t.records)}
                    for t in s.scalars(select(TombstoneRow).where(TombstoneRow.session_id == session_id)
                                       .order_by(TombstoneRow.created_at))]
