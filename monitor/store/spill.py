"""The outbox's spill: records that could not be published while Redis was down, kept in order in the
database and handed back, at least once, when it returns. A part of :class:`~monitor.store.db.Store` (it
owns the engine and the transactions)."""

from __future__ import annotations

import json
import time
from contextlib import AbstractContextManager

from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from monitor.store.schema import SpillRow, table


class Spill:
    dialect: str

    def _tx(self, write: bool = False) -> AbstractContextManager[Session]:
        raise NotImplementedError  # the Store's

    def spill(self, items: list[tuple[str, dict]]) -> None:
        """Keep records (``(kind, record dict)``) that could not be published, in order."""
        now = time.time()
        rows = [dict(kind=k, data=json.dumps(d, separators=(",", ":")), created_at=now) for k, d in items]
        if rows:
            with self._tx(write=True) as s:
                s.execute(insert(table(SpillRow)), rows)

    def drain_spill(self, publish, limit: int = 500) -> int:
        """Hand the oldest spilled records to ``publish([(kind, dict), ...])`` and delete them in the same
        transaction (a failed publish leaves them in place; a crash after it repeats them: at least once).
        Concurrent replicas take disjoint rows on PostgreSQL. Returns how many were handed over."""
        with self._tx(write=True) as s:
            q = select(SpillRow).order_by(SpillRow.id).limit(limit)
            rows = list(s.scalars(q.with_for_update(skip_locked=True) if self.dialect == "postgresql" else q))
            if not rows:
                return 0
            publish([(r.kind, json.loads(r.data)) for r in rows])
            s.execute(delete(table(SpillRow)).where(SpillRow.id.in_([r.id for r in rows])))
            return len(rows)

    def spill_count(self) -> int:
        with self._tx() as s:
            return s.scalar(select(func.count()).select_from(SpillRow)) or 0
