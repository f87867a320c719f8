"""Faults injected into real processes: Redis killed and restarted mid-generation, a persistence
worker killed with SIGKILL mid-batch. Afterwards every scored token is stored exactly once.

Redis runs with an append-only file (``appendfsync always``), as a deployment that must not lose
entries across a Redis restart should (README, "Reliability").
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from polling import wait_until
from serving import wait_http

from monitor.engine import ChatRequest
from monitor.records import TurnRecord
from monitor.store import Store
from monitor.streams import Streams
from monitor.streams.embedded import EmbeddedRedis, _free_port
from monitor.streams.outbox import Outbox
from probes.generation import GenerationOptions

AXISWATCH = str(Path(sys.executable).parent / "axiswatch")


def durable_redis(data_dir: Path, port: int) -> EmbeddedRedis:
    return EmbeddedRedis(port=port, data_dir=data_dir, durable=True).start()


def test_outbox_buffers_spills_and_replays_in_order(tmp_path):
    """Unit level, real Redis and SQLite: records made while Redis is down come out afterwards, in order,
    through the memory queue and the store's spill table."""
    port = _free_port()
    redis = durable_redis(tmp_path / "redis", port)
    store = Store(f"sqlite:///{tmp_path / 'a.db'}")
    store.migrate()
    streams = Streams.from_url(redis.url)
    streams.ensure_groups()
    box = Outbox(streams, store, max_buffer=4, retry_s=0.1)
    rec = lambda n: TurnRecord("s", n, "user", f"m{n}", 21)  # noqa: E731
    box.publish(rec(0))
    redis.proc.kill()
    redis.proc.wait()
    for n in range(1, 11):  # 4 + 4 spilled, 2 in memory
        box.publish(rec(n))
    assert box.down and box.stats["spilled"] == 8 and box.queued == 2 and store.spill_count() == 8
    box.publish_live_many([("s", {"kind": "tokens", "scores": [1.0]})])
    assert box.stats["live_dropped"] == 1
    redis = durable_redis(tmp_path / "redis", port)
    wait_until(lambda: not box.down, 10, "replay")
    box.publish(rec(11))
    turns = [int(e.data["turn"]) for e in Streams.from_url(redis.url).read_group("turns", "persist", "t", count=100,
                                                                                 block_ms=None)]
    assert turns == list(range(12)) and store.spill_count() == 0
    assert box.stats["replayed"] == 10
    # a second outage right after the first: a new replay thread takes over again
    redis.proc.kill()
    redis.proc.wait()
    box.publish(rec(12))
    assert box.down
    redis = durable_redis(tmp_path / "redis", port)
    wait_until(lambda: not box.down, 10, "second replay")
    box.close()
    redis.stop()


def test_spill_left_by_an_earlier_run_is_replayed(tmp_path):
    """A replica that died (or shut down) during an outage left spilled rows: the next replica's outbox
    replays them at start, and a persistence worker drains them if no replica comes back."""
    from monitor.workers.persist import PersistWorker

    redis = EmbeddedRedis(data_dir=tmp_path / "redis").start()
    store = Store(f"sqlite:///{tmp_path / 'a.db'}")
    store.migrate()
    streams = Streams.from_url(redis.url)
    streams.ensure_groups()
    spill = lambda sid: store.spill([("turn", TurnRecord(sid, n, "user", "x", 21).to_dict()) for n in range(3)])  # noqa: E731
    spill("by-outbox")
    box = Outbox(streams, store, retry_s=0.05)
    box.resume()
    wait_until(lambda: not box.down, 10, "resume")
    assert store.spill_count() == 0 and box.stats["replayed"] == 3
    spill("by-worker")
    w = PersistWorker(streams, store, block_ms=10)
    w._up_since -= 100  # past the grace after start
    w.run_once(block_ms=None)
    w.drain()
    assert store.spill_count() == 0
    assert store.get_session("by-outbox")["n_turns"] == 3 and store.get_session("by-worker")["n_turns"] == 3
    box.close()
    redis.stop()


