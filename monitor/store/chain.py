"""Each session's tamper-evident trail: a hash chain over every record the store writes for it.

A link is ``(seq, kind, key, content, digest)``: ``content`` is the SHA-256 of the record's row as
written (monitor/store/rows.py ``content_digest``: the columns that never change after the write;
an alert's delivery state and its acknowledged flag are not among them, its acknowledgement is a
record of its own), ``digest = sha256(previous digest, kind, key, content)``. Links are appended
in the transaction that writes the records, under the session row's lock. A record written again
with more content (a whole reply over a partial one a recovery stored) gets a new link; the
last link of a key is the one its row must match.

:func:`verify` recomputes it all from the rows and names the first link or row that does not match:
an edited column, a deleted or inserted row, an edited or removed link, a message whose text no
longer hashes to its id. A record an erasure removed (monitor/store/erasure.py) passes only where a
tombstone, itself a record of the chain, names its kind, key and the content its last link holds; the
result lists those erasures (what, when, why, by whom). Someone who can rewrite the whole database can rebuild a consistent chain
too: record the head digest elsewhere (``axiswatch sessions verify`` prints it) to pin it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from monitor.conversation import verify_node
from monitor.store.rows import CHAINED, CHAINED_MODELS, chain_key, content_digest, link_digest, raw_row
from monitor.store.schema import (
    AlertUpdateRow,
    ChainRow,
    MessageRow,
    SessionRow,
    table,
)


def append_links(s: Session, written: list[tuple[str, dict[str, Any]]], now: float) -> None:
    """Link the rows just written (``(kind, row as inserted)``) into their sessions' chains, oldest first."""
    if not written:
        return
    ids = sorted({row["session_id"] for _, row in written})
    last = (select(ChainRow.session_id, func.max(ChainRow.seq).label("seq")).where(ChainRow.session_id.in_(ids))
            .group_by(ChainRow.session_id).subquery())
    heads = {sid: (seq, digest) for sid, seq, digest in s.execute(
        select(ChainRow.session_id, ChainRow.seq, ChainRow.digest)
        .join(last, (ChainRow.session_id == last.c.session_id) & (ChainRow.seq == last.c.seq)))}
    links = []
    order = sorted(written, key=lambda kr: (kr[1]["session_id"], float(kr[1].get("created_at") or 0.0),
                                            CHAINED.index(kr[0]), chain_key(*kr)))
    for kind, row in order:
        sid, key = row["session_id"], chain_key(kind, row)
        seq, prev = heads.get(sid, (-1, ""))
        content = content_digest(kind, row)
        digest = link_digest(prev, kind, key, content)
        heads[sid] = (seq + 1, digest)
        links.append(dict(session_id=sid, seq=seq + 1, kind=kind, key=key, content=content, digest=digest,
                          created_at=now))
    s.execute(insert(table(ChainRow)), links)


def _rows(s: Session, session_id: str) -> list[tuple[str, dict[str, Any]]]:
    """``(kind, row as stored)`` of every chained record of a session."""
    return [(kind, raw_row(obj)) for kind, model in CHAINED_MODELS.items()
            for obj in s.scalars(select(model).where(model.session_id == session_id))]  # type: ignore[attr-defined]


def seal_unlinked(s: Session, now: float) -> int:
    """Link every record not yet in its session's chain: records written before the trail existed
    (schema version 3), at the upgrade. An alert acknowledged then gets the acknowledgement record it
    lacks (by ``before-v3``). From the upgrade on, the chain vouches for them; what they were before it
    cannot be told. The number of records linked."""
    ids = list(s.scalars(select(SessionRow.id).order_by(SessionRow.id)))
    total = 0
    for sid in ids:  # one session at a time: a large store is never loaded whole
        linked = {(k, key) for k, key in s.execute(select(ChainRow.kind, ChainRow.key)
                                                     .where(ChainRow.session_id == sid))}
        rows = _rows(s, sid)
        acked = {r["event_id"] for k, r in rows if k == "alert_update" and r["action"] == "acknowledged"}
        acks = [dict(event_id=r["event_id"], action="acknowledged", session_id=sid, by="before-v3",
                     note="acknowledged before the audit trail existed", turn=None, token_index=None, created_at=now)
                for k, r in rows if k == "alert" and r.get("acknowledged") and r["event_id"] not in acked]
        if acks:
            s.execute(insert(table(AlertUpdateRow)), acks)
        todo = [(k, r) for k, r in rows if (k, chain_key(k, r)) not in linked] + [("alert_update", a) for a in acks]
        append_links(s, todo, now)
        total += len(todo)
    return total


