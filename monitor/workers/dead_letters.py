"""Dead-lettered alerts and resolve notices: ``axiswatch alerts replay`` tries each once more (:func:`replay_dead`).
One replay runs at a time (``{prefix}:alerts:dead:lock``); a second is refused with a clear error.
Keys: :mod:`monitor.streams.alerts`."""

from __future__ import annotations

import logging
import os
import time

import httpx

from monitor.errors import InputError
from monitor.records import AlertEvent
from monitor.store import Store, StoreError
from monitor.streams import REDIS_DOWN, Streams
from monitor.streams.alerts import AlertLedger
from monitor.webhook_config import WebhookConfig
from monitor.workers.webhooks import as_stored, deliver, notice_from_dead, record_delivery, stored_alert, tally

log = logging.getLogger(__name__)


def replay_dead(streams: Streams, store: Store, config: WebhookConfig, limit: int | None = None,
                client: httpx.Client | None = None) -> int:
    """Try each dead-lettered alert or resolve notice once more (oldest first, at most ``limit``); the number delivered.

    Delivered ones are marked ``delivered``; failed ones go back onto the dead list (status ``dead``,
    attempts + 1); ones already delivered (a duplicate on the list) are dropped without sending."""
    ledger = AlertLedger(streams)
    me = f"replay-{os.getpid()}-{time.time()}"
    lock_ms = int(max(60.0, 3 * config.timeout_s) * 1000)  # renewed before every alert
    if not ledger.lock_replay(me, lock_ms):
        raise InputError(f"another 'axiswatch alerts replay' is running (Redis key {ledger.lock}); wait for it to "
                         f"finish (the key expires {lock_ms // 1000} s after a crashed replay's last alert)")
    own = client is None
    delivered, seen = 0, set()
    try:
        ledger.restore_taken()  # leftovers of a replay that crashed
        n = ledger.dead_count() if limit is None else min(limit, ledger.dead_count())
        client = client or httpx.Client(timeout=config.timeout_s, follow_redirects=False)
        for _ in range(n):
            if not ledger.renew_replay(me, lock_ms):  # ours lapsed and another replay took over
                raise InputError(f"the replay lock {ledger.lock} was taken over by another replay; stopping")
            raw = ledger.take()
            if raw is None:
                break
            if (ev := notice_from_dead(raw)) is None:
                log.error("malformed item on %s left in place: %r", ledger.dead, raw[:200])
                ledger.put_back(raw)
                continue
            row = stored_alert(store, ev) if isinstance(ev, AlertEvent) else None  # a resolve notice has none
            if ev.event_id in seen or (row and row["delivery_status"] == "delivered"):
                ledger.settle(raw)
                continue
            attempts = (int(row["attempts"]) if row else 0) + 1
            error = deliver(client, config, as_stored(ev, row))
            tally(ledger, error)
            if isinstance(ev, AlertEvent):
                try:
                    record_delivery(store, ev, "delivered" if error is None else "dead", attempts, error)
                except StoreError as e:
                    log.warning("alert %s: cannot record the replay (%s)", ev.event_id, e)
            if error is None:
                delivered += 1
                seen.add(ev.event_id)
                ledger.settle(raw)
                log.info("dead-lettered notice %s delivered to %s", ev.event_id, config.target)
            else:
                log.warning("dead-lettered notice %s: delivery to %s failed again (%s)", ev.event_id,
                            config.target, error)
                ledger.put_back(raw)
    finally:
        if own and client is not None:
            client.close()
        try:
            ledger.unlock_replay(me)
        except REDIS_DOWN as e:  # it expires by itself
            log.warning("replay lock %s not released (%s)", ledger.lock, e)
    return delivered
