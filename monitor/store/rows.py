"""Records to database rows and back: every field checked, a turn's scores packed as little-endian
float32 bytes and its capping flags as bits. Pure: no engine, no session, no I/O (monitor/store/db.py
owns those; the tables are in monitor/store/schema.py)."""

from __future__ import annotations

import hashlib
import json
import sys
from array import array
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Float

from monitor.conversation import verify_node
from monitor.errors import InputError
from monitor.records import (
    ALERT_ACTIONS,
    POLICIES,
    SOURCES,
    STATES,
    AlertEvent,
    AlertUpdate,
    InterventionRecord,
    TurnRecord,
)
from monitor.store.schema import (
    AlertRow,
    AlertUpdateRow,
    Base,
    InterventionRow,
    TombstoneRow,
    TurnContextRow,
    TurnRow,
    table,
)

DELIVERY_STATUSES = ("pending", "delivered", "retrying", "dead")
ROLES = ("assistant", "user", "system")
LEVELS = ("watch", "warning", "critical")

_le = lambda a: (a.byteswap(), a)[1] if sys.byteorder == "big" else a  # noqa: E731 - stored little-endian


def _pack(values: Any, what: str) -> bytes:
    try:
        return _le(array("f", values)).tobytes()
    except (TypeError, OverflowError) as e:
        raise InputError(f"{what} must be a list of numbers ({e})") from None


def _unpack(data: bytes | None) -> list[float] | None:
    return None if data is None else _le(array("f", data)).tolist()


def _pack_bits(bits: list[bool]) -> bytes:  # token i is bit i % 8 of byte i // 8
    return bytes(sum(1 << j for j, b in enumerate(bits[i:i + 8]) if b) for i in range(0, len(bits), 8))


def need(ok: bool, msg: str) -> None:
    if not ok:
        raise InputError(msg)


def one_of(value: Any, allowed: tuple, what: str, optional: bool = True) -> None:
    need((optional and value is None) or value in allowed, f"{what} must be one of {allowed}, not {value!r}")


is_int = lambda x: isinstance(x, int) and not isinstance(x, bool)  # noqa: E731
is_num = lambda x: isinstance(x, (int, float)) and not isinstance(x, bool)  # noqa: E731
is_name = lambda x: isinstance(x, str) and bool(x)  # noqa: E731
is_text = lambda x: isinstance(x, str)  # noqa: E731
opt_int = lambda x: x is None or (is_int(x) and x >= 0)  # noqa: E731
_NODE_KEYS = {"h", "p", "role", "content"}


def _nodes_ok(x: Any) -> bool:
    return x is None or (isinstance(x, list) and all(
        isinstance(n, dict) and set(n) == _NODE_KEYS and all(isinstance(n[k], str) for k in _NODE_KEYS)
        and verify_node(n) for n in x))


_FIELDS: dict[type, dict[str, Any]] = {  # what each record field must be: a predicate or the allowed values
    TurnRecord: dict(turn=lambda x: is_int(x) and x >= 0, role=ROLES, layer=is_int, state=STATES, source=SOURCES,
                     text=lambda x: isinstance(x, str), model_id=lambda x: isinstance(x, str), created_at=is_num,
                     running=lambda x: x is None or is_num(x), policy=lambda x: x is None or x in POLICIES,
                     tokens=lambda x: isinstance(x, list) and all(isinstance(t, str) for t in x),
                     input_head=lambda x: x is None or is_name(x), input=_nodes_ok, diverged_at=opt_int,
                     tracker=lambda x: x is None or isinstance(x, dict)),
    AlertEvent: dict(event_id=is_name, turn=is_int, token_index=is_int, level=LEVELS, policy=POLICIES, score=is_num,
                     threshold=is_num, created_at=is_num, excerpt=is_text,
                     detector=lambda x: x is None or (is_name(x) and x.isprintable() and len(x) <= 32)),
    AlertUpdate: dict(event_id=is_name, action=ALERT_ACTIONS, by=is_name, note=is_text, turn=opt_int,
                      token_index=opt_int, created_at=is_num),
    InterventionRecord: dict(turn=is_int, token_index=is_int, config_id=is_name, created_at=is_num,
                             thresholds=lambda x: isinstance(x, dict) and all(is_num(v) for v in x.values()),
                             layers=lambda x: isinstance(x, list) and all(is_int(v) for v in x)),
}


def checked_records(cls: type, items: Iterable[Any]) -> list:
    """The records (build them from stream payloads with ``cls.from_dict``), each with a session id."""
    for r in (out := list(items)):
        need(isinstance(r, cls), f"expected a {cls.__name__} (see {cls.__name__}.from_dict), got {type(r).__name__}")
        need(is_name(r.session_id) and "\x00" not in r.session_id,
             f"{cls.__name__}.session_id must be a non-empty string without NUL, not {r.session_id!r}")
    return out


def clean_text(t: str) -> str:
    """Text as every backend stores it: PostgreSQL refuses NUL in text, so NUL becomes U+FFFD everywhere
    (a conversation that contains one is still stored, on SQLite and PostgreSQL alike)."""
    return t.replace("\x00", "\ufffd") if "\x00" in t else t