def test_a_publisher_can_wait_until_the_worker_has_stored_what_it_published(tmp_path):
    """What the vLLM plugin waits on before vLLM sends a reply: the outbox returns each entry's id, and the
    persistence worker's ``wait_persisted`` returns once those entries are in the store (False on time-out)."""
    from monitor.workers.persist import PersistWorker

    redis = EmbeddedRedis(data_dir=tmp_path / "redis").start()
    store = Store(f"sqlite:///{tmp_path / 'a.db'}")
    store.migrate()
    streams = Streams.from_url(redis.url)
    streams.ensure_groups()
    box = Outbox(streams, store)
    w = PersistWorker(streams, store, block_ms=50)
    other = PersistWorker(streams, store, name="another-consumer", block_ms=50)
    try:
        entries = [box.publish(TurnRecord("waited", n, "user", "x", 21)) for n in range(3)]
        assert all(e is not None and e[0] == "turns" for e in entries)
        assert not w.wait_persisted(entries, timeout=0.2)  # no worker has run yet
        w.start_thread()
        assert w.wait_persisted(entries, timeout=10)
        assert store.get_session("waited")["n_turns"] == 3
        w.stop()
        # another consumer of the group (an `axiswatch worker` elsewhere) writing them counts as well
        more = [box.publish(TurnRecord("waited-2", n, "user", "x", 21)) for n in range(2)]
        assert not w.wait_persisted(more, timeout=0.2)
        other.start_thread()
        assert w.wait_persisted(more, timeout=10) and store.get_session("waited-2")["n_turns"] == 2
    finally:
        w.stop()
        other.stop()
        box.close()
        redis.stop()


def test_outbox_close_during_an_outage_spills_what_is_queued(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'a.db'}")
    store.migrate()
    box = Outbox(Streams.from_url(f"redis://127.0.0.1:{_free_port()}/0"), store, max_buffer=100, retry_s=0.1)
    for n in range(3):
        box.publish(TurnRecord("s", n, "user", "x", 21))
    assert box.down and box.queued == 3
    box.close()
    assert store.spill_count() == 3 and box.queued == 0


def test_a_full_redis_holds_records_back_instead_of_dropping_them(tmp_path):
    """A Redis that answers but refuses writes (OOM at maxmemory; READONLY after a failover) is down
    for the outbox too: records wait and go out, in order, once it takes writes again."""
    redis = EmbeddedRedis(data_dir=tmp_path / "redis").start()
    store = Store(f"sqlite:///{tmp_path / 'a.db'}")
    store.migrate()
    streams = Streams.from_url(redis.url)
    streams.ensure_groups()
    box = Outbox(streams, store, max_buffer=100, retry_s=0.05)
    box.publish(TurnRecord("s", 0, "user", "m0", 21))
    streams.r.config_set("maxmemory-policy", "noeviction")
    streams.r.config_set("maxmemory", 1)  # every write is refused with OOM from now on
    for n in range(1, 4):
        box.publish(TurnRecord("s", n, "user", f"m{n}", 21))
    assert box.down and box.queued == 3 and box.reserve_turns([("s", 0, 1)]) is None
    streams.r.config_set("maxmemory", 0)
    wait_until(lambda: not box.down, 10, "replay after OOM")
    turns = [int(e.data["turn"]) for e in streams.read_group("turns", "persist", "t", count=100, block_ms=None)]
    assert turns == [0, 1, 2, 3] and box.stats["lost"] == 0
    box.close()
    redis.stop()


