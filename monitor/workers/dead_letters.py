"""Dead-lettered alerts: ``axiswatch alerts replay`` tries each once more (:func:`replay_dead`).
One replay runs at a time (``{prefix}:alerts:dead:lock``); a second is refused with a clear error.
Keys: :mod:`monitor.workers.webhooks`."""

from __future__ import annotations

import logging
import os
import time

import httpx
import redis

from monitor.errors import InputError
from monitor.store import Store, StoreError
from monitor.streams import Streams
from monitor.workers.webhooks import (RELEASE_LUA, RENEW_LUA, WebhookConfig, alert_of, dead_key, deliver, record_delivery,
                              stored_alert)

log = logging.getLogger(__name__)


def replay_dead(streams: Streams, store: Store, config: WebhookConfig, limit: int | None = None,
                client: httpx.Client | None = None) -> int:
    """Try each dead-lettered alert once more (oldest first, at most ``limit``); the number delivered.

    Delivered ones are marked ``delivered``; failed ones go back onto the dead list (status ``dead``,
    attempts + 1); ones already delivered (a duplicate on the list) are dropped without sending."""
    r, key = streams.r, dead_key(streams)
    taking, lock, me = key + ":replaying", key + ":lock", f"replay-{os.getpid()}-{time.time()}"
    lock_ms = int(max(60.0, 3 * config.timeout_s) * 1000)  # renewed before every alert
    if not r.set(lock, me, nx=True, px=lock_ms):
        raise InputError(f"another 'axiswatch alerts replay' is running (Redis key {lock}); wait for it to "
                         f"finish (the key expires {lock_ms // 1000} s after a crashed replay's last alert)")
    own = client is None
    delivered, seen = 0, set()
    try:
        while r.lmove(taking, key, "LEFT", "RIGHT") is not None:  # leftovers of a replay that crashed
            pass
        n = r.llen(key) if limit is None else min(limit, r.llen(key))
        client = client or httpx.Client(timeout=config.timeout_s, follow_redirects=False)
        for _ in range(n):
            if not r.eval(RENEW_LUA, 1, lock, me, lock_ms)[0]:  # ours lapsed and another replay took over
                raise InputError(f"the replay lock {lock} was taken over by another replay; stopping")
            raw = r.lmove(key, taking, "RIGHT", "LEFT")
            if raw is None:
                break
            if (ev := alert_of(raw)) is None:
                log.error("malformed item on %s left in place: %r", key, raw[:200])
                with r.pipeline(transaction=True) as p:
                    p.lrem(taking, 1, raw).lpush(key, raw).execute()
                continue
            row = stored_alert(store, ev)
            if ev.event_id in seen or (row and row["delivery_status"] == "delivered"):
                r.lrem(taking, 1, raw)
                continue
            attempts = (int(row["attempts"]) if row else 0) + 1
            error = deliver(client, config, ev)
            try:
                record_delivery(store, ev, "delivered" if error is None else "dead", attempts, error)
            except StoreError as e:
                log.warning("alert %s: cannot record the replay (%s)", ev.event_id, e)
            if error is None:
                delivered += 1
                seen.add(ev.event_id)
                r.lrem(taking, 1, raw)
                log.info("dead-lettered alert %s delivered to %s", ev.event_id, config.target)
            else:
                log.warning("dead-lettered alert %s: delivery to %s failed again (%s)", ev.event_id,
                            config.target, error)
                with r.pipeline(transaction=True) as p:
                    p.lrem(taking, 1, raw).lpush(key, raw).execute()
    finally:
        if own and client is not None:
            client.close()
        try:
            r.eval(RELEASE_LUA, 1, lock, me)
        except redis.RedisError as e:  # it expires by itself
            log.warning("replay lock %s not released (%s)", lock, e)
    return delivered