def verify(s: Session, session_id: str) -> dict[str, Any]:
    """``{"ok", "links", "head", "problems": [{"seq", "kind", "key", "problem"}]}``, problems in chain order
    (rows missing from the chain after them, then messages)."""
    links = list(s.scalars(select(ChainRow).where(ChainRow.session_id == session_id).order_by(ChainRow.seq)))
    rows = {(kind, chain_key(kind, d)): d for kind, d in _rows(s, session_id)}
    problems: list[dict[str, Any]] = []

    def bad(seq: int | None, kind: str, key: str, problem: str) -> None:
        problems.append({"seq": seq, "kind": kind, "key": key, "problem": problem})

    last_of = {(ln.kind, ln.key): ln.seq for ln in links}
    # what erasures removed, as their tombstones (records of this chain, so checked like any other) name it
    tombstones = sorted((row for (kind, _), row in rows.items() if kind == "tombstone"), key=lambda r: r["created_at"])
    gone = {(kind, key): content for t in tombstones for kind, key, content in t["records"]}
    purged = 0
    prev = ""
    for i, ln in enumerate(links):
        if ln.seq != i:
            bad(ln.seq, ln.kind, ln.key, f"link {i} is missing (the chain jumps to {ln.seq})")
        if ln.digest != link_digest(prev, ln.kind, ln.key, ln.content):
            bad(ln.seq, ln.kind, ln.key, "the link's digest does not follow from the previous link (link edited)")
        prev = ln.digest
        if last_of[(ln.kind, ln.key)] != ln.seq:
            continue  # superseded by a later write of the same record
        row = rows.get((ln.kind, ln.key))
        if row is None and gone.get((ln.kind, ln.key)) == ln.content:
            purged += 1  # erased, and a tombstone vouches for exactly what was removed
        elif row is None:
            bad(ln.seq, ln.kind, ln.key, "the record was deleted" + (
                " (a tombstone names it with other content)" if (ln.kind, ln.key) in gone else ""))
        elif content_digest(ln.kind, row) != ln.content:
            bad(ln.seq, ln.kind, ln.key, "the record does not match what was written (edited)")
    for kind, key in sorted(set(rows) - set(last_of)):
        bad(None, kind, key, "the record is not in the chain (inserted outside axiswatch)")
    acks = {row["event_id"] for (kind, _), row in rows.items() if kind == "alert_update" and row["action"] == "acknowledged"}
    for (kind, key), row in sorted(rows.items()):
        if kind == "alert" and row.get("acknowledged") and key not in acks:
            bad(None, kind, key, "marked acknowledged without an acknowledgement record")
    nodes = {m.hash: raw_row(m) for m in s.scalars(select(MessageRow).where(MessageRow.session_id == session_id))}
    for h, m in sorted(nodes.items()):
        if not verify_node({"h": h, "p": m["parent"], "role": m["role"], "content": m["content"]}):
            bad(None, "message", h[:16], "the message's text no longer hashes to its id (edited)")
    whole: set[str] = set()  # messages whose chain back to the first message is complete
    for (kind, key), row in sorted(rows.items()):
        head, path = (row.get("input_head") if kind == "context" else None), list[str]()
        while head and head not in whole:
            if head not in nodes and ("message", head) in gone:
                break  # erased with the session's content (its hash is in a tombstone)
            if head not in nodes:
                bad(None, kind, key, f"input message {head[:16]} is missing")
                path = []
                break
            path.append(head)
            head = nodes[head]["parent"]
        whole.update(path)
    erasures = [{"id": t["id"], "scope": t["scope"], "reason": t["reason"], "by": t["by"], "at": t["created_at"],
                 "records": len(t["records"]), "counts": t["counts"]} for t in tombstones]
    return {"ok": not problems, "links": len(links), "head": prev or None, "problems": problems,
            "purged": purged, "erasures": erasures}