def test_redis_killed_and_restarted_mid_generation(tmp_path, tiny_settings):
    """8 live sessions x 3 turns through the real engine (on the tests' tiny random Llama) and persistence
    worker; Redis is SIGKILLed during the first turn and comes back after the second. Generation never stops;
    afterwards each session's stored token count equals the tokens generated, with no duplicate turn or alert."""
    from monitor import service

    port, data = _free_port(), tmp_path / "redis"
    redis = durable_redis(data, port)
    db = f"sqlite:///{tmp_path / 'a.db'}"
    rt = service.start(tiny_settings.with_(database_url=db, redis_url=redis.url, policy="flag"))
    rt.engine.publisher.max_buffer = 6  # small, so the outage also exercises the spill to the store
    sids = [f"outage-{i}" for i in range(8)]
    history = {s: [] for s in sids}
    generated = dict.fromkeys(sids, 0)
    raised = {s: set() for s in sids}  # event ids of the alerts the engine raised
    prompts = ["Tell me about the ocean.", "Who are you, really, underneath it all?", "Write a haiku about rain."]
    killed = threading.Event()

    def kill_when_generating():
        wait_until(lambda: rt.engine.publisher.stats["live"] > 0, 60, "first live tokens")
        redis.proc.kill()
        killed.set()

    try:
        for turn in range(3):
            if turn == 0:
                threading.Thread(target=kill_when_generating, daemon=True).start()
            futs = {}
            for i, s in enumerate(sids):
                history[s].append({"role": "user", "content": prompts[(i + turn) % 3]})
                futs[s] = rt.engine.submit(ChatRequest(s, list(history[s]), GenerationOptions(max_new_tokens=24)))
            for s, f in futs.items():
                res = f.result(timeout=300)
                history[s].append({"role": "assistant", "content": res.text})
                generated[s] += len(res.scores)
                raised[s] |= {a.event_id for a in res.alerts}
            if turn == 1:
                assert killed.is_set() and rt.engine.publisher.down  # generation went on without Redis
                redis = durable_redis(data, port)
        wait_until(lambda: not rt.engine.publisher.down, 30, "outbox replay after Redis returned")
        stats = dict(rt.engine.publisher.stats)
    finally:
        rt.close()  # drains the persistence worker
        redis.stop()
    assert stats["spilled"] > 0 and stats["replayed"] > 0 and stats["lost"] == 0
    store = Store(db)
    for s in sids:
        sess = store.get_session(s)
        assert store.token_count(s) == generated[s] > 0, s
        assert [t["turn"] for t in sess["turns"]] == list(range(6))  # each user and assistant turn once
        assert {a["event_id"] for a in sess["alerts"]} == raised[s], s  # every alert raised, none lost
    assert any(raised.values())  # the outage had alerts to lose
    print(f"outage: {len(sids)} sessions, {sum(generated.values())} tokens, outbox {stats}")


def _stored_turns(store: Store) -> int:
    return sum(s["n_turns"] for s in store.list_sessions(limit=100))


def _settled_pending(streams: Streams) -> int:
    """The persist group's pending count once two reads 50 ms apart agree (commands a frozen worker
    had already written to its socket reach Redis first)."""
    last = -1
    while True:
        time.sleep(0.05)
        now = streams.r.xpending(streams.key("turns"), "persist")["pending"]
        if now == last:
            return now
        last = now


