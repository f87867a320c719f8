"""The alert worker: drift alerts from Redis -> signed webhooks (:mod:`monitor.workers.webhooks`), retries,
dead letter. It reads the ``webhooks`` group of the ``{prefix}:alerts`` stream. Delivery is at least
once; every state is recorded with ``Store.set_alert_delivery``:

- 2xx: ``delivered`` (attempts n), the entry is acknowledged.
- any other status, a timeout or a connection error: ``retrying`` with ``last_error``, and a retry
  after ``uniform(0, min(max_delay_s, base_delay_s * 2**k))`` (full jitter, k = failures - 1). Retries
  wait in an in-memory heap so one failing alert never blocks the others; the stream entry stays
  pending in Redis meanwhile, so a crash loses nothing: pending entries of a dead consumer are
  reclaimed (idle > ``reclaim_idle_ms``) at start and every ``reclaim_every_s``. While alive, a worker
  refreshes the idle time of the entries it holds, so a peer never takes over an alert in backoff.
- after ``max_attempts`` failures: ``dead``; the alert goes onto the dead-letter list and the entry is
  acknowledged in one MULTI. :func:`monitor.workers.dead_letters.replay_dead` (``axiswatch alerts replay``)
  re-delivers them.
- dedupe by event id: an event whose row is already ``delivered`` (or one in flight in this worker)
  is acknowledged without sending again. Across workers, an alert is delivered only by the worker
  that holds its lease (``SET NX`` with a time to live of ``lease_ms``: ``reclaim_idle_ms``, but at
  least two HTTP timeouts and three read blocks, renewed with the heartbeat): a second entry of the
  same event (the outbox replays at least once) that reaches another worker stays pending there
  untouched until the lease holder has finished (then it is acknowledged as a duplicate) or has
  died (then the lease has expired and it is delivered).
"""

from __future__ import annotations

import heapq
import logging
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from monitor.records import AlertEvent
from monitor.store import Store, StoreError
from monitor.streams import REDIS_DOWN, UNREACHABLE, Entry, ResponseError, Streams
from monitor.streams.alerts import GROUP, STREAM, AlertLedger
from monitor.webhook_config import WebhookConfig
from monitor.workers.persist import consumer_name
from monitor.workers.webhooks import (
    Notice,
    Resolved,
    as_stored,
    deliver,
    notice_of,
    record_delivery,
    stored_alert,
    tally,
)

log = logging.getLogger(__name__)


@dataclass
class _Job:
    event: Notice
    ids: set[str]
    attempts: int = 0
    owed: tuple[str, str | None] | None = None  # a final status the store refused; record it, then ack


