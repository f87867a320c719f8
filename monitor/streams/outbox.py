"""The outbox between the engine and Redis: nothing scored is lost while Redis is down.

The engine hands every record (turns, alerts, interventions) to :meth:`Outbox.publish`. While
Redis answers, records go straight to their streams. When a publish fails, the outbox switches
to *buffering*: records queue in memory (up to ``max_buffer``), and when that fills, the whole
queue is spilled to the store's ``spill`` table (on disk, shared by every replica). Generation never
waits on Redis. A background thread probes Redis every ``retry_s``; once it answers, the consumer
groups are re-created if Redis lost them, the spilled rows are replayed oldest first, then the
memory queue, and only then do new records go straight to Redis again, so the streams see the
records in the order they were made. Replays are at least once; the store and the webhook
worker are idempotent by the records' keys, so a record published twice is stored and alerted once.

Live-tail entries (the dashboard's display buffer) are dropped while Redis is down, and counted.
On :meth:`close` whatever is still queued is spilled, so a graceful shutdown during an outage
loses nothing; a crash loses at most the memory queue (``max_buffer`` records). With the store down
too, the queue keeps at most ``HARD_LIMIT * max_buffer`` records and counts what it drops (``lost``).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable

from monitor.errors import StoreError
from monitor.streams.client import KIND_OF, KINDS, REDIS_DOWN

log = logging.getLogger(__name__)

HARD_LIMIT = 10  # x max_buffer: with Redis and the store both down, the oldest records beyond this go
# REDIS_DOWN: any Redis error means "not stored there": unreachable, but also a full (OOM), read-only
# (a replica after a failover), or misconfigured (MISCONF) server. The records wait; nothing is dropped.


class Outbox:
    def __init__(self, streams, store=None, max_buffer: int = 10_000, retry_s: float = 0.5,
                 ensure_groups: Callable[[], None] | None = None):
        self.streams, self.store, self.max_buffer, self.retry_s = streams, store, max_buffer, retry_s
        self._ensure_groups = ensure_groups or streams.ensure_groups
        self._buf: deque = deque()
        self._lock = threading.Lock()
        self._down = False
        self._spill_at = 0  # queue length at which to try the next spill (later after a failed one)
        self._recovering = False  # a replay thread owns the way back; set and cleared under the lock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.stats = {"published": 0, "buffered": 0, "spilled": 0, "replayed": 0, "live": 0, "live_dropped": 0,
                      "lost": 0, "outages": 0}

    def resume(self) -> None:
        """At start: replay what an earlier process left in the spill table (in the background)."""
        if self.store is not None and self.store.spill_count():
            with self._lock:
                log.warning("outbox: %d records spilled by an earlier run; replaying them", self.store.spill_count())
                self._down = True
                self._recovering = True
                self._thread = threading.Thread(target=self._recover, name="outbox-replay", daemon=True)
                self._thread.start()

    # ------------------------------------------------------------------ what the engine calls
    @property
    def down(self) -> bool:
        return self._down

    @property
    def queued(self) -> int:
        """Records in the memory queue (spilled ones are in the store)."""
        return len(self._buf)

    def publish(self, record) -> tuple[str, str] | None:
        """Publish now (returns the entry's ``(stream, id)``), or keep it for later while Redis is down (None)."""
        with self._lock:
            if not self._down:
                try:
                    entry = self.streams.publish(record)
                    self.stats["published"] += 1
                    return entry
                except REDIS_DOWN as e:
                    self._went_down(e)
            self._keep(record)
            return None

    def reserve_turns(self, items: list[tuple[str, int, int]]) -> list[int] | None:
        """Turn numbers from Redis (:meth:`Streams.reserve_turns`); None while Redis is down."""
        if self._down:
            return None
        try:
            return self.streams.reserve_turns(items)
        except REDIS_DOWN as e:
            log.warning("turn numbers from memory: Redis unreachable (%s)", e)
            with self._lock:  # the records wait too, and later calls do not each wait for a time-out
                if not self._down:
                    self._went_down(e)
            return None

    def publish_live_many(self, items: list[tuple[str, dict]]) -> None:
        if not items:
            return
        if self._down:
            self.stats["live_dropped"] += len(items)
            return
        try:
            self.streams.publish_live_many(items)
            self.stats["live"] += len(items)
        except REDIS_DOWN as e:
            self.stats["live_dropped"] += len(items)
            with self._lock:
                if not self._down:
                    self._went_down(e)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the replay thread; try a last replay, and spill whatever is still queued."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._down or self._buf:
            try:
                self._replay()
            except REDIS_DOWN:
                pass
            except (StoreError, KeyError, TypeError, ValueError) as e:  # store down, or a malformed spilled row
                log.warning("outbox: last replay at shutdown failed: %s", e)
        with self._lock:
            if self._buf:
                self._spill_queue()

    # ------------------------------------------------------------------ buffering
    def _went_down(self, e: Exception) -> None:  # under the lock
        self._down = True
        self._spill_at = 0  # a new outage spills at max_buffer again
        self.stats["outages"] += 1
        log.warning("Redis unreachable (%s): buffering records (memory up to %d, then the store's spill table)",
                    e, self.max_buffer)
        if not self._recovering:
            self._recovering = True
            self._thread = threading.Thread(target=self._recover, name="outbox-replay", daemon=True)
            self._thread.start()

    def _keep(self, record) -> None:  # under the lock
        self._buf.append(record)
        self.stats["buffered"] += 1
        if len(self._buf) >= max(self.max_buffer, self._spill_at):
            self._spill_queue()

    def _spill_queue(self) -> None:  # under the lock
        if self.store is None:
            drop = len(self._buf) - self.max_buffer + 1
            for _ in range(max(drop, 0)):
                self._buf.popleft()
            self.stats["lost"] += max(drop, 0)
            log.error("outbox full and no store to spill to: dropped the %d oldest records", max(drop, 0))
            return
        items = [(KIND_OF[type(r)], r.to_dict()) for r in self._buf]
        try:
            self.store.spill(items)
        except StoreError:  # the database is down too: keep them in memory, within a bound
            hard = HARD_LIMIT * self.max_buffer
            drop = max(len(self._buf) - hard, 0)
            for _ in range(drop):
                self._buf.popleft()
            self.stats["lost"] += drop
            self._spill_at = len(self._buf) + self.max_buffer  # try again a buffer later, not every record
            log.exception("could not spill %d records to the store; keeping them in memory (at most %d%s)",
                          len(items), hard, f"; dropped the {drop} oldest" if drop else "")
            return
        self._buf.clear()
        self._spill_at = 0
        self.stats["spilled"] += len(items)
        log.warning("outbox: spilled %d records to the store while Redis is down", len(items))

    # ------------------------------------------------------------------ recovery
    def _recover(self) -> None:
        while not self._stop.wait(self.retry_s):
            try:
                self.streams.ping()
                self._ensure_groups()  # a restarted Redis without persistence has lost them
                if self._replay():
                    log.warning("Redis is back: replayed %d records, publishing directly again",
                                self.stats["replayed"])
                    return
            except REDIS_DOWN:
                continue
            except Exception:  # a retry loop must outlive any error (logged); the records stay queued
                log.exception("outbox replay failed; will retry")

    def _replay(self) -> bool:
        """Publish spilled rows, then the memory queue; True when all is out and direct publishing is back."""
        while True:
            if self.store is not None:
                while self.store.drain_spill(self._publish_spilled, limit=500):
                    pass
            with self._lock:
                if not self._buf:
                    if self.store is not None and self.store.spill_count():
                        continue  # spilled meanwhile: drain the store again
                    self._down = self._recovering = False
                    return True
                batch = [self._buf.popleft() for _ in range(min(500, len(self._buf)))]
            try:
                self._publish_batch(batch)
            except BaseException:
                with self._lock:
                    self._buf.extendleft(reversed(batch))
                raise
            self.stats["replayed"] += len(batch)

    def _publish_spilled(self, rows: list[tuple[str, dict]]) -> None:
        publish_spilled(self.streams, rows)
        self.stats["replayed"] += len(rows)

    def _publish_batch(self, records: list) -> None:
        publish_batch(self.streams, records)


def publish_batch(streams, records: list) -> None:
    pipe = streams.r.pipeline(transaction=False)
    for r in records:
        streams.publish(r, pipe=pipe)
    pipe.execute()


def publish_spilled(streams, rows: list[tuple[str, dict]]) -> None:
    """Publish spilled ``(kind, record dict)`` rows (the outbox, or a worker draining a dead replica's spill)."""
    publish_batch(streams, [KINDS[kind].from_dict(data) for kind, data in rows])
