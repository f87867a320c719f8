"""The Redis side of alert delivery: leases, the dead-letter list and the replay lock, shared by the
alert worker (:mod:`monitor.workers.alerts`) and the dead-letter replay
(:mod:`monitor.workers.dead_letters`), which never touch the Redis client themselves.

Redis keys besides the ``{prefix}:alerts`` stream (``prefix`` as in :mod:`monitor.streams.client`):

======================================  ==========================================================
``{prefix}:alerts:dead``                LIST of dead-lettered alerts, each the AlertEvent dict as
                                        JSON; LPUSH (newest at the head), replay pops from the tail
``{prefix}:alerts:dead:replaying``      LIST: alerts a running replay has taken off the dead list;
                                        the next replay moves leftovers of a crashed one back
``{prefix}:alerts:dead:lock``           STRING: held by the running replay; expires if it crashes
``{prefix}:alerts:lease:{event_id}``    STRING: the name of the worker delivering that alert; expires
                                        unless renewed, deleted when the delivery is recorded
``{prefix}:alerts:attempts``            HASH: webhook delivery attempts of every worker and replay
                                        by outcome (``delivered``, ``failed``), for ``/metrics``
======================================  ==========================================================
"""

from __future__ import annotations

import json

import redis

from monitor.streams.client import Streams

STREAM, GROUP = "alerts", "webhooks"
OUTCOMES = ("delivered", "failed")  # of one delivery attempt: the fields of {prefix}:alerts:attempts

# a lease (an alert's, the replay lock) is renewed, or retaken once expired, and released only by its holder
RENEW_LUA = """
local out = {}
for i, key in ipairs(KEYS) do
    local v = redis.call('GET', key)
    if v == ARGV[1] or not v then
        redis.call('SET', key, ARGV[1], 'PX', ARGV[2]); out[i] = 1
    else
        out[i] = 0
    end
end
return out
"""
RELEASE_LUA = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


def dead_key(streams: Streams) -> str:
    return streams.key("alerts:dead")


def lease_key(streams: Streams, event_id: str) -> str:
    return streams.key(f"alerts:lease:{event_id}")


class AlertLedger:
    """Leases and dead letters of one deployment's alerts (all Redis errors propagate: the callers
    decide what "Redis down" means for them)."""

    def __init__(self, streams: Streams):
        self.streams, self.r = streams, streams.r
        self.dead = dead_key(streams)
        self.taking, self.lock = self.dead + ":replaying", self.dead + ":lock"
        self.attempts = streams.key("alerts:attempts")

    # leases: which worker delivers an alert
    def lease(self, event_ids: list[str], holder: str, ms: int) -> list[bool]:
        """Take or renew these alerts' leases; True where ``holder`` holds it now."""
        keys = [lease_key(self.streams, e) for e in event_ids]
        return [bool(x) for x in self.r.eval(RENEW_LUA, len(keys), *keys, holder, ms)] if keys else []

    def release(self, event_id: str, holder: str) -> None:
        self.r.eval(RELEASE_LUA, 1, lease_key(self.streams, event_id), holder)

    def touch(self, consumer: str, ids: list[str]) -> None:
        """Reset the idle time of these pending entries (XCLAIM to ourselves), so peers' reclaims leave them."""
        for k in range(0, len(ids), 500):
            self.r.xclaim(self.streams.key(STREAM), GROUP, consumer, 0, ids[k:k + 500], justid=True)

    # the dead-letter list
    def dead_letter(self, event: dict, ids: list[str]) -> None:
        """Onto the dead list and acknowledged in one MULTI: exactly one list item per dead entry."""
        with self.r.pipeline(transaction=True) as p:
            p.lpush(self.dead, json.dumps(event, separators=(",", ":")))
            p.xack(self.streams.key(STREAM), GROUP, *sorted(ids))
            p.execute()

    def dead_count(self) -> int:
        return int(self.r.llen(self.dead))

    def waiting(self) -> int:
        """Dead letters not delivered yet: on the dead list, or taken by a replay that has not settled them."""
        with self.r.pipeline(transaction=True) as p:
            return sum(int(n) for n in p.llen(self.dead).llen(self.taking).execute())

    def redact_dead(self, session_ids: set[str]) -> int:
        """Remove the excerpts of these (erased) sessions' alerts on the dead-letter list (a replay then
        delivers them without one); the list is rewritten only if nobody changed it meanwhile (retried).
        The number of items redacted."""
        while True:
            with self.r.pipeline(transaction=True) as p:
                try:
                    p.watch(self.dead)
                    edits = []
                    for i, raw in enumerate(p.lrange(self.dead, 0, -1)):
                        try:
                            d = json.loads(raw)
                        except ValueError:
                            continue
                        if isinstance(d, dict) and d.get("session_id") in session_ids and d.get("excerpt"):
                            edits.append((i, json.dumps({**d, "excerpt": ""}, separators=(",", ":"))))
                    p.multi()
                    for i, raw in edits:
                        p.lset(self.dead, i, raw)
                    p.execute()
                    return len(edits)
                except redis.WatchError:
                    continue

    # delivery attempts, counted for /metrics
    def count_attempt(self, outcome: str) -> None:
        if outcome not in OUTCOMES:
            raise ValueError(f"a delivery attempt is one of {OUTCOMES}, not {outcome!r}")
        self.r.hincrby(self.attempts, outcome, 1)

    def attempt_counts(self) -> dict[str, int]:
        """Delivery attempts so far by outcome (0 for an outcome never seen)."""
        got = {k.decode() if isinstance(k, bytes) else k: int(v) for k, v in self.r.hgetall(self.attempts).items()}
        return {o: got.get(o, 0) for o in OUTCOMES}

    # the replay: one at a time, taking items off the tail into a side list until they are settled
    def lock_replay(self, holder: str, ms: int) -> bool:
        return bool(self.r.set(self.lock, holder, nx=True, px=ms))

    def renew_replay(self, holder: str, ms: int) -> bool:
        return bool(self.r.eval(RENEW_LUA, 1, self.lock, holder, ms)[0])

    def unlock_replay(self, holder: str) -> None:
        self.r.eval(RELEASE_LUA, 1, self.lock, holder)

    def restore_taken(self) -> None:
        """Move the leftovers of a replay that crashed back onto the dead list."""
        while self.r.lmove(self.taking, self.dead, "LEFT", "RIGHT") is not None:
            pass

    def take(self) -> bytes | None:
        """The oldest dead letter, moved to the side list (None when the list is empty)."""
        return self.r.lmove(self.dead, self.taking, "RIGHT", "LEFT")

    def settle(self, raw: bytes) -> None:
        """A taken item is done with (delivered, or a duplicate): off the side list."""
        self.r.lrem(self.taking, 1, raw)

    def put_back(self, raw: bytes) -> None:
        """A taken item failed again: back onto the dead list, atomically."""
        with self.r.pipeline(transaction=True) as p:
            p.lrem(self.taking, 1, raw).lpush(self.dead, raw).execute()
