"""Workers that drain Redis Streams: the persistence worker (streams -> store).

It reads the ``persist`` group of the turns, alerts and interventions streams,
writes each batch to the store in one idempotent transaction, and acknowledges
the entries only after the commit. On start (and every ``reclaim_every_s``) it
takes over entries that another, dead, consumer was given but never
acknowledged. Replays create no duplicate rows (the store's keys). Every
``recover_every_s`` it stores the replies a dead ``serve`` replica left half
generated (monitor/workers/recovery.py). With ``retention_days``
(``AXISWATCH_RETENTION_DAYS``) it erases the sessions idle for longer, at
start and every hour, 200 per pass.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

from monitor.errors import InputError
from monitor.store import Store
from monitor.streams import UNREACHABLE, Entry, ResponseError, Streams
from monitor.streams.client import KINDS
from monitor.streams.forget import forget_sessions
from monitor.streams.outbox import publish_spilled
from monitor.workers.recovery import recover_interrupted

log = logging.getLogger(__name__)
PERSISTED = ("turns", "alerts", "interventions")
RETENTION_BATCH = 200  # sessions erased per pass: persisting never waits long on a large first purge
RECOVER_GRACE_S = 12.0  # > a replica's heartbeat period (3 s) and TTL (10 s)
ARG = {"turn": "turns", "alert": "alerts", "intervention": "interventions", "alert_update": "updates"}  # Store.write's


def consumer_name(role: str) -> str:
    return f"{role}-{socket.gethostname()}-{os.getpid()}-{threading.get_ident() % 10000}"


class StreamWorker:
    """The loop every stream worker shares: ``run_once`` until stopped, in a thread of its own;
    a failed pass is logged and retried (its entries stay pending in Redis and are reclaimed)."""

    name: str
    streams: Streams
    block_ms: int
    _stop: threading.Event
    _thread: threading.Thread | None = None

    def run_once(self, block_ms: int | None = None) -> int:
        raise NotImplementedError

    webhooks_group = False  # the alert worker's group is made only where alert delivery runs
    _up_since = 0.0

    def run(self) -> None:
        down_since = None
        while not self._stop.is_set():
            try:
                if down_since is not None or not getattr(self, "_groups_ok", False):
                    self.streams.ensure_groups(webhooks=self.webhooks_group)  # Redis may have restarted empty
                    self._groups_ok = True
                self.run_once(self.block_ms)
                if down_since is not None:
                    log.warning("%s: Redis is back after %.1f s", self.name, time.monotonic() - down_since)
                    down_since, self._up_since = None, time.monotonic()
            except UNREACHABLE as e:
                if down_since is None:
                    down_since = time.monotonic()
                    log.warning("%s: Redis unreachable (%s); retrying every second", self.name, e)
                self._stop.wait(1.0)
            except ResponseError as e:
                if "NOGROUP" not in str(e):
                    log.exception("%s: pass failed; will retry", self.name)
                self._groups_ok = False
                self._stop.wait(0.2)
            except Exception:  # keep the worker alive (logged); entries stay pending and are retried
                log.exception("%s: pass failed; will retry", self.name)
                self._stop.wait(1.0)

    def start_thread(self) -> threading.Thread:
        self._thread = threading.Thread(target=self.run, name=self.name, daemon=True)
        self._thread.start()
        return self._thread

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the pass in hand, then return (joins the thread started by :meth:`start_thread`)."""
        self._stop.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout)


