"""The database schema: typed SQLAlchemy models of the current version, and the migrations that build it.

:mod:`monitor.store` owns the engine and every transaction; this module only describes the tables.
Per-token scores are stored per turn as little-endian float32 bytes (see the store's encoding).
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Connection
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# ---------------------------------------------------------------- models (the current schema)
_Id = BigInteger().with_variant(Integer, "sqlite")  # SQLite autoincrements INTEGER PRIMARY KEY only


class Base(DeclarativeBase):  # the current schema; MIGRATIONS below build it
    pass


def table(model: type[Base]) -> Table:
    """A model's Core table (SQLAlchemy types ``__table__`` as the wider FromClause)."""
    return model.__table__  # type: ignore[return-value]


class SessionRow(Base):
    __tablename__ = "sessions"
    id: Mapped[str] = mapped_column(String, primary_key=True)
    source: Mapped[str] = mapped_column(default="live")
    model_id: Mapped[str] = mapped_column(default="")
    layer: Mapped[int | None]
    policy: Mapped[str | None]
    state: Mapped[str] = mapped_column(default="ok")
    running: Mapped[float | None]
    capped: Mapped[bool] = mapped_column(default=False)
    interrupted: Mapped[bool] = mapped_column(default=False)
    n_turns: Mapped[int] = mapped_column(default=0)
    n_tokens: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[float] = mapped_column(index=True)
    updated_at: Mapped[float]
    erased_at: Mapped[float | None]  # version 5: when its content was last erased (a tombstone says what and why)


class TurnRow(Base):
    __tablename__ = "turns"
    __table_args__ = (UniqueConstraint("session_id", "turn", name="uq_turns_session_turn"),)  # indexes session_id
    id: Mapped[int] = mapped_column(_Id, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"))
    turn: Mapped[int]
    role: Mapped[str]
    text: Mapped[str] = mapped_column(Text)
    layer: Mapped[int]
    n_tokens: Mapped[int]
    mean: Mapped[float | None]
    scores: Mapped[bytes] = mapped_column(LargeBinary)  # float32 little-endian, one per token
    pre_cap_scores: Mapped[bytes | None] = mapped_column(LargeBinary)
    capped: Mapped[bytes | None] = mapped_column(LargeBinary)  # token i is bit i % 8 of byte i // 8
    tokens: Mapped[list[str]] = mapped_column(JSON)
    state: Mapped[str]
    running: Mapped[float | None]
    created_at: Mapped[float]


class AlertRow(Base):
    __tablename__ = "alerts"
    event_id: Mapped[str] = mapped_column(String, primary_key=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"), index=True)
    turn: Mapped[int]
    token_index: Mapped[int]
    level: Mapped[str]
    score: Mapped[float]
    threshold: Mapped[float]
    policy: Mapped[str]
    created_at: Mapped[float] = mapped_column(index=True)
    delivery_status: Mapped[str] = mapped_column(default="pending", index=True)  # DELIVERY_STATUSES
    attempts: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    acknowledged: Mapped[bool] = mapped_column(default=False)
    excerpt: Mapped[str | None] = mapped_column(Text)  # version 3
    detector: Mapped[str | None] = mapped_column(String)  # version 4


class InterventionRow(Base):
    __tablename__ = "interventions"
    __table_args__ = (UniqueConstraint("session_id", "turn", "token_index", "config_id", name="uq_interventions_key"),)
    id: Mapped[int] = mapped_column(_Id, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"))
    turn: Mapped[int]
    token_index: Mapped[int]
    config_id: Mapped[str]
    thresholds: Mapped[dict[str, float]] = mapped_column(JSON)
    layers: Mapped[list[int]] = mapped_column(JSON)
    created_at: Mapped[float]


class SpillRow(Base):
    """Records the engine could not hand to Redis while it was down (monitor/streams/outbox.py), oldest first."""
    __tablename__ = "spill"
    id: Mapped[int] = mapped_column(_Id, primary_key=True, autoincrement=True)
    kind: Mapped[str]
    data: Mapped[str] = mapped_column(Text)  # the record as JSON
    created_at: Mapped[float]


class MessageRow(Base):
    """A message some turn's input held, once per session (monitor/conversation.py: hash of parent, role, content)."""
    __tablename__ = "messages"
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True)
    hash: Mapped[str] = mapped_column(String, primary_key=True)
    parent: Mapped[str] = mapped_column(String)
    role: Mapped[str]
    content: Mapped[str] = mapped_column(Text)


class TurnContextRow(Base):
    """What an assistant turn was generated (or scored) from, and the drift state it left."""
    __tablename__ = "turn_context"
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True)
    turn: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    input_head: Mapped[str | None]  # the last input message (messages.hash); its parents are the rest
    diverged_at: Mapped[int | None]  # the first input message that differed from the stored history
    tracker: Mapped[dict | None] = mapped_column(JSON)  # DriftTracker.snapshot() after the turn
    created_at: Mapped[float]


class AlertUpdateRow(Base):
    __tablename__ = "alert_updates"
    event_id: Mapped[str] = mapped_column(String, primary_key=True)
    action: Mapped[str] = mapped_column(String, primary_key=True)  # acknowledged | resolved
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"), index=True)
    by: Mapped[str]
    note: Mapped[str] = mapped_column(Text)
    turn: Mapped[int | None]
    token_index: Mapped[int | None]
    created_at: Mapped[float]


class ChainRow(Base):
    """A session's hash chain: one link per stored record (turn, context, alert, intervention, alert update),
    ``digest = sha256(previous digest, kind, key, content)`` where content is the record's own digest."""
    __tablename__ = "chain"
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True)
    seq: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    kind: Mapped[str]
    key: Mapped[str]
    content: Mapped[str]
    digest: Mapped[str]
    created_at: Mapped[float]


