"""Scale-out on one machine: two `serve --no-workers` replicas and two `axiswatch worker` processes
sharing one Redis and one PostgreSQL, 50 concurrent sessions. Every token score is stored exactly once
and every alert is delivered to the webhook exactly once per event id."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from polling import wait_until
from test_webhooks import SECRET, Receiver

from monitor.store import Store
from monitor.streams.embedded import EmbeddedRedis, _free_port

AXISWATCH = str(Path(sys.executable).parent / "axiswatch")
SESSIONS, TURNS = 50, 2


@pytest.mark.slow
@pytest.mark.smollm  # the default model, in the replicas
def test_two_replicas_two_workers_fifty_sessions(tmp_path, pg_url):
    redis = EmbeddedRedis(data_dir=tmp_path / "redis").start()
    hook = Receiver()
    Store(pg_url).migrate()
    env = dict(os.environ, REDIS_URL=redis.url, AXISWATCH_DATABASE_URL=pg_url, AXISWATCH_WEBHOOK_URL=hook.url,
               AXISWATCH_WEBHOOK_SECRET=SECRET, AXISWATCH_BATCH_SIZE="16", AXISWATCH_MIN_TOKENS="1",
               OMP_NUM_THREADS="1",  # two replicas on two cores: one thread each
               # absolute thresholds every reply crosses: every session alerts at once (deterministic load;
               # the default session-relative rule stays quiet through each session's reference reply)
               AXISWATCH_DRIFT_BASELINE="absolute", AXISWATCH_THRESHOLD_WATCH="1000", AXISWATCH_THRESHOLD_WARNING="999",
               AXISWATCH_THRESHOLD_CRITICAL="-1000")
    ports = [_free_port(), _free_port()]
    logs = [tmp_path / f"{name}.log" for name in ("replica-0", "replica-1", "worker-0", "worker-1")]
    cmds = [[AXISWATCH, "serve", "--no-workers", "--port", str(p)] for p in ports] + [[AXISWATCH, "worker"]] * 2
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log.open("wb"))
             for cmd, log in zip(cmds, logs)]
    generated: dict[str, int] = {}
    try:
        def ready(p):
            try:
                return httpx.get(f"http://127.0.0.1:{p}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(lambda: all(ready(p) for p in ports), 180, "replicas ready")

        def converse(i: int) -> None:  # a session sticks to one replica (load-balancer affinity)
            url, sid, msgs, n = f"http://127.0.0.1:{ports[i % 2]}/v1/chat/completions", f"scale-{i}", [], 0
            for t in range(TURNS):
                msgs.append({"role": "user", "content": f"Question {t} of session {i}: who are you?"})
                r = httpx.post(url, json={"messages": msgs, "max_tokens": 8, "session_id": sid}, timeout=300)
                r.raise_for_status()
                body = r.json()
                msgs.append({"role": "assistant", "content": body["choices"][0]["message"]["content"]})
                n += len(body["axiswatch"]["scores"])
            generated[sid] = n

        t0 = time.monotonic()
        with ThreadPoolExecutor(SESSIONS) as pool:
            list(pool.map(converse, range(SESSIONS)))
        wall = time.monotonic() - t0
        store = Store(pg_url)
        wait_until(lambda: sum(s["n_tokens"] for s in store.list_sessions(limit=1000)) >= sum(generated.values()),
               120, "all tokens stored")
        # the receiver records a request before it answers; the worker stores "delivered" after the answer
        wait_until(lambda: (alerts := store.list_alerts(limit=10_000))
               and len({r["headers"]["webhook-id"] for r in hook.requests if r["status"] == 200}) >= len(alerts)
               and all(a["delivery_status"] == "delivered" for a in alerts), 120, "all alerts delivered")
        alerts = store.list_alerts(limit=10_000)
    except BaseException:
        for log in logs:  # what the processes said, to tell why
            print(f"--- {log.name}\n" + log.read_text(errors="replace")[-4000:])
        raise
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(60)
        hook.close()
        redis.stop()
    sessions = {s["id"]: s for s in store.list_sessions(limit=1000)}
    assert set(sessions) == set(generated) and len(generated) == SESSIONS
    for sid, n in generated.items():
        assert sessions[sid]["n_tokens"] == n > 0 and sessions[sid]["n_turns"] == 2 * TURNS, sid
    assert len(alerts) >= SESSIONS  # every session alerts
    delivered = Counter(r["headers"]["webhook-id"] for r in hook.requests if r["status"] == 200)
    assert set(delivered) == {a["event_id"] for a in alerts}
    assert max(delivered.values()) == 1  # exactly once per event id, across two alert workers
    assert all(a["delivery_status"] == "delivered" for a in alerts)
    print(f"scale-out: 2 replicas + 2 workers, {SESSIONS} sessions, {sum(generated.values())} tokens in "
          f"{wall:.1f} s, {len(alerts)} alerts, each delivered once")