class AlertWorker:
    def __init__(self, streams: Streams, store: Store, config: WebhookConfig, name: str | None = None,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], Any] | None = None,
                 batch: int = 50, block_ms: int = 500, reclaim_idle_ms: int = 30_000, reclaim_every_s: float = 30.0,
                 client: httpx.Client | None = None):
        self.streams, self.store, self.config, self.batch, self.block_ms = streams, store, config, batch, block_ms
        self.name = name or consumer_name("webhooks")
        self.ledger = AlertLedger(streams)
        self.clock, self.reclaim_idle_ms, self.reclaim_every_s = clock, reclaim_idle_ms, reclaim_every_s
        # a lease outlives one attempt and a blocked read, so it never lapses under a live worker
        self.lease_ms = int(max(reclaim_idle_ms, 3 * block_ms, 2000 * config.timeout_s + 1000))
        self._stop = threading.Event()
        self.sleep = sleep or self._stop.wait  # error backoff of run(); the default wakes up on stop()
        self._client, self._own_client = client, client is None
        self._jobs: dict[str, _Job] = {}  # event id -> alert in flight (its stream entries stay pending)
        self._heap: list[tuple[float, int, str]] = []  # (due, seq, event id)
        self._seq = 0
        self._done: OrderedDict[str, str] = OrderedDict()  # recently finished event ids -> final status
        self._last_reclaim: float | None = None
        self._last_beat = clock()
        self._rng = random.Random()
        self.stats = {"delivered": 0, "failed_attempts": 0, "dead": 0, "duplicates": 0, "leased_elsewhere": 0}

    @property
    def in_flight(self) -> int:
        return len(self._jobs)

    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(timeout=self.config.timeout_s, follow_redirects=False)
        return self._client

    def backoff(self, failures: int) -> float:
        """Full jitter: uniform(0, min(max_delay, base * 2**(failures - 1)))."""
        c = self.config
        return self._rng.uniform(0, min(c.max_delay_s, c.base_delay_s * 2 ** min(max(failures - 1, 0), 62)))

    def _schedule(self, job: _Job, delay: float) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (self.clock() + delay, self._seq, job.event.event_id))

    def _ack(self, ids) -> None:
        self.streams.ack(STREAM, GROUP, sorted(ids))

    def _lease(self, event_ids: list[str]) -> list[bool]:
        """Take or renew the leases of these alerts; True where this worker holds it now."""
        if not event_ids:
            return []
        try:
            return self.ledger.lease(event_ids, self.name, self.lease_ms)
        except ResponseError as e:  # OOM or READONLY: no lease can be written; deliver anyway
            log.warning("alert leases not writable (%s): delivering without them (at least once)", e)
            return [True] * len(event_ids)

    def _release(self, event_id: str) -> None:
        try:
            self.ledger.release(event_id, self.name)
        except REDIS_DOWN as e:  # it expires by itself
            log.warning("alert %s: lease not released (%s)", event_id, e)

    def _drop(self, job: _Job) -> None:
        """Another worker holds this alert's lease: leave our entries pending (not acknowledged), so
        they come back by a reclaim once the holder has finished (duplicate) or died (lease expired)."""
        self._jobs.pop(job.event.event_id, None)
        self.stats["leased_elsewhere"] += 1

    def _forget(self, job: _Job, status: str) -> None:
        self._release(job.event.event_id)
        self._jobs.pop(job.event.event_id, None)
        self._done[job.event.event_id] = status
        while len(self._done) > 10_000:
            self._done.popitem(last=False)

    def _dead_letter(self, event: Notice, ids) -> None:
        """Onto the dead list and acknowledged in one MULTI: exactly one list item per dead entry."""
        self.ledger.dead_letter(event.to_dict(), sorted(ids))

    def _admit(self, e: Entry) -> None:
        if e.kind == "alert_update" and (e.data or {}).get("action") == "acknowledged":
            self._ack([e.id])  # the operator's own act: nothing to notify
            return
        ev = notice_of(e.kind, e.data)
        if ev is None:
            log.error("dropping malformed entry %s of %s (kind %r)", e.id, e.stream, e.kind)
            self._ack([e.id])
            return
        eid = ev.event_id
        if (job := self._jobs.get(eid)) is not None:  # a duplicate entry (or our own, reclaimed): ack with it
            job.ids.add(e.id)
            return
        if self._done.get(eid) in ("delivered", "dead"):  # this worker finished it: already sent or on the list
            self.stats["duplicates"] += 1
            self._ack([e.id])
            return
        if not self._lease([eid])[0]:  # a peer is delivering it (from another entry of the same event)
            self.stats["leased_elsewhere"] += 1
            return
        row = None if isinstance(ev, Resolved) else stored_alert(self.store, ev)  # read under the lease: a peer
        # that finished has recorded it by now (a resolve notice keeps no delivery state: at least once)
        status = row["delivery_status"] if row else "pending"
        if status == "delivered":
            self.stats["duplicates"] += 1
            self._done[eid] = "delivered"
            self._ack([e.id])
            self._release(eid)
        elif status == "dead" and isinstance(ev, AlertEvent):  # recorded dead, but its worker died before the
            # list push + ack: finish that
            self._dead_letter(ev, [e.id])  # (a later duplicate entry may add a second copy: replay skips it)
            self._done[eid] = "dead"
            self._release(eid)
        else:  # new, or retrying when its worker died: go on counting its attempts
            self._jobs[eid] = job = _Job(ev, {e.id}, attempts=int(row["attempts"]) if row else 0)
            self._schedule(job, 0.0)

    def _finish(self, job: _Job, status: str, error: str | None) -> None:
        ev = job.event
        if isinstance(ev, Resolved):  # no delivery row: a notice that exhausts its attempts is dead-lettered
            if status == "dead":
                self._dead_letter(ev, job.ids)
                self.stats["dead"] += 1
                log.error("resolve notice %s dead-lettered after %d attempts to %s (last error: %s); the alert "
                          "stays resolved in the store", ev.event_id, job.attempts, self.config.target, error)
            else:
                self._ack(job.ids)
            return self._forget(job, "delivered" if status == "delivered" else "dead")
        try:
            changed = record_delivery(self.store, ev, status, job.attempts, error)
        except StoreError as e:  # the database is down: keep the entries pending, record later
            log.warning("alert %s: cannot record status %s (%s); will retry", ev.event_id, status, e)
            job.owed = (status, error)
            self._schedule(job, self.backoff(job.attempts))
            return
        if status == "dead" and changed and isinstance(ev, AlertEvent):
            self._dead_letter(ev, job.ids)
            self.stats["dead"] += 1
            log.error("alert %s dead-lettered after %d attempts to %s (last error: %s)",
                      ev.event_id, job.attempts, self.config.target, error)
        else:
            self._ack(job.ids)
        self._forget(job, "delivered" if status == "delivered" or not changed else status)

    def _attempt(self, job: _Job) -> None:
        ev, c = job.event, self.config
        if job.owed:
            return self._finish(job, *job.owed)
        if not self._lease([ev.event_id])[0]:  # ours lapsed (a long pause) and a peer took it over
            return self._drop(job)
        row = stored_alert(self.store, ev) if isinstance(ev, AlertEvent) else None
        if row and row["delivery_status"] == "delivered":
            self.stats["duplicates"] += 1  # delivered by a peer in the meantime
            self._ack(job.ids)
            return self._forget(job, "delivered")
        error = deliver(self.client, c, as_stored(ev, row))
        tally(self.ledger, error)
        job.attempts += 1
        if error is None:
            self.stats["delivered"] += 1
            log.info("alert %s delivered to %s (attempt %d)", ev.event_id, c.target, job.attempts)
            return self._finish(job, "delivered", None)
        self.stats["failed_attempts"] += 1
        if job.attempts >= c.max_attempts:
            return self._finish(job, "dead", error)
        delay = self.backoff(job.attempts)
        log.warning("alert %s: delivery to %s failed (attempt %d/%d: %s); retrying in %.2fs",
                    ev.event_id, c.target, job.attempts, c.max_attempts, error, delay)
        try:
            if isinstance(ev, AlertEvent) and not record_delivery(self.store, ev, "retrying", job.attempts, error):
                self._ack(job.ids)
                return self._forget(job, "delivered")
        except StoreError as e:
            log.warning("alert %s: cannot record the retry (%s)", ev.event_id, e)
        self._schedule(job, delay)

    def _heartbeat(self, force: bool = False) -> None:
        """Reset the idle time of the entries we hold, so peers' reclaims leave them alone."""
        if not force and self.clock() - self._last_beat < self.reclaim_idle_ms / 3000:
            return
        self._last_beat = self.clock()
        ids = sorted({i for j in self._jobs.values() for i in j.ids})
        self.ledger.touch(self.name, ids)
        jobs = list(self._jobs.values())
        for job, held in zip(jobs, self._lease([j.event.event_id for j in jobs])):
            if not held and not job.owed:  # a job that owes its record (it was sent) finishes that first
                self._drop(job)

    def _due(self) -> list[_Job]:
        now, out = self.clock(), []
        while self._heap and self._heap[0][0] <= now:
            job = self._jobs.get(heapq.heappop(self._heap)[2])
            if job is not None:
                out.append(job)
        return out

    def run_once(self, block_ms: int | None = None) -> int:
        """Reclaim (when due), read new alerts, make the due attempts; returns entries read + attempts made."""
        n = 0
        self._heartbeat()  # every pass (at most every third of reclaim_idle_ms), not only before attempts
        if self._last_reclaim is None or self.clock() - self._last_reclaim >= self.reclaim_every_s:
            self._last_reclaim = self.clock()
            self._heartbeat(force=True)
            for e in self.streams.reclaim(STREAM, GROUP, self.name, self.reclaim_idle_ms, count=self.batch):
                self._admit(e)
                n += 1
        wait = block_ms
        if self._heap and wait:
            wait = min(wait, int((self._heap[0][0] - self.clock()) * 1000) + 1)
        entries = self.streams.read_group(STREAM, GROUP, self.name, count=self.batch,
                                          block_ms=wait if wait and wait > 0 else None)
        for e in entries:
            self._admit(e)
        n += len(entries)
        due = self._due()
        for k, job in enumerate(due):
            if self._stop.is_set():  # stop() between attempts: the rest stay pending in Redis
                for rest in due[k:]:
                    self._schedule(rest, 0.0)
                return n + k
            self._heartbeat()
            try:
                self._attempt(job)
            except Exception:
                if job.event.event_id in self._jobs:  # keep it scheduled; its entries are still pending
                    self._schedule(job, self.backoff(max(job.attempts, 1)))
                raise
        return n + len(due)

    def run(self) -> None:
        self.streams.ensure_groups(webhooks=True)
        try:
            while not self._stop.is_set():
                try:
                    self.run_once(self.block_ms)
                except UNREACHABLE as e:
                    log.warning("alert worker %s: Redis unreachable (%s); retrying", self.name, e)
                    self.sleep(1.0)
                except ResponseError as e:  # NOGROUP: Redis restarted without its data
                    if "NOGROUP" not in str(e):
                        log.exception("alert worker %s: pass failed; will retry", self.name)
                    try:
                        self.streams.ensure_groups(webhooks=True)
                    except REDIS_DOWN:
                        pass
                    self.sleep(0.2)
                except Exception:  # keep the worker alive (logged); entries stay pending
                    log.exception("alert worker %s: pass failed; will retry", self.name)
                    self.sleep(1.0)
        finally:
            self.close()

    def close(self) -> None:
        if self._own_client and self._client is not None:
            self._client.close()
            self._client = None

    def start_thread(self) -> threading.Thread:
        self._thread = threading.Thread(target=self.run, name=self.name, daemon=True)
        self._thread.start()
        return self._thread

    def stop(self, timeout: float = 15.0) -> None:
        """Finish the attempt in hand, then return; alerts in backoff stay pending in Redis for the next worker."""
        self._stop.set()
        t = getattr(self, "_thread", None)
        if t is not None and t is not threading.current_thread():
            t.join(timeout)