class TombstoneRow(Base):
    """What an erasure removed from a session (version 5): the records' kinds, keys and content digests as
    the chain linked them, so the chain still verifies without them; why, by whom and when. A record of the
    session's chain itself: editing or deleting a tombstone is caught like any other record."""
    __tablename__ = "tombstones"
    id: Mapped[str] = mapped_column(String, primary_key=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"), index=True)
    scope: Mapped[str]  # erase (one session on request) | retention (purged by age)
    reason: Mapped[str] = mapped_column(Text)
    by: Mapped[str]
    records: Mapped[list] = mapped_column(JSON)  # [[kind, key, content digest], ...]; a message's digest is its hash
    counts: Mapped[dict] = mapped_column(JSON)  # records removed by kind, and tokens
    created_at: Mapped[float]


class SchemaVersion(Base):
    __tablename__ = "schema_version"
    version: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    applied_at: Mapped[float]


# ---------------------------------------------------------------- migrations
# MIGRATIONS[i] takes a database from version i to i + 1 in migrate()'s transaction; append only.
# Version 1 builds its tables from the models; the first migration that alters one must first paste
# its version-1 definition into _v1 as Core (test_migrated_schema_matches_models checks the result).
def _v1(conn: Connection) -> None:
    """Version 1: sessions, turns, alerts, interventions (alerts as they were then: no excerpt)."""
    _SESSIONS_V1.create(conn, checkfirst=False)
    Base.metadata.create_all(conn, tables=[table(TurnRow)], checkfirst=False)
    _ALERTS_V1.create(conn, checkfirst=False)
    Base.metadata.create_all(conn, tables=[table(InterventionRow)], checkfirst=False)


_V1 = MetaData()
_SESSIONS_V1 = Table(  # as version 1 made it (version 5 adds erased_at)
    "sessions", _V1,
    Column("id", String, primary_key=True), Column("source", String, nullable=False),
    Column("model_id", String, nullable=False), Column("layer", Integer), Column("policy", String),
    Column("state", String, nullable=False), Column("running", Float), Column("capped", Boolean, nullable=False),
    Column("interrupted", Boolean, nullable=False), Column("n_turns", Integer, nullable=False),
    Column("n_tokens", Integer, nullable=False), Column("created_at", Float, nullable=False, index=True),
    Column("updated_at", Float, nullable=False))
_ALERTS_V1 = Table(
    "alerts", _V1,
    Column("event_id", String, primary_key=True),
    Column("session_id", String, ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("turn", Integer, nullable=False), Column("token_index", Integer, nullable=False),
    Column("level", String, nullable=False), Column("score", Float, nullable=False),
    Column("threshold", Float, nullable=False), Column("policy", String, nullable=False),
    Column("created_at", Float, nullable=False, index=True),
    Column("delivery_status", String, nullable=False, index=True), Column("attempts", Integer, nullable=False),
    Column("last_error", Text), Column("acknowledged", Boolean, nullable=False))


def _v2(conn: Connection) -> None:
    """Version 2: the outbox's spill table."""
    Base.metadata.create_all(conn, tables=[table(SpillRow)], checkfirst=False)


def _v3(conn: Connection) -> None:
    """Version 3: audit-grade records: the messages each turn was given, its context and drift state,
    alert excerpts and updates (acknowledged, resolved), and each session's hash chain."""
    conn.exec_driver_sql("ALTER TABLE alerts ADD COLUMN excerpt TEXT")
    Base.metadata.create_all(conn, tables=[table(m) for m in (MessageRow, TurnContextRow, AlertUpdateRow, ChainRow)],
                             checkfirst=False)


def _v4(conn: Connection) -> None:
    """Version 4: which detector fired each alert (the session drift or the absolute level)."""
    conn.exec_driver_sql("ALTER TABLE alerts ADD COLUMN detector VARCHAR")


def _v5(conn: Connection) -> None:
    """Version 5: erasure and retention: tombstones, and when each session's content was erased."""
    conn.exec_driver_sql("ALTER TABLE sessions ADD COLUMN erased_at FLOAT")
    Base.metadata.create_all(conn, tables=[table(TombstoneRow)], checkfirst=False)


MIGRATIONS = [_v1, _v2, _v3, _v4, _v5]
SCHEMA_VERSION = len(MIGRATIONS)
CHAIN_VERSION = 3  # the version that began each session's hash chain (older records are linked at the upgrade)
