"""The one module that owns Redis Streams: keys, payloads, groups, trimming, lag.

Keys (``prefix`` defaults to ``axiswatch``):

=================================  ==========================================  ==================
key                                entries                                     read by
=================================  ==========================================  ==================
``{prefix}:turns``                 ``TurnRecord`` (kind ``turn``)              group ``persist``
``{prefix}:alerts``                ``AlertEvent`` (kind ``alert``)             groups ``persist``, ``webhooks``
``{prefix}:interventions``         ``InterventionRecord`` (kind ``intervention``)  group ``persist``
``{prefix}:live:{session_id}``     token batches and states of one session     the dashboard's live tail (XREAD);
                                   capped at ``live_maxlen``, expires a day after its last entry
``{prefix}:ingest``                shadow-mode turns from other servers        group ``shadow``
=================================  ==========================================  ==================

``{prefix}:turn:{session_id}`` (a counter) holds the next turn number of a session, so every
replica numbers a session's turns from one atomic count (:meth:`Streams.reserve_turns`); it
expires a week after the session's last turn (``reserve_turns``' ``ttl_s``), when the store has long
caught up. Three more
plain keys sit beside them: ``{prefix}:live_index`` (a sorted set of session ids by the time of
their latest live entry; entries older than ``live_ttl_s`` are dropped as new ones arrive), so the
dashboard finds the sessions in progress without scanning keys; ``{prefix}:replicas`` (a sorted set of
``serve`` replica ids by the time of their latest heartbeat, beside each one's expiring
``{prefix}:replica:{id}``; left on a clean stop, forgotten after ``REPLICA_MEMORY_S``), so ``/metrics``
can say which replica went silent; and ``{prefix}:deployment`` (JSON:
the model, monitor layer, thresholds, drift settings and capping config a ``serve`` replica runs
with, its axis metadata and report, written at its start), so the dashboard draws the same threshold bands the engine uses.

Every entry has the fields ``v`` (payload version, ``1``), ``kind`` and
``data`` (the record as JSON, see :mod:`monitor.records`).

Durable streams are never trimmed past an entry that some consumer group has
not yet been delivered and acknowledged: :meth:`Streams.trim` computes the
oldest such entry over all groups and trims with ``XTRIM MINID`` below it only.
When a stream stays longer than ``maxlen`` because a group lags, the lag is
reported (:meth:`Streams.lag`) instead of losing entries. Live streams are
capped with ``MAXLEN ~`` (they are a display buffer, not a record).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import redis

from monitor.records import AlertEvent, AlertUpdate, InterventionRecord, TurnRecord

log = logging.getLogger(__name__)

VERSION = "1"
# what "Redis is down" raises: every handler that carries on without Redis catches these, nothing wider
REDIS_DOWN = (redis.RedisError, OSError)
UNREACHABLE = (redis.ConnectionError, redis.TimeoutError)  # no answer at all (vs. an error reply)
ResponseError = redis.ResponseError  # an error reply: OOM, READONLY, NOGROUP, MISCONF...
KINDS: dict[str, type[TurnRecord] | type[AlertEvent] | type[InterventionRecord] | type[AlertUpdate]] = {
    "turn": TurnRecord, "alert": AlertEvent, "intervention": InterventionRecord, "alert_update": AlertUpdate}
KIND_OF = {cls: kind for kind, cls in KINDS.items()}
# an alert's updates share its stream: the webhooks group sees a resolve after its alert
STREAM_OF_KIND = {"turn": "turns", "alert": "alerts", "intervention": "interventions", "alert_update": "alerts"}
PERSISTED_STREAMS = ("turns", "alerts", "interventions")  # the durable streams the store is written from
REPLICA_MEMORY_S = 3_600  # a replica silent this long is forgotten by replicas() (and its alert resolves)
LAG_SCAN = 2_000  # on Redis 6.2, lag() counts undelivered entries up to this many (it reads them whole)
GROUPS = {"turns": ("persist",), "alerts": ("persist", "webhooks"), "interventions": ("persist",), "ingest": ("shadow",)}


@dataclass(frozen=True)
class Entry:
    stream: str
    id: str
    kind: str
    data: dict


def entry_order(eid: str) -> tuple[int, int]:
    """A stream entry id (``ms-seq``) as a sortable pair."""
    ms, _, seq = eid.partition("-")
    return int(ms), int(seq or 0)


def _decode(v):
    return v.decode() if isinstance(v, bytes) else v


def _id_tuple(i: str) -> tuple[int, int]:
    a, _, b = i.partition("-")
    return int(a), int(b or 0)


class Streams:
    def __init__(self, client: redis.Redis, prefix: str = "axiswatch", maxlen: int = 100_000, live_maxlen: int = 2_000,
                 live_ttl_s: int = 86_400):
        # Any: redis-py annotates every command for its sync and async clients at once (Awaitable | value)
        self.r: Any = client
        self.prefix, self.maxlen, self.live_maxlen, self.live_ttl_s = prefix, maxlen, live_maxlen, live_ttl_s

    @classmethod
    def from_url(cls, url: str, **kw) -> Streams:
        # fail fast when Redis is down (the outbox buffers); block_ms reads add their own wait on top
        return cls(redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=10, health_check_interval=30),
                   **kw)

    def key(self, name: str) -> str:
        return f"{self.prefix}:{name}"

    def live_key(self, session_id: str) -> str:
        return f"{self.prefix}:live:{session_id}"

    def forget_live(self, session_id: str) -> None:
        """Drop a session's live tail (its token batches, for the dashboard): an erased session's text
        must not stay in Redis until the tail expires."""
        p = self.r.pipeline(transaction=False)
        p.delete(self.live_key(session_id))
        p.zrem(self.key("live_index"), session_id)
        p.execute()

    def forget_handled(self, session_ids: set[str], chunk: int = 1000) -> int:
        """Delete the durable streams' entries of these (erased) sessions that every group has handled
        (they stay up to ``maxlen`` after delivery); an entry a group still needs stays, and the store
        drops or redacts it when it arrives. The number of entries deleted."""
        deleted = 0
        for stream in PERSISTED_STREAMS:
            key, safe = self.key(stream), self._safe_min_id(stream)
            end = _id_tuple(safe) if safe is not None else None
            start = "-"
            while got := self.r.xrange(key, min=start, max="+", count=chunk):
                ids, reached = [], False
                for eid, fields in got:
                    if end is not None and _id_tuple(_decode(eid)) >= end:
                        reached = True  # a group still needs this one and every later entry
                        break
                    try:
                        sid = json.loads(fields.get(b"data") or fields.get("data") or "{}").get("session_id")
                    except (ValueError, AttributeError):
                        continue
                    if sid in session_ids:
                        ids.append(eid)
                deleted += int(self.r.xdel(key, *ids)) if ids else 0
                if reached or len(got) < chunk:
                    break
                start = "(" + _decode(got[-1][0])
        return deleted

    # --- producing ------------------------------------------------------------------

    def ensure_groups(self, webhooks: bool = False) -> None:
        """Create the consumer groups (from the start of their streams) if missing.

        ``webhooks=False`` leaves out the ``webhooks`` group: a group nobody reads would
        hold back trimming of the alerts stream forever."""
        for stream, groups in GROUPS.items():
            for g in groups:
                if g == "webhooks" and not webhooks:
                    continue
                try:
                    self.r.xgroup_create(self.key(stream), g, id="0", mkstream=True)
                except redis.ResponseError as e:
                    if "BUSYGROUP" not in str(e):
                        raise

    _RESERVE = """
    local out = {}
    for i, key in ipairs(KEYS) do
        local cur = tonumber(redis.call('GET', key) or '0')
        local floor = tonumber(ARGV[2 * i - 1])
        if cur < floor then cur = floor end
        redis.call('SET', key, cur + tonumber(ARGV[2 * i]), 'EX', tonumber(ARGV[#ARGV]))
        out[i] = cur
    end
    return out
    """

    def reserve_turns(self, items: list[tuple[str, int, int]], ttl_s: int = 7 * 86_400) -> list[int]:
        """For each ``(session_id, floor, n)``: reserve ``n`` consecutive turn numbers, atomically for
        all replicas; the first of them (never below ``floor``, what this replica already knows)."""
        if not items:
            return []
        keys = [self.key(f"turn:{sid}") for sid, _, _ in items]
        args = [v for _, floor, n in items for v in (int(floor), int(n))] + [int(ttl_s)]
        return [int(x) for x in self.r.eval(self._RESERVE, len(keys), *keys, *args)]

    def publish(self, record: TurnRecord | AlertEvent | InterventionRecord | AlertUpdate,
                pipe=None) -> tuple[str, str] | None:
        """Append a record to its durable stream (in ``pipe`` when given); without a pipe, ``(stream, entry
        id)`` of the new entry (:meth:`~monitor.workers.persist.PersistWorker.wait_persisted` takes it)."""
        kind = KIND_OF[type(record)]
        fields = {"v": VERSION, "kind": kind, "data": json.dumps(record.to_dict(), separators=(",", ":"))}
        entry = (pipe or self.r).xadd(self.key(STREAM_OF_KIND[kind]), fields)
        return None if pipe is not None else (STREAM_OF_KIND[kind], _decode(entry))

    def publish_live(self, session_id: str, payload: dict, pipe=None) -> None:
        """Append to the session's live tail (token batches, state); capped at ``live_maxlen``."""
        fields = {"v": VERSION, "kind": payload.get("kind", "tokens"), "data": json.dumps(payload, separators=(",", ":"))}
        p = pipe or self.r.pipeline(transaction=False)
        p.xadd(self.live_key(session_id), fields, maxlen=self.live_maxlen, approximate=True)
        p.expire(self.live_key(session_id), self.live_ttl_s)  # an idle session's tail goes away by itself
        p.zadd(self.key("live_index"), {session_id: time.time()})
        if pipe is None:
            p.zremrangebyscore(self.key("live_index"), "-inf", time.time() - self.live_ttl_s)
            p.execute()

    def publish_live_many(self, items: list[tuple[str, dict]]) -> None:
        """Several sessions' live entries in one round trip (the engine sends one per decoding step)."""
        if not items:
            return
        p = self.r.pipeline(transaction=False)
        for sid, payload in items:
            self.publish_live(sid, payload, pipe=p)
        p.zremrangebyscore(self.key("live_index"), "-inf", time.time() - self.live_ttl_s)
        p.execute()

    def ping(self) -> bool:
        return bool(self.r.ping())

    def reject_ingest(self, entry_id: str, error: str, data) -> None:
        """Keep an ingest entry shadow mode could not score on ``{prefix}:ingest:rejected``."""
        self.r.rpush(self.key("ingest:rejected"), json.dumps({"id": entry_id, "error": error, "data": data}))

    def heartbeat(self, replica: str, ttl_s: int = 10) -> None:
        """Say that ``replica`` (a ``serve`` process) is alive for the next ``ttl_s`` seconds, and note the time
        in ``{prefix}:replicas`` (:meth:`replicas`), where it stays after the key expires."""
        now = time.time()
        p = self.r.pipeline(transaction=False)
        p.set(self.key(f"replica:{replica}"), now, ex=ttl_s)
        p.zadd(self.key("replicas"), {replica: now})
        p.zremrangebyscore(self.key("replicas"), "-inf", now - REPLICA_MEMORY_S)
        p.execute()

    def replicas(self) -> dict[str, float]:
        """Every replica heard from in the last ``REPLICA_MEMORY_S`` and not retired: id -> time (epoch seconds,
        its own clock) of its latest heartbeat. A silent one is a replica that stopped without :meth:`retire`."""
        got = self.r.zrangebyscore(self.key("replicas"), time.time() - REPLICA_MEMORY_S, "+inf", withscores=True)
        return {_decode(k): float(v) for k, v in got}

    def retire(self, replica: str) -> None:
        """A replica that stops cleanly leaves ``{prefix}:replicas`` (its heartbeat key expires by itself)."""
        self.r.zrem(self.key("replicas"), replica)

    def alive(self, replicas: list[str]) -> set[str]:
        """The replicas among these whose heartbeat has not expired."""
        if not replicas:
            return set()
        return {r for r, v in zip(replicas, self.r.mget([self.key(f"replica:{r}") for r in replicas])) if v}

    def set_deployment(self, info: dict) -> None:
        """What a ``serve`` replica runs with (model, layer, thresholds, capping...), for the dashboard."""
        self.r.set(self.key("deployment"), json.dumps({**info, "updated_at": time.time()}))

    def publish_ingest(self, session_id: str, messages: list[dict], model: str = "", pipe=None) -> None:
        """What an external gateway publishes in shadow mode: a finished turn's conversation."""
        payload = {"session_id": session_id, "messages": messages, "model": model}
        (pipe or self.r).xadd(self.key("ingest"), {"v": VERSION, "kind": "ingest", "data": json.dumps(payload)})

    # --- consuming ------------------------------------------------------------------

    def _entries(self, reply) -> list[Entry]:
        out = []
        for stream, items in reply or []:
            name = _decode(stream).removeprefix(self.prefix + ":")
            for eid, fields in items:
                if fields is None:  # deleted while pending
                    continue
                f = {_decode(k): _decode(v) for k, v in fields.items()}
                try:
                    data = json.loads(f["data"])
                except (KeyError, json.JSONDecodeError):
                    log.error("malformed entry %s in %s: %r", _decode(eid), name, f)
                    data = {"_malformed": f}
                out.append(Entry(name, _decode(eid), f.get("kind", ""), data))
        return out

    def read_group(self, stream: str, group: str, consumer: str, count: int = 100, block_ms: int | None = 1000) -> list[Entry]:
        """New entries for ``consumer`` of ``group`` (XREADGROUP ``>``)."""
        reply = self.r.xreadgroup(group, consumer, {self.key(stream): ">"}, count=count, block=block_ms)
        return self._entries(reply)

    def reclaim(self, stream: str, group: str, consumer: str, min_idle_ms: int = 30_000, count: int = 100) -> list[Entry]:
        """Take over entries other consumers were given but never acknowledged (XAUTOCLAIM)."""
        out, start = [], "0-0"
        while True:
            reply = self.r.xautoclaim(self.key(stream), group, consumer, min_idle_ms, start_id=start, count=count)
            nxt, items = reply[0], reply[1]
            out += self._entries([(self.key(stream), items)])
            if _decode(nxt) == "0-0" or not items:
                return out
            start = _decode(nxt)

    def ack(self, stream: str, group: str, ids: list[str]) -> int:
        return int(self.r.xack(self.key(stream), group, *ids)) if ids else 0

    def handled(self, stream: str, group: str, ids: list[str]) -> bool:
        """Whether ``group`` has taken every entry ``ids`` of ``stream`` and acknowledged it, by whichever of
        its consumers: delivered up to the newest of them, and none still pending."""
        if not ids:
            return True
        key, order = self.key(stream), sorted(ids, key=entry_order)
        info = next((g for g in self.r.xinfo_groups(key) if _decode(g["name"]) == group), None)
        if info is None or entry_order(_decode(info["last-delivered-id"])) < entry_order(order[-1]):
            return False
        pending = self.r.xpending_range(key, group, min=order[0], max=order[-1], count=len(ids) + 1000)
        return not {_decode(p["message_id"]) for p in pending} & set(ids)

    def read_live(self, session_id: str, after: str = "0-0", count: int = 500, block_ms: int | None = None) -> list[Entry]:
        reply = self.r.xread({self.live_key(session_id): after}, count=count, block=block_ms)
        return self._entries(reply)

    def live_sessions(self, since: float) -> dict[str, float]:
        """Sessions with a live entry at or after ``since`` (epoch seconds): id -> time of the latest."""
        return {_decode(k): float(v) for k, v in
                self.r.zrangebyscore(self.key("live_index"), since, "+inf", withscores=True)}

    def live_latest(self, session_ids: list[str]) -> dict[str, dict]:
        """The newest live entry of each session (one round trip); sessions without one are left out."""
        p = self.r.pipeline(transaction=False)
        for sid in session_ids:
            p.xrevrange(self.live_key(sid), count=1)
        out = {}
        for sid, reply in zip(session_ids, p.execute()):
            if reply and (entries := self._entries([(self.live_key(sid), reply)])):
                out[sid] = entries[0].data
        return out

    def deployment(self) -> dict | None:
        """What :meth:`set_deployment` wrote last (None when no replica has started)."""
        raw = self.r.get(self.key("deployment"))
        try:
            return json.loads(raw) if raw else None
        except json.JSONDecodeError:
            log.error("malformed %s: %r", self.key("deployment"), raw[:200])
            return None

    # --- trimming and lag -----------------------------------------------------------

    def _safe_min_id(self, stream: str) -> str | None:
        """The oldest entry some group still needs: its oldest pending entry, or the
        first entry after its last delivered one. None when there are no groups."""
        key = self.key(stream)
        try:
            groups = self.r.xinfo_groups(key)
        except redis.ResponseError:
            return None
        if not groups:
            return None
        need = []
        for g in groups:
            name = _decode(g["name"])
            pending = self.r.xpending(key, name)
            if pending and pending.get("pending"):
                need.append(_id_tuple(_decode(pending["min"])))
            else:
                ms, seq = _id_tuple(_decode(g["last-delivered-id"]))
                need.append((ms, seq + 1))
        ms, seq = min(need)
        return f"{ms}-{seq}"

    def trim(self, stream: str) -> int:
        """Trim a durable stream to about ``maxlen`` without dropping anything a group still needs.

        Returns the number of entries removed."""
        key = self.key(stream)
        length = self.r.xlen(key)
        if length <= self.maxlen:
            return 0
        safe = self._safe_min_id(stream)
        if safe is None:
            return int(self.r.xtrim(key, maxlen=self.maxlen, approximate=False))
        # the first entry to keep when cutting down to maxlen, unless a group still needs an older one
        first_kept = self.r.xrange(key, min="-", max="+", count=length - self.maxlen + 1)[-1][0]
        limit = min(_id_tuple(_decode(first_kept)), _id_tuple(safe))
        removed = int(self.r.xtrim(key, minid=f"{limit[0]}-{limit[1]}", approximate=False))
        if self.r.xlen(key) > self.maxlen:
            log.warning("stream %s holds %d entries (> %d): a consumer group lags; nothing undelivered was trimmed",
                        key, self.r.xlen(key), self.maxlen)
        return removed

    def lag(self, stream: str) -> dict[str, dict]:
        """Per group: entries not yet delivered (``undelivered``) and delivered but unacknowledged (``pending``)."""
        key = self.key(stream)
        try:
            groups = self.r.xinfo_groups(key)
        except redis.ResponseError:
            return {}
        out = {}
        for g in groups:
            name = _decode(g["name"])
            last = _decode(g["last-delivered-id"])
            if g.get("lag") is not None:  # Redis >= 7 keeps the count
                undelivered = int(g["lag"])
            else:  # Redis 6.2 (the embedded server): count what lies after the last delivered id, up to
                # LAG_SCAN entries (each scrape reads them whole: past that, the gauge says "at least")
                undelivered = len(self.r.xrange(key, min=f"({last}" if last != "0-0" else "-", max="+",
                                                count=LAG_SCAN))
            out[name] = {"undelivered": undelivered, "pending": int(g["pending"])}
        return out
