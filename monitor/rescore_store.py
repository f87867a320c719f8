"""What a rescore reads from the store, and nothing it writes: the store opened read-only, the sessions
selected (ids or unique prefixes, ``--since``, ``--limit``, ``--source``), and each stored session's
conversation rebuilt as the model was given it, ready to be teacher-forced.

**Read-only.** A SQLite store is opened as a ``file:`` URI with ``mode=ro`` and a PostgreSQL one with
``default_transaction_read_only``: the database itself refuses any write, whatever the code does. The
store is not migrated (a rescore never changes the schema either); a store at another schema version is
refused with the command that migrates it.

**The conversation** (:func:`segments`). Each stored reply records the head of its input (the chain of
messages the model was given, the chat template's own system prompt included; :mod:`monitor.conversation`).
Replies whose input is the previous reply's input and that reply (a conversation that went on) form one
segment, teacher-forced in one pass: its last reply's input plus that reply. A reply whose input does not
continue the stored conversation (a client edited or regenerated the history: ``diverged_at``) starts a
new segment, so every reply is scored on exactly what its model was given. Sessions stored before the
input was recorded are rebuilt from their stored turns in order (noted).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from monitor.conversation import node_hash, walk
from monitor.durations import parse_duration
from monitor.errors import InputError
from monitor.store import Store


def parse_since(text: str, now: float | None = None) -> float:
    """``--since``: a duration back from now (``90m``, ``24h``, ``7d``, ``2w``: :mod:`monitor.durations`) or
    an ISO date or time (``2026-12-01``, ``2026-12-01T08:00``; UTC unless it names a zone); epoch seconds."""
    try:
        return (time.time() if now is None else now) - parse_duration(str(text))
    except InputError:
        pass
    try:
        at = datetime.fromisoformat(str(text).strip())
    except ValueError:
        raise InputError(f"--since takes a duration (90m, 24h, 7d, 2w) or an ISO date (2026-12-01), not {text!r}") from None
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()


def read_only_url(url: str) -> str:
    """``url`` as one the database opens read-only (SQLite: a ``mode=ro`` file URI of the absolute path,
    which must exist; PostgreSQL: transactions read-only by default)."""
    try:
        u = make_url(url)
    except ArgumentError as e:
        raise InputError(f"database URL {url!r} is not valid: {e}") from None
    backend = u.get_backend_name()
    if backend == "sqlite":
        db = u.database or ""
        if db in ("", ":memory:") or db.startswith("file:"):
            raise InputError(f"rescore reads a store on a file: {url!r} names none (or is a file: URI already)")
        path = Path(db).expanduser().resolve()
        if not path.is_file():
            raise InputError(f"no axiswatch database at {path}: point --database-url or AXISWATCH_DATABASE_URL "
                             "at the deployment's store")
        return f"sqlite:///file:{quote(str(path))}?mode=ro&uri=true"
    if backend in ("postgresql", "postgres"):
        given = u.query.get("options") or ()
        opts = " ".join([*((given,) if isinstance(given, str) else given), "-c default_transaction_read_only=on"])
        return u.update_query_dict({"options": opts}).render_as_string(hide_password=False)
    raise InputError(f"database URL {url!r}: only sqlite:/// and postgresql:// are supported")


def open_read_only(url: str) -> Store:
    """The store at ``url``, opened so that nothing can be written (:func:`read_only_url`)."""
    return Store(read_only_url(url))


def select_sessions(store: Store, ids: Sequence[str] = (), since: float | None = None, limit: int | None = None,
                    source: str | None = None) -> list[str]:
    """The sessions to rescore: ``ids`` (each a unique prefix of one) in the order given, else every session
    created at or after ``since``, of ``source``, oldest first; the last ``limit`` of them (the newest)."""
    if ids:
        picked: list[str] = []
        for i in ids:
            if (sid := store.resolve_id("session", str(i))) not in picked:
                picked.append(sid)
        return picked[-limit:] if limit else picked
    rows = store.list_sessions(source=source, since=since, limit=limit or 10**9)
    return [r["id"] for r in reversed(rows)]


@dataclass
class Segment:
    """Messages to teacher-force in one pass, and which stored reply each scored message is:
    ``replies`` maps the message's index in ``messages`` to the stored turn number."""

    messages: list[dict[str, str]]
    replies: dict[int, int] = field(default_factory=dict)


def _scored(session: dict[str, Any]) -> list[dict[str, Any]]:
    return [t for t in session.get("turns", []) if t["role"] == "assistant" and t.get("scores")]


def segments(session: dict[str, Any]) -> tuple[list[Segment], list[str]]:
    """The conversations that hold a stored session's scored replies (``Store.get_session``'s dict), and
    notes on how they were rebuilt (see the module's docstring)."""
    replies = _scored(session)
    nodes = session.get("messages") or {}
    if not replies:
        return [], []
    if any(not t.get("input_head") or t["input_head"] not in nodes for t in replies):
        msgs = [{"role": t["role"], "content": t["text"]} for t in session["turns"]]
        index = {i: int(t["turn"]) for i, t in enumerate(session["turns"]) if t in replies}
        return [Segment(msgs, index)], ["rebuilt from the stored turns: the model's input was not stored "
                                        "(the template's own system prompt, if any, is put in again)"]
    out: list[Segment] = []
    conv: list[str] = []  # node hashes of the open segment's conversation, its last reply included
    for t in replies:
        given = walk(t["input_head"], nodes)
        hashes = [n["h"] for n in given]
        if not out or hashes[:len(conv)] != conv:
            out.append(Segment([]))
        seg = out[-1]
        seg.messages = [{"role": n["role"], "content": n["content"]} for n in given] + \
                       [{"role": "assistant", "content": t["text"]}]
        seg.replies[len(given)] = int(t["turn"])
        conv = hashes + [node_hash(t["input_head"], "assistant", t["text"])]
    notes = [f"{len(out)} conversations: the history was edited or regenerated, each reply is scored on its "
             "own input"] if len(out) > 1 else []
    return out, notes


def skip_reason(session: dict[str, Any], model_id: str) -> str | None:
    """Why a stored session cannot be rescored with this model (None: it can)."""
    if session.get("erased_at") is not None and not _scored(session):
        return "erased"
    if not _scored(session):
        return "no scored reply stored"
    if session.get("model_id") and model_id and session["model_id"] != model_id:
        return f"recorded with model {session['model_id']}, not the {model_id} loaded"
    return None