def _kill_holding_a_batch(proc: subprocess.Popen, streams: Streams, store: Store, n: int,
                          timeout_s: float = 60):
    """SIGKILL `proc` at a moment it holds read-but-unacknowledged entries. Racing a kill against a
    fast worker can land between two batches (nothing pending), so the worker is frozen with SIGSTOP,
    checked, and either killed frozen or let go and tried again."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        proc.send_signal(signal.SIGSTOP)
        wait_until(lambda: Path(f"/proc/{proc.pid}/stat").read_text().split(") ", 1)[1][0] in "Tt",
                   5, "worker stopped", poll_s=0.001)
        pending = _settled_pending(streams)
        if pending > 0 and _stored_turns(store) < n:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return
        proc.send_signal(signal.SIGCONT)
        time.sleep(0.003)
    raise AssertionError("the worker was never caught holding a batch")


def test_persistence_worker_sigkilled_mid_batch(tmp_path):
    """A worker process killed with SIGKILL while persisting 10,000 turns; a second worker reclaims its
    pending entries: every turn is stored exactly once."""
    redis = EmbeddedRedis(data_dir=tmp_path / "redis").start()
    streams = Streams.from_url(redis.url)
    streams.ensure_groups()
    n = 10_000
    pipe = streams.r.pipeline(transaction=False)
    for i in range(n):
        streams.publish(TurnRecord(f"w-{i % 40}", i // 40, "assistant", "x", 21, ["a", "b"], [1.0, 2.0]), pipe=pipe)
    pipe.execute()
    db = f"sqlite:///{tmp_path / 'a.db'}"
    Store(db).migrate()
    env = dict(os.environ, REDIS_URL=redis.url, AXISWATCH_DATABASE_URL=db, AXISWATCH_WORKER_RECLAIM_IDLE_MS="500")
    store = Store(db)
    first = subprocess.Popen([AXISWATCH, "worker"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: _stored_turns(store) > 0, 60, "first rows", poll_s=0.01)
        _kill_holding_a_batch(first, streams, store, n)
        pending = streams.r.xpending(streams.key("turns"), "persist")["pending"]
        stored_at_kill = _stored_turns(store)
        assert stored_at_kill < n and pending > 0  # it died with entries taken but not acknowledged
        second = subprocess.Popen([AXISWATCH, "worker"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_until(lambda: _stored_turns(store) == n
                       and streams.r.xpending(streams.key("turns"), "persist")["pending"] == 0, 120, "all stored")
        finally:
            second.terminate()
            second.wait(20)
    finally:
        if first.poll() is None:
            first.kill()
        redis.stop()
    assert sum(s["n_tokens"] for s in store.list_sessions(limit=100)) == 2 * n  # no duplicate rows
    print(f"worker SIGKILL: {n} turns, {pending} pending at the kill ({stored_at_kill} stored), 0 lost, 0 duplicated")


@pytest.mark.smollm  # `axiswatch serve` processes on the default model
def test_serve_killed_mid_reply_keeps_what_was_streamed(tmp_path):
    """`axiswatch serve` SIGKILLed while streaming a reply: the tokens the client already had are stored
    as the (partial) turn, the session is marked interrupted, and a restarted server continues it."""
    import httpx

    redis = EmbeddedRedis(data_dir=tmp_path / "redis").start()
    db, port = f"sqlite:///{tmp_path / 'a.db'}", _free_port()
    env = dict(os.environ, REDIS_URL=redis.url, AXISWATCH_DATABASE_URL=db, AXISWATCH_PORT=str(port))
    url = f"http://127.0.0.1:{port}"

    def start():
        proc = subprocess.Popen([AXISWATCH, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_http(url + "/readyz", proc, 120)
        return proc

    first = start()
    second = None
    received = []
    try:
        body = {"messages": [{"role": "user", "content": "Tell me a very long story about a lighthouse keeper."}],
                "max_tokens": 600, "stream": True, "session_id": "cut-off"}
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as r:
            for line in r.iter_lines():
                if line.startswith("data: {") and '"token_index"' in line:
                    received.append(line)
                    if len(received) == 20:
                        first.send_signal(signal.SIGKILL)
                        first.wait()
                        break
        store = Store(db)
        second = start()
        sess = wait_until(lambda: (s := store.get_session("cut-off")) and s["interrupted"] and s, 60,
                          "interrupted session stored")
        turns = {t["turn"]: t for t in sess["turns"]}
        assert turns[0]["role"] == "user" and "lighthouse" in turns[0]["text"]
        assert turns[1]["role"] == "assistant" and turns[1]["n_tokens"] >= len(received) == 20
        import json

        streamed = "".join(json.loads(x[6:])["choices"][0]["delta"]["content"] for x in received)
        assert turns[1]["text"].startswith(streamed) and turns[1]["scores"]
        # the restarted server serves new requests and continues the session's numbering
        r = httpx.post(url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "Go on."}],
                                                          "max_tokens": 4, "session_id": "cut-off"}, timeout=60)
        assert r.status_code == 200 and r.json()["axiswatch"]["turn"] == 3
    finally:
        for p in (first, second):
            if p is not None and p.poll() is None:
                p.terminate()
                p.wait(30)
        redis.stop()
    print(f"serve SIGKILL: {len(received)} tokens streamed, {turns[1]['n_tokens']} stored, session interrupted")



def test_redis_and_the_store_both_down_keep_a_bounded_queue(tmp_path):
    """Nowhere to spill: the outbox keeps at most HARD_LIMIT x max_buffer records in memory, drops the
    oldest beyond that and counts them, and tries the store only once a buffer more has queued."""
    from monitor.streams.outbox import HARD_LIMIT

    store = Store(f"sqlite:///{tmp_path / 'gone' / 'a.db'}")  # never migrated: every spill fails
    tries = []
    real = store.spill
    store.spill = lambda items: (tries.append(len(items)), real(items))
    box = Outbox(Streams.from_url(f"redis://127.0.0.1:{_free_port()}/0"), store, max_buffer=5, retry_s=60)
    for n in range(80):
        box.publish(TurnRecord("s", n, "user", "x", 21))
    assert box.queued <= HARD_LIMIT * 5 and box.stats["lost"] == 80 - box.queued > 0
    assert len(tries) <= 80 // 5 + 1  # not one failed spill per record
    assert [r.turn for r in box._buf][-1] == 79  # the newest are kept
    box.close()
