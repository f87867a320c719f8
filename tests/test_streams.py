"""Redis Streams against real servers: the embedded redis-server, and an external Redis where
``AXISWATCH_TEST_REDIS_URL`` names one (CI's; skipped without it). On the external server every test
works under a key prefix of its own and deletes only its own keys."""

from __future__ import annotations

import uuid

import pytest
import redis

from monitor.records import AlertEvent, InterventionRecord, TurnRecord
from monitor.streams import Streams
from monitor.streams.embedded import EmbeddedRedis


@pytest.fixture(params=["embedded", "external"])
def streams(request):
    url = request.getfixturevalue("embedded").url if request.param == "embedded" else \
        request.getfixturevalue("external_redis_url")
    s = Streams.from_url(url, prefix=f"awtest-{uuid.uuid4().hex[:12]}", maxlen=20)
    yield s
    for k in s.r.scan_iter(f"{s.prefix}:*"):
        s.r.delete(k)


def turn(i, session="s1"):
    return TurnRecord(session, i, "assistant", f"text {i}", 21, ["a", "b"], [1.5, -2.25])


def test_embedded_server_starts_and_stops():
    e = EmbeddedRedis().start()
    r = redis.Redis.from_url(e.url)
    assert r.ping() and r.info()["tcp_port"] == e.port
    proc = e.proc
    e.stop()
    assert proc.poll() is not None
    with pytest.raises(redis.ConnectionError):
        r.ping()


def test_publish_consume_ack_roundtrip(streams):
    streams.ensure_groups(webhooks=True)
    streams.ensure_groups()  # idempotent
    t, a = turn(1), AlertEvent("s1", 1, 5, "warning", -3.0, -2.0)
    streams.publish(t)
    streams.publish(a)
    streams.publish(InterventionRecord("s1", 1, 6, "cfg", {"warning": -2.0}, [21, 22]))
    got = streams.read_group("turns", "persist", "w1", block_ms=None)
    assert [e.kind for e in got] == ["turn"] and TurnRecord.from_dict(got[0].data) == t
    alerts_p = streams.read_group("alerts", "persist", "w1", block_ms=None)
    alerts_w = streams.read_group("alerts", "webhooks", "h1", block_ms=None)
    assert AlertEvent.from_dict(alerts_p[0].data) == a == AlertEvent.from_dict(alerts_w[0].data)
    assert streams.lag("turns")["persist"] == {"undelivered": 0, "pending": 1}
    assert streams.ack("turns", "persist", [got[0].id]) == 1
    assert streams.lag("turns")["persist"]["pending"] == 0
    assert streams.read_group("turns", "persist", "w1", block_ms=None) == []


def test_unacked_entries_are_reclaimed_by_another_consumer(streams):
    streams.ensure_groups()
    for i in range(3):
        streams.publish(turn(i))
    taken = streams.read_group("turns", "persist", "dead-worker", block_ms=None)
    assert len(taken) == 3  # ... and that worker dies without acking
    assert streams.reclaim("turns", "persist", "w2", min_idle_ms=10_000) == []  # not idle long enough
    import time

    time.sleep(0.05)
    again = streams.reclaim("turns", "persist", "w2", min_idle_ms=10)
    assert [e.id for e in again] == [e.id for e in taken]
    streams.ack("turns", "persist", [e.id for e in again])
    assert streams.lag("turns")["persist"] == {"undelivered": 0, "pending": 0}


def test_trim_never_drops_what_a_group_still_needs(streams):
    streams.ensure_groups()
    for i in range(50):
        streams.publish(turn(i))
    # nobody has read anything: trimming must keep all 50 and report the lag
    assert streams.trim("turns") == 0
    assert streams.r.xlen(streams.key("turns")) == 50
    assert streams.lag("turns")["persist"]["undelivered"] == 50
    # the persist group reads and acks 40: now at most those 40 may go
    got = streams.read_group("turns", "persist", "w", count=40, block_ms=None)
    streams.ack("turns", "persist", [e.id for e in got])
    removed = streams.trim("turns")
    assert removed == 30 and streams.r.xlen(streams.key("turns")) == 20  # down to maxlen
    rest = streams.read_group("turns", "persist", "w", count=100, block_ms=None)
    assert [TurnRecord.from_dict(e.data).turn for e in rest] == list(range(40, 50))


def test_trim_keeps_pending_entries(streams):
    streams.ensure_groups()
    for i in range(30):
        streams.publish(turn(i))
    got = streams.read_group("turns", "persist", "w", count=30, block_ms=None)
    streams.ack("turns", "persist", [e.id for e in got[1:]])  # entry 0 stays pending
    assert streams.trim("turns") == 0
    assert streams.r.xlen(streams.key("turns")) == 30


def test_live_tail_is_capped_and_readable(streams):
    streams.live_maxlen = 10
    for i in range(200):
        streams.publish_live("s9", {"kind": "tokens", "start": i, "scores": [float(i)]})
    tail = streams.read_live("s9")
    assert 10 <= len(tail) < 200 and tail[-1].data["start"] == 199
    newer = streams.read_live("s9", after=tail[-2].id)
    assert [e.data["start"] for e in newer] == [199]


def test_alerts_without_a_webhook_group_are_trimmed(streams):
    """No webhook worker configured: no webhooks group, so persisted alerts do not pin the stream."""
    streams.ensure_groups()
    assert [g["name"] for g in streams.r.xinfo_groups(streams.key("alerts"))] in ([b"persist"], ["persist"])
    for i in range(30):
        streams.publish(AlertEvent("s", i, 0, "watch", -9.0, -8.0))
    got = streams.read_group("alerts", "persist", "w", count=30, block_ms=None)
    streams.ack("alerts", "persist", [e.id for e in got])
    assert streams.trim("alerts") == 10 and streams.r.xlen(streams.key("alerts")) == 20


def test_live_tail_expires(streams):
    streams.live_ttl_s = 120
    streams.publish_live("s-ttl", {"kind": "tokens", "start": 0, "scores": [1.0]})
    assert 0 < streams.r.ttl(streams.live_key("s-ttl")) <= 120