def to_row(r: Any) -> dict[str, Any]:
    """Check every field of a record; its row (a turn's scores packed)."""
    where = f"{type(r).__name__} (session {r.session_id!r}, turn {r.turn!r})"
    for name, ok in _FIELDS[type(r)].items():
        v = getattr(r, name)
        need(v in ok if isinstance(ok, tuple) else ok(v),
             f"{where}: bad {name} {v!r}" + (f", expected one of {ok}" if isinstance(ok, tuple) else ""))
    if isinstance(r, AlertEvent):
        return {**r.to_dict(), "excerpt": clean_text(r.excerpt)}
    if isinstance(r, AlertUpdate):
        return {**r.to_dict(), "by": clean_text(r.by), "note": clean_text(r.note)}
    if not isinstance(r, TurnRecord):
        return r.to_dict()
    scores, n = _pack(r.scores, f"{where}: scores"), len(r.scores)
    need(not r.tokens or not n or len(r.tokens) == n, f"{where}: {len(r.tokens)} tokens but {n} scores")
    for name in ("pre_cap_scores", "capped"):
        v = getattr(r, name)
        need(v is None or (isinstance(v, list) and len(v) == n), f"{where}: {name} must be null or {n} values")
    pre = None if r.pre_cap_scores is None else _pack(r.pre_cap_scores, f"{where}: pre_cap_scores")
    return dict(session_id=r.session_id, turn=r.turn, role=r.role, text=clean_text(r.text), layer=r.layer,
                n_tokens=len(r.tokens) or n, mean=sum(r.scores) / n if n else None, scores=scores,
                pre_cap_scores=pre, capped=None if r.capped is None else _pack_bits(r.capped),
                tokens=[clean_text(t) for t in r.tokens],
                state=r.state, running=r.running, created_at=r.created_at)


def from_row(obj: Base) -> dict[str, Any]:
    """A row as a plain dict (a turn's scores unpacked to floats, its capping flags to booleans)."""
    d = {c.key: getattr(obj, c.key) for c in table(type(obj)).columns}
    if isinstance(obj, TurnRow):
        d["scores"], d["pre_cap_scores"] = _unpack(obj.scores), _unpack(obj.pre_cap_scores)
        bits = obj.capped  # token i is bit i % 8 of byte i // 8
        d["capped"] = None if bits is None else [bool(bits[i >> 3] >> (i & 7) & 1) for i in range(len(d["scores"]))]
    return d


def context_row(r: TurnRecord) -> dict[str, Any] | None:
    """The turn_context row of a checked turn record (None when it carries no input and no drift state)."""
    if r.input_head is None and r.tracker is None:
        return None
    return dict(session_id=r.session_id, turn=r.turn, input_head=r.input_head, diverged_at=r.diverged_at,
                tracker=r.tracker, created_at=r.created_at)


def message_rows(r: TurnRecord) -> list[dict[str, Any]]:
    return [dict(session_id=r.session_id, hash=n["h"], parent=n["p"], role=n["role"], content=clean_text(n["content"]))
            for n in r.input or ()]


# ---------------------------------------------------------------- the hash chain's record digests
CHAINED_MODELS: dict[str, type[Base]] = {"turn": TurnRow, "context": TurnContextRow, "alert": AlertRow,
                                          "intervention": InterventionRow, "alert_update": AlertUpdateRow,
                                          "tombstone": TombstoneRow}
CHAINED = tuple(CHAINED_MODELS)
# the float columns of each: a whole number inserted into one reads back as 5.0, not 5, and digests so
_FLOATS = {kind: {c.key for c in table(m).columns if isinstance(c.type, Float)} for kind, m in CHAINED_MODELS.items()}
_VOLATILE = {"turn": {"id"}, "intervention": {"id"},  # the delivery state changes by design
             "alert": {"delivery_status", "attempts", "last_error", "acknowledged"}}


# columns added after the chain began (schema version 4 on): digested only where set, so a record written
# before the column existed keeps its digest
_ADDED_LATER = {"alert": {"detector"}}


def chain_key(kind: str, row: dict[str, Any]) -> str:
    """The record's key within its session, as the chain names it."""
    if kind in ("turn", "context"):
        return str(row["turn"])
    if kind == "alert":
        return str(row["event_id"])
    if kind == "tombstone":
        return str(row["id"])
    if kind == "alert_update":
        return f"{row['event_id']}:{row['action']}"
    return f"{row['turn']}:{row['token_index']}:{row['config_id']}"


def _plain(v: Any) -> Any:
    return v.hex() if isinstance(v, (bytes, bytearray, memoryview)) else v


def content_digest(kind: str, row: dict[str, Any]) -> str:
    """SHA-256 of a stored row's columns (the ones that never change after the write), canonical JSON:
    the same from the dict that was inserted and from the row read back."""
    skip = _VOLATILE.get(kind, set())
    later = _ADDED_LATER.get(kind, set())
    d = {k: _plain(bytes(v) if isinstance(v, memoryview) else v) for k, v in row.items()
         if k not in skip and not (k in later and v is None)}
    floats = _FLOATS.get(kind, set())
    d = {k: float(v) if k in floats and is_num(v) else v for k, v in d.items()}
    return hashlib.sha256(json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                                     default=str).encode()).hexdigest()


def link_digest(prev: str, kind: str, key: str, content: str) -> str:
    return hashlib.sha256(json.dumps([prev, kind, key, content], separators=(",", ":")).encode()).hexdigest()


def raw_row(obj: Base) -> dict[str, Any]:
    """A row's columns as stored (no decoding): what :func:`content_digest` reads back."""
    return {c.key: getattr(obj, c.key) for c in table(type(obj)).columns}
