"""Soak: many sessions through `axiswatch serve --no-workers` and an `axiswatch worker`, memory sampled.

    .venv/bin/python bench/bench_soak.py [--sessions 600] [--turns 2] [--tokens 12] [--concurrency 16]

Both processes run on one external embedded Redis and a temporary SQLite file. Sessions are driven in
waves of ``--concurrency``; after every tenth of the run the resident memory (VmRSS) of the server and
the worker is read from /proc. It prints the RSS after warm-up and at the end, the growth per 1,000
sessions over the second half of the run (where a leak shows as a steady slope), and checks that every
generated token was stored. The engine keeps at most 10,000 sessions in memory (least recently used
leave; the store keeps them), so a run shorter than that also measures what each session costs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from monitor.store import Store
from monitor.streams.embedded import EmbeddedRedis, _free_port

AXISWATCH = str(Path(sys.executable).parent / "axiswatch")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=600)
    ap.add_argument("--turns", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=12)
    ap.add_argument("--concurrency", type=int, default=16)
    a = ap.parse_args()
    tmp = tempfile.TemporaryDirectory(prefix="axiswatch-soak-")
    redis = EmbeddedRedis(data_dir=Path(tmp.name) / "redis").start()
    db, port = f"sqlite:///{tmp.name}/soak.db", _free_port()
    env = dict(os.environ, REDIS_URL=redis.url, AXISWATCH_DATABASE_URL=db, AXISWATCH_PORT=str(port),
               AXISWATCH_BATCH_SIZE=str(a.concurrency))
    serve = subprocess.Popen([AXISWATCH, "serve", "--no-workers"], env=env, stdout=subprocess.DEVNULL)
    worker = subprocess.Popen([AXISWATCH, "worker"], env=env, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    generated, samples = 0, []
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)

        def session(i: int) -> int:
            msgs, n = [], 0
            for t in range(a.turns):
                msgs.append({"role": "user", "content": f"Session {i}, question {t}: tell me about rivers."})
                body = httpx.post(url, json={"messages": msgs, "max_tokens": a.tokens, "session_id": f"soak-{i}"},
                                  timeout=600).raise_for_status().json()
                msgs.append({"role": "assistant", "content": body["choices"][0]["message"]["content"]})
                n += len(body["axiswatch"]["scores"])
            return n

        t0, step = time.monotonic(), max(a.sessions // 10, a.concurrency)
        with ThreadPoolExecutor(a.concurrency) as pool:
            for start in range(0, a.sessions, step):
                generated += sum(pool.map(session, range(start, min(start + step, a.sessions))))
                done = min(start + step, a.sessions)
                samples.append((done, rss_mb(serve.pid), rss_mb(worker.pid)))
                print(f"{done:6d} sessions  {time.monotonic() - t0:7.1f} s  serve {samples[-1][1]:7.1f} MB  "
                      f"worker {samples[-1][2]:6.1f} MB", flush=True)
        store = Store(db)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and store.token_count_total() < generated:
            time.sleep(0.5)
        stored = store.token_count_total()
    finally:
        for p in (serve, worker):
            p.terminate()
            p.wait(60)
        redis.stop()
        tmp.cleanup()
    half = samples[len(samples) // 2:]
    slope = lambda k: ((half[-1][k] - half[0][k]) / max(half[-1][0] - half[0][0], 1) * 1000)  # noqa: E731
    print(f"\n{a.sessions} sessions x {a.turns} turns, {generated} tokens generated, {stored} stored "
          f"({'all' if stored == generated else 'MISSING ' + str(generated - stored)})")
    print(f"serve RSS  after the first tenth {samples[0][1]:.0f} MB, at the end {samples[-1][1]:.0f} MB, "
          f"second half {slope(1):+.1f} MB per 1,000 sessions")
    print(f"worker RSS after the first tenth {samples[0][2]:.0f} MB, at the end {samples[-1][2]:.0f} MB, "
          f"second half {slope(2):+.1f} MB per 1,000 sessions")
    return 0 if stored == generated else 1  # a soak that lost tokens fails


if __name__ == "__main__":
    raise SystemExit(main())
