"""The store: the one module that owns the database.

Engine, transactions, migrating, reads and writes. The typed models and migrations are in
monitor/store/schema.py; checking records and encoding them as rows (per-token scores as little-endian float32
bytes per turn) is in monitor/store/rows.py. SQLite by default (WAL, one writer at a time) or PostgreSQL
through the same URL. Batched writes, one transaction each, idempotent by the records' keys
(monitor/records.py). Reads return plain dicts (no torch, no numpy). Times are float epoch seconds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from monitor.errors import InputError, NotFoundError, StoreError
from monitor.records import AlertEvent, AlertUpdate, InterventionRecord, TurnRecord
from monitor.store.chain import append_links, seal_unlinked
from monitor.store.chain import verify as verify_chain
from monitor.store.erasure import Erasure, after_erasure, late_tombstones
from monitor.store.reads import Reads
from monitor.store.rows import (
    DELIVERY_STATUSES,
    checked_records,
    context_row,
    is_int,
    is_name,
    is_num,
    message_rows,
    need,
    one_of,
    raw_row,
    to_row,
)
from monitor.store.schema import (
    CHAIN_VERSION,
    MIGRATIONS,
    SCHEMA_VERSION,
    AlertRow,
    AlertUpdateRow,
    Base,
    InterventionRow,
    MessageRow,
    SchemaVersion,
    SessionRow,
    TombstoneRow,
    TurnContextRow,
    TurnRow,
    table,
)
from monitor.store.spill import Spill
from monitor.store.summaries import Summaries

log = logging.getLogger(__name__)
DEFAULT_URL = "sqlite:///axiswatch.db"


# ---------------------------------------------------------------- the store
class Store(Reads, Summaries, Spill, Erasure):
    """The database behind axiswatch: ``Store(url)``, ``migrate()`` once at start, ``close()``."""

    def __init__(self, url: str = DEFAULT_URL, must_exist: bool = False) -> None:
        """``must_exist``: refuse a SQLite file that is not there (commands that only read a deployment's
        store), rather than creating an empty database in the wrong directory."""
        try:
            u = make_url(url)
        except ArgumentError as e:
            raise InputError(f"database URL {url!r} is not valid: {e}") from None
        if u.drivername in ("postgresql", "postgres"):
            u = u.set(drivername="postgresql+psycopg")
        self.dialect = u.get_backend_name()
        if self.dialect not in ("sqlite", "postgresql"):
            raise InputError(f"database URL {url!r}: only sqlite:/// and postgresql:// are supported")
        if self.dialect == "sqlite" and u.database not in (None, "", ":memory:") and not u.database.startswith("file:"):
            path = Path(u.database).expanduser()
            if must_exist and not path.is_file():
                raise InputError(f"no axiswatch database at {path.resolve()}: point --database-url or "
                                 "AXISWATCH_DATABASE_URL at the deployment's store (serve creates it on first run)")
            path.parent.mkdir(parents=True, exist_ok=True)
        self.url = u.render_as_string(hide_password=True)
        self.engine = create_engine(u, pool_pre_ping=self.dialect == "postgresql")
        if self.dialect == "sqlite":  # writers take the lock at BEGIN; readers get a WAL snapshot, never blocking it
            @event.listens_for(self.engine, "connect")
            def _connect(dbapi_conn: Any, _: Any) -> None:
                dbapi_conn.isolation_level = None  # the driver's own BEGIN handling off: _begin emits it
                # secure_delete: an erased conversation's text is overwritten, not left in free pages
                for pragma in ("journal_mode=WAL", "foreign_keys=ON", "busy_timeout=10000", "synchronous=NORMAL",
                               "secure_delete=ON"):
                    dbapi_conn.execute(f"PRAGMA {pragma}")

            @event.listens_for(self.engine, "begin")
            def _begin(conn: Connection) -> None:
                immediate = conn.get_execution_options().get("axiswatch_write")
                conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        self._write = sessionmaker(self.engine.execution_options(axiswatch_write=True), expire_on_commit=False)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _tx(self, write: bool = False) -> Iterator[Session]:  # commits, or rolls everything back
        try:
            with (self._write if write else self._read).begin() as s:
                yield s
        except SQLAlchemyError as e:
            msg = (str(getattr(e, "orig", None) or e).strip().splitlines() or [type(e).__name__])[0]
            hint = " (run Store.migrate() first)" if "no such table" in msg or "does not exist" in msg else ""
            raise StoreError(f"database error on {self.url}: {msg}{hint}") from e

    def migrate(self) -> int:
        """Apply the missing migrations in order, in one transaction; the version reached."""
        with self._tx(write=True) as s:
            conn = s.connection()
            if self.dialect == "postgresql":  # several replicas may start at once
                conn.exec_driver_sql("SELECT pg_advisory_xact_lock(727011)")
            table(SchemaVersion).create(conn, checkfirst=True)
            current = s.scalar(select(func.max(SchemaVersion.version))) or 0
            if current > SCHEMA_VERSION:
                raise StoreError(f"database {self.url} is at schema version {current}, newer than the "
                                 f"{SCHEMA_VERSION} this axiswatch knows: upgrade axiswatch to use it")
            for version in range(current + 1, SCHEMA_VERSION + 1):
                MIGRATIONS[version - 1](conn)
                conn.execute(insert(table(SchemaVersion)).values(version=version, applied_at=time.time()))
            if 0 < current < CHAIN_VERSION <= SCHEMA_VERSION:  # the records from before the trail, linked now
                n = seal_unlinked(s, time.time())
                log.info("schema %d -> %d: %d records written before the audit trail linked into it",
                         current, SCHEMA_VERSION, n)
        return SCHEMA_VERSION

    def _insert(self, s: Session, model: type[Base], rows: list[dict], keys: tuple[str, ...],
                longer_wins: bool = False) -> list[dict]:
        """INSERT ... ON CONFLICT DO NOTHING RETURNING: the rows actually written. ``longer_wins`` (turns):
        a row with more tokens replaces the stored one (a whole reply over the part a recovery stored from
        the live tail); a replay of the same record changes nothing."""
        if not rows:
            return []
        ins = (postgresql.insert if self.dialect == "postgresql" else sqlite.insert)(table(model))
        best: dict[tuple, dict] = {}  # one row per key (PostgreSQL refuses to update a row twice in one statement)
        for r in rows:
            k = tuple(r[c] for c in keys)
            if k not in best or (longer_wins and r["n_tokens"] > best[k]["n_tokens"]):
                best[k] = r
        if longer_wins:
            cols = {c.name: ins.excluded[c.name] for c in table(model).columns if c.name not in ("id", *keys)}
            t = table(model).c
            stmt = ins.on_conflict_do_update(index_elements=list(keys), set_=cols,
                                             where=(ins.excluded.n_tokens > t.n_tokens) & (ins.excluded.role == t.role))
        else:
            stmt = ins.on_conflict_do_nothing(index_elements=list(keys))
        written = s.execute(stmt.returning(*(table(model).c[k] for k in keys)), list(best.values())).all()
        return [best[tuple(w)] for w in written]

    def write(self, turns: Iterable[TurnRecord] = (), alerts: Iterable[AlertEvent] = (),
              interventions: Iterable[InterventionRecord] = (), updates: Iterable[AlertUpdate] = ()) -> dict[str, int]:
        """One idempotent transaction for the whole batch; the counts of rows actually inserted. Every
        row written is linked into its session's hash chain (monitor/store/chain.py) in the same
        transaction; a turn's input messages are stored once per session."""
        turns, alerts = checked_records(TurnRecord, turns), checked_records(AlertEvent, alerts)
        interventions = checked_records(InterventionRecord, interventions)
        updates = checked_records(AlertUpdate, updates)
        counts = dict(sessions=0, turns=0, alerts=0, interventions=0, updates=0)
        if not (recs := [*turns, *alerts, *interventions, *updates]):
            return counts
        ids, now = sorted({r.session_id for r in recs}), time.time()
        born: dict[str, float] = {}
        for r in (r for r in recs if is_num(r.created_at)):
            born[r.session_id] = min(born.get(r.session_id, r.created_at), r.created_at)
        turn_rows = {id(t): to_row(t) for t in turns}
        alert_rows = [to_row(a) for a in alerts]
        with self._tx(write=True) as s:
            new = [dict(id=i, created_at=float(born.get(i, now)), updated_at=now) for i in ids]
            counts["sessions"] = len(self._insert(s, SessionRow, new, ("id",)))
            # Lock the session rows (PostgreSQL) so that concurrent batches recompute counters in turn.
            erased = {sid: at for sid, at in s.execute(select(SessionRow.id, SessionRow.erased_at).where(
                SessionRow.id.in_(ids)).order_by(SessionRow.id).with_for_update()) if at is not None}
            turns, alert_rows, dropped = after_erasure(erased, turns, alert_rows)  # nothing erased comes back
            contexts = [c for c in map(context_row, turns) if c is not None]
            self._insert(s, MessageRow, [m for t in turns for m in message_rows(t)], ("session_id", "hash"))
            written = {
                "turn": self._insert(s, TurnRow, [turn_rows[id(t)] for t in turns], ("session_id", "turn"),
                                     longer_wins=True),
                "context": self._insert(s, TurnContextRow, contexts, ("session_id", "turn")),
                "alert": self._insert(s, AlertRow, alert_rows, ("event_id",)),
                "intervention": self._insert(s, InterventionRow, [to_row(i) for i in interventions],
                                             ("session_id", "turn", "token_index", "config_id")),
                "alert_update": self._insert(s, AlertUpdateRow, [to_row(u) for u in updates], ("event_id", "action"))}
            if acked := [u["event_id"] for u in written["alert_update"] if u["action"] == "acknowledged"]:
                s.execute(update(table(AlertRow)).where(AlertRow.event_id.in_(acked)).values(acknowledged=True))
            counts.update(turns=len(written["turn"]), alerts=len(written["alert"]),
                          interventions=len(written["intervention"]), updates=len(written["alert_update"]))
            late = late_tombstones(dropped, now)
            if late:
                s.execute(insert(table(TombstoneRow)), late)
            append_links(s, [(kind, row) for kind, rows in written.items() for row in rows]
                         + [("tombstone", t) for t in late], now)
            if any(counts.values()):  # a pure replay changes nothing, not even updated_at
                self._refresh(s, ids, turns, alerts, interventions, now, erased)
        return counts

    def _refresh(self, s: Session, ids: list[str], turns: list, alerts: list, interventions: list, now: float,
                 erased: dict[str, float] | None = None) -> None:
        """Session counters from the stored turns (and, in an erased session, the turns its tombstones
        removed); state and running score of the latest assistant turn (user and system turns carry no
        score, so they must not reset the session's state)."""
        agg: dict[str, dict] = {sid: dict(n_turns=n, n_tokens=int(tokens)) for sid, n, tokens in s.execute(
            select(TurnRow.session_id, func.count(), func.coalesce(func.sum(TurnRow.n_tokens), 0))
            .where(TurnRow.session_id.in_(ids)).group_by(TurnRow.session_id))}
        gone = s.execute(select(TombstoneRow.session_id, TombstoneRow.counts)
                         .where(TombstoneRow.session_id.in_(sorted(erased)))) if erased else ()
        for sid, counts in gone:
            a = agg.setdefault(sid, dict(n_turns=0, n_tokens=0))
            a["n_turns"] += int(counts.get("turns", 0))
            a["n_tokens"] += int(counts.get("tokens", 0))
        last = select(TurnRow.session_id, func.max(TurnRow.turn).label("last")).where(
            TurnRow.session_id.in_(ids), TurnRow.role == "assistant").group_by(TurnRow.session_id).subquery()
        for sid, state, running in s.execute(
                select(last.c.session_id, TurnRow.state, TurnRow.running)
                .join(TurnRow, (TurnRow.session_id == last.c.session_id) & (TurnRow.turn == last.c.last))):
            agg.setdefault(sid, {}).update(state=state, running=running)
        capped = set(s.scalars(select(InterventionRow.session_id).where(InterventionRow.session_id.in_(ids))))
        capped |= {t.session_id for t in turns if t.capped and any(t.capped)}
        in_order = sorted(turns, key=lambda t: t.turn)
        last_turn = {t.session_id: t for t in in_order}
        policy = ({t.session_id: t.policy for t in in_order if t.policy}
                  | {a.session_id: a.policy for a in alerts}
                  | {i.session_id: "cap" for i in interventions})
        for sid in ids:
            vals: dict[str, Any] = dict(updated_at=now, **agg.get(sid, {}))
            if t := last_turn.get(sid):  # where the session runs: source, model, monitor layer
                vals.update(source=t.source, layer=t.layer, **({"model_id": t.model_id} if t.model_id else {}))
            vals.update({"capped": True} if sid in capped else {}, **({"policy": policy[sid]} if sid in policy else {}))
            s.execute(update(table(SessionRow)).where(SessionRow.id == sid).values(**vals))

    def _alert(self, s: Session, event_id: str) -> AlertRow:
        if (row := s.get(AlertRow, event_id, with_for_update=True)) is None:
            raise NotFoundError(f"no alert with event id {event_id!r}")
        return row

    def set_alert_delivery(self, event_id: str, status: str, attempts: int, last_error: str | None = None) -> bool:
        """Record a delivery attempt. A delivered alert stays delivered (and this returns False)."""
        one_of(status, DELIVERY_STATUSES, "delivery status", optional=False)
        need(is_int(attempts) and attempts >= 0, f"attempts must be a non-negative integer, not {attempts!r}")
        with self._tx(write=True) as s:
            row = self._alert(s, event_id)
            if row.delivery_status == "delivered" and status != "delivered":
                return False
            row.delivery_status, row.attempts, row.last_error = status, attempts, last_error
            return True

    def acknowledge_alert(self, event_id: str, by: str, note: str = "") -> dict[str, Any]:
        """Record who acknowledged an alert (an ``acknowledged`` alert update, in the session's chain);
        the stored update (the first one, when it was acknowledged already)."""
        need(is_name(by) and len(by) <= 200, f"an acknowledgement needs who made it (by, 1-200 characters), not {by!r}")
        need(isinstance(note, str) and len(note) <= 2000, "an acknowledgement's note must be at most 2000 characters")
        with self._tx() as s:
            row = s.get(AlertRow, event_id)
            if row is None:
                raise NotFoundError(f"no alert with event id {event_id!r}")
            sid = row.session_id
        self.write(updates=[AlertUpdate(sid, event_id, "acknowledged", by=by, note=note)])
        with self._tx() as s:
            got = s.get(AlertUpdateRow, (event_id, "acknowledged"))
            assert got is not None  # written above, or before
            return raw_row(got)

    def resolve_id(self, kind: str, prefix: str) -> str:
        """The one stored session (``kind`` "session") or alert ("alert") id that is ``prefix`` or starts with it."""
        need(kind in ("session", "alert"), f"kind must be session or alert, not {kind!r}")
        need(is_name(prefix), f"a {kind} id must be a non-empty string, not {prefix!r}")
        col = SessionRow.id if kind == "session" else AlertRow.event_id
        with self._tx() as s:
            if s.scalar(select(col).where(col == prefix)) is not None:
                return prefix
            # substr, not LIKE: case-sensitive on SQLite as on PostgreSQL, and no wildcards to escape
            found = list(s.scalars(select(col).where(func.substr(col, 1, len(prefix)) == prefix)
                                   .order_by(col).limit(6)))
        if not found:
            raise NotFoundError(f"no {kind} {prefix!r} in the store")
        if len(found) > 1:
            raise InputError(f"{kind} id prefix {prefix!r} is ambiguous: " + ", ".join(found[:5])
                             + (", ..." if len(found) > 5 else ""))
        return found[0]

    def verify_session(self, session_id: str) -> dict[str, Any]:
        """Check the session's hash chain against its rows (monitor/store/chain.py ``verify``)."""
        with self._tx() as s:
            if self.dialect == "postgresql":  # one snapshot for the links and the rows, however workers write
                s.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            if s.get(SessionRow, session_id) is None:
                raise NotFoundError(f"no session {session_id!r} in the store")
            return {"session_id": session_id, **verify_chain(s, session_id)}

    def session_ids(self) -> list[str]:
        with self._tx() as s:
            return list(s.scalars(select(SessionRow.id).order_by(SessionRow.created_at, SessionRow.id)))

    def mark_interrupted(self, session_id: str) -> None:
        """Flag a session whose generation was cut off (creating its row if nothing was written yet)."""
        need(is_name(session_id), f"session_id must be a non-empty string, not {session_id!r}")
        with self._tx(write=True) as s:
            self._insert(s, SessionRow, [dict(id=session_id, created_at=(now := time.time()), updated_at=now)], ("id",))
            s.execute(update(SessionRow).where(SessionRow.id == session_id).values(interrupted=True, updated_at=now))