class PersistWorker(StreamWorker):
    def __init__(self, streams: Streams, store: Store, name: str | None = None, batch: int = 200,
                 block_ms: int = 500, reclaim_idle_ms: int = 30_000, reclaim_every_s: float = 30.0,
                 recover_every_s: float = 5.0, retention_days: float | None = None, retention_every_s: float = 3600.0):
        self.streams, self.store, self.batch, self.block_ms = streams, store, batch, block_ms
        self.retention_days, self.retention_every_s = retention_days, retention_every_s
        self._last_retention: float | None = None
        self.recover_every_s, self._last_recover = recover_every_s, 0.0
        self._up_since = time.monotonic()  # when Redis last came (back) up for this worker
        self.name = name or consumer_name("persist")
        self.reclaim_idle_ms, self.reclaim_every_s = reclaim_idle_ms, reclaim_every_s
        self._stop = threading.Event()
        self._last_reclaim = 0.0
        self.written = {"turns": 0, "alerts": 0, "interventions": 0, "updates": 0}
        self._cv = threading.Condition()  # notified after each batch is written (wait_persisted wakes on it)
        self._batches = 0

    def _apply(self, entries: list[Entry]) -> None:
        """Write and acknowledge one batch; malformed entries are logged and acknowledged (never retried forever)."""
        groups: dict[str, list] = {kind: [] for kind in ARG}
        for e in entries:
            try:
                groups[e.kind].append(KINDS[e.kind].from_dict(e.data))
            except (TypeError, KeyError, AttributeError) as err:
                log.error("dropping malformed %s entry %s: %s", e.stream, e.id, err)
        try:
            counts = self.store.write(**{ARG[kind]: recs for kind, recs in groups.items()})
        except InputError:  # one bad record must not block the batch forever: write one by one
            counts = {}
            for kind, recs in groups.items():
                for rec in recs:
                    try:
                        c = self.store.write(**{ARG[kind]: [rec]})
                    except InputError as err:
                        log.error("dropping invalid %s record of session %s: %s", kind, rec.session_id, err)
                        continue
                    for k, v in c.items():
                        counts[k] = counts.get(k, 0) + v
        for k in self.written:
            self.written[k] += counts.get(k, 0)
        for stream in PERSISTED:
            ids = [e.id for e in entries if e.stream == stream]
            self.streams.ack(stream, "persist", ids)
        with self._cv:
            self._batches += 1
            self._cv.notify_all()

    def wait_persisted(self, entries: list[tuple[str, str]], timeout: float) -> bool:
        """Wait until the ``persist`` group has written and acknowledged every ``(stream, entry id)`` (as
        :meth:`Streams.publish` returns them), by this worker or any other consumer of the group, or
        ``timeout`` seconds; False on time-out. Checked in Redis; this worker's batches wake the wait."""
        by_stream: dict[str, list[str]] = {}
        for stream, eid in entries:
            by_stream.setdefault(stream, []).append(eid)
        deadline = time.monotonic() + timeout
        while True:
            seen = self._batches
            if all(self.streams.handled(st, "persist", ids) for st, ids in by_stream.items()):
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            with self._cv:  # the next batch of this worker, or a moment for another consumer's
                if self._batches == seen:
                    self._cv.wait(min(left, 0.05))

    def run_once(self, block_ms: int | None = None) -> int:
        """One pass over the three streams (reclaiming first when due); returns entries handled."""
        entries: list[Entry] = []
        now = time.monotonic()
        if now - self._last_recover >= self.recover_every_s and now - self._up_since >= RECOVER_GRACE_S:
            # replies cut off by a dead replica; not right after Redis came back: a live replica's
            # heartbeat may have expired during the outage and needs a moment to be renewed
            self._last_recover = now
            recover_interrupted(self.streams, self.store)
            while self.store.drain_spill(lambda rows: publish_spilled(self.streams, rows), limit=500):
                pass  # records a replica spilled while Redis was down, and never replayed (it died)
        if self.retention_days is not None and (self._last_retention is None
                                                or now - self._last_retention >= self.retention_every_s):
            self._last_retention = now  # a failed run is retried after retention_every_s, not every pass
            if self.apply_retention()["checked"] >= RETENTION_BATCH:
                self._last_retention = None  # a full batch: more may be due, the next pass goes on
        if time.monotonic() - self._last_reclaim >= self.reclaim_every_s:
            self._last_reclaim = time.monotonic()
            for stream in PERSISTED:
                entries += self.streams.reclaim(stream, "persist", self.name, self.reclaim_idle_ms)
        for stream in PERSISTED:
            entries += self.streams.read_group(stream, "persist", self.name, count=self.batch, block_ms=None)
        if not entries and block_ms:
            entries = self.streams.read_group("turns", "persist", self.name, count=self.batch, block_ms=block_ms)
        if entries:
            self._apply(entries)
            for stream in PERSISTED:
                self.streams.trim(stream)
        return len(entries)

    def apply_retention(self) -> dict:
        """Erase the sessions idle for longer than ``retention_days``, ``RETENTION_BATCH`` at a time (at start,
        then every ``retention_every_s``; each erasure leaves a tombstone: monitor/store/erasure.py), and
        their copies in Redis."""
        assert self.retention_days is not None
        days = f"{self.retention_days:g}"
        r = self.store.purge(self.retention_days * 86400, reason=f"retention {days}d (AXISWATCH_RETENTION_DAYS)",
                             by="retention", limit=RETENTION_BATCH)
        forget_sessions(self.streams, r["sessions"])  # their copies in Redis too
        if r["sessions"]:
            log.info("retention: erased %d session(s) idle for more than %s days (%d records, %d tokens)",
                     len(r["sessions"]), days, r["records"], r["tokens"])
        return r

    def drain(self, max_passes: int = 1000) -> int:
        """Persist everything readable now (after :meth:`stop`, at shutdown); returns entries handled."""
        total = 0
        for _ in range(max_passes):
            n = self.run_once(block_ms=None)
            total += n
            if n == 0:
                break
        return total

