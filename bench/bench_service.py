"""The service targets, measured in one run on the bundled model:

1. audit (teacher forcing) tokens/s vs greedy generation tokens/s       >= 10x
2. persistence worker: token scores/s from Redis Streams into SQLite    >= 50,000/s
3. token -> Redis latency during a real engine run, p99                 <= 10 ms
4. end to end through the HTTP server (SSE streaming) vs plain generate >= 0.90x

    .venv/bin/python bench/bench_service.py [--quick]

Ratios are measured side by side in the same run, the two sides interleaved
round by round (best of the rounds), on the same model, prompts and token
budgets. Everything this starts (embedded Redis servers, uvicorn, threads,
temporary SQLite files) is stopped and removed before it exits.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import tempfile
import threading
import time
from pathlib import Path

import torch

QUICK = dict(audit_prompts=2, audit_tokens=96, audit_rounds=1,
             persist_turns=500, persist_tokens=64, persist_group=8,
             lat_sessions=3, lat_tokens=40,
             e2e_prompts=2, e2e_tokens=24, e2e_rounds=2)
FULL = dict(audit_prompts=3, audit_tokens=128, audit_rounds=2,
            persist_turns=2000, persist_tokens=64, persist_group=8,
            lat_sessions=4, lat_tokens=96,
            e2e_prompts=3, e2e_tokens=48, e2e_rounds=3)

LONG_PROMPTS = [  # answers of ~64-128 tokens from the bundled model
    "Explain in a few sentences why the sky is blue.",
    "Describe how a bicycle works in a short paragraph.",
    "Give three tips for learning a new language, with one sentence each.",
    "Explain what photosynthesis is in a short paragraph.",
]
E2E_PROMPTS = ["Tell me about the history of the city of Rome.", "Explain how a refrigerator keeps food cold.",
               "Describe a typical day of a farmer.", "Why do people enjoy music?"]

RESULTS: list[tuple[str, str, str, bool]] = []  # (metric, measured, target, passed)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def record(metric: str, measured: str, target: str, ok: bool) -> None:
    RESULTS.append((metric, measured, target, ok))
    print(f"  -> {metric}: {measured}   target {target}   {verdict(ok)}")


def percentile(xs: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    s = sorted(xs)
    if not s:
        return float("nan")
    pos = (len(s) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- 1. audit vs generation
def bench_audit(lm, axis, cfg) -> None:
    from probes.audit import score_conversation
    from probes.generation import GenerationOptions, generate

    print(f"\n[1] audit (teacher forcing) vs greedy generation, batch 1, {cfg['audit_prompts']} conversations, "
          f"max {cfg['audit_tokens']} new tokens, best of {cfg['audit_rounds']} interleaved rounds")
    prompts = [[{"role": "user", "content": p}] for p in LONG_PROMPTS[:cfg["audit_prompts"]]]
    opts = GenerationOptions(max_new_tokens=cfg["audit_tokens"])
    v, layer = axis.unit(), axis.monitor_layer
    generate(lm, prompts[:1], GenerationOptions(max_new_tokens=8))  # warm-up
    best_gen = best_aud = float("inf")
    convs: list[list[dict]] | None = None
    n_gen = n_aud = 0
    same = True
    for _ in range(cfg["audit_rounds"]):
        t0 = time.perf_counter()
        outs = [generate(lm, [p], opts)[0] for p in prompts]
        best_gen = min(best_gen, time.perf_counter() - t0)
        if convs is None:  # the conversations to audit: the generated replies
            convs = [p + [{"role": "assistant", "content": g.text}] for p, g in zip(prompts, outs)]
            n_gen = sum(len(g.token_ids) for g in outs)
            print("  generated assistant turns: " + ", ".join(f"{len(g.token_ids)} tokens" for g in outs))
        else:
            same &= [c[-1]["content"] for c in convs] == [g.text for g in outs]
        t0 = time.perf_counter()
        turns = [score_conversation(lm, c, v, layer) for c in convs]
        best_aud = min(best_aud, time.perf_counter() - t0)
        n_aud = sum(len(t.scores) for ts in turns for t in ts)
    g_tps, a_tps = n_gen / best_gen, n_aud / best_aud
    print(f"  generation (plain generate, greedy): {n_gen:5d} tokens  {best_gen:7.2f} s  {g_tps:9.1f} tok/s")
    print(f"  audit (score_conversation):          {n_aud:5d} tokens  {best_aud:7.2f} s  {a_tps:9.1f} tok/s"
          f"  (assistant tokens scored)")
    if cfg["audit_rounds"] > 1:
        print(f"  generations identical across rounds: {same}")
    ratio = a_tps / g_tps
    record("audit / generation tokens/s", f"{ratio:.1f}x", ">= 10x", ratio >= 10)


# ----------------------------------------------------------------------------- 2. persistence worker
def bench_persist(cfg, tmp: Path) -> None:
    from monitor.conversation import chain
    from monitor.drift import DriftTracker, Thresholds
    from monitor.records import TurnRecord
    from monitor.store import Store
    from monitor.streams import Streams
    from monitor.streams.embedded import EmbeddedRedis
    from monitor.workers.persist import PersistWorker

    n, t, group = cfg["persist_turns"], cfg["persist_tokens"], cfg["persist_group"]
    print(f"\n[2] persistence worker: {n} turns x {t} token scores ({n // group} sessions of {group} turns) "
          f"-> PersistWorker.run_once -> SQLite (WAL)")
    rng = random.Random(0)
    recs, sids, heads, prev = [], [], {}, {}
    tr = DriftTracker(Thresholds(-1.0, -2.0, -3.0))
    tr.update([0.5] * t, 1)
    tr.end_turn()
    snapshot = tr.snapshot()
    for i in range(n):
        sid = f"bench-persist-{i // group:05d}"
        if i % group == 0:
            sids.append(sid)
        toks = [f" w{rng.randrange(5000)}" for _ in range(t)]
        # as the engine writes them: the new input messages (the previous reply and the new question) and
        # the drift snapshot, linked into the session's hash chain
        msgs = [{"role": "assistant", "content": prev.get(sid, "")}, {"role": "user", "content": f"question {i}"}]
        nodes = chain(msgs, heads.get(sid, ""))
        heads[sid], prev[sid] = nodes[-1]["h"], "".join(toks)
        recs.append(TurnRecord(sid, 2 * (i % group) + 1, "assistant", "".join(toks), 15, toks,
                               [rng.uniform(-5, 5) for _ in range(t)], state="ok", running=rng.uniform(-5, 5),
                               model_id="bench", input_head=nodes[-1]["h"], input=nodes, tracker=snapshot))
    db = tmp / "persist.db"
    store = Store(f"sqlite:///{db}")
    try:
        store.migrate()
        with EmbeddedRedis() as r:
            streams = Streams.from_url(r.url)
            try:
                streams.ensure_groups()
                t0 = time.perf_counter()
                for k in range(0, n, 500):
                    pipe = streams.r.pipeline(transaction=False)
                    for rec in recs[k:k + 500]:
                        streams.publish(rec, pipe=pipe)
                    pipe.execute()
                t_pub = time.perf_counter() - t0
                worker = PersistWorker(streams, store)
                handled, t0 = 0, time.perf_counter()
                while handled < n:
                    got = worker.run_once(block_ms=None)
                    if got == 0:
                        break
                    handled += got
                dt = time.perf_counter() - t0
                lag = streams.lag("turns").get("persist", {})
            finally:
                streams.r.close()
        stored = sum(store.token_count(s) for s in sids)
    finally:
        store.close()
        for suffix in ("", "-wal", "-shm"):
            Path(str(db) + suffix).unlink(missing_ok=True)
    ok_counts = stored == n * t and worker.written["turns"] == n
    print(f"  published {n} entries in {t_pub:.2f} s (pipelined XADD, not timed below)")
    print(f"  worker: {handled} entries in {dt:.2f} s, {worker.written['turns']} turn rows written, "
          f"stream lag after: {lag}")
    print(f"  store token count {stored} == published {n * t}: {ok_counts}")
    rate = n * t / dt
    record("persistence worker token scores/s", f"{rate:,.0f}/s" + ("" if ok_counts else " (COUNT MISMATCH)"),
           ">= 50,000/s", rate >= 50_000 and ok_counts)


# ----------------------------------------------------------------------------- 3. token -> Redis latency
def bench_latency(lm, axis, cfg) -> None:
    import redis

    from monitor.backends.hf import HFBackend
    from monitor.drift import thresholds_from_calibration
    from monitor.engine import ChatRequest, Engine
    from monitor.streams import Streams
    from monitor.streams.embedded import EmbeddedRedis
    from probes.generation import GenerationOptions

    ns, nt = cfg["lat_sessions"], cfg["lat_tokens"]
    print(f"\n[3] token -> Redis latency: Engine.run_batch of {ns} sessions x up to {nt} tokens, live entries read "
          f"by a thread with XREAD BLOCK")
    print("  the engine publishes each session's new scores once per decoding step (one pipelined round trip for "
          "the batch): latency is measured from the on_token callback of each entry's last token to its arrival")
    with EmbeddedRedis() as r:
        streams = Streams.from_url(r.url)
        reader_client = redis.Redis.from_url(r.url)
        try:
            streams.ensure_groups()
            eng = Engine(HFBackend(lm, axis), thresholds_from_calibration(axis.calibration)[0], publisher=streams)
            eng.run_batch([ChatRequest("bench-lat-warm", [{"role": "user", "content": "Hi."}],
                                       GenerationOptions(max_new_tokens=8))])
            sids = [f"bench-lat-{i}" for i in range(ns)]
            produced: dict[tuple[str, int], float] = {}
            arrivals: list[tuple[str, dict, float]] = []
            stop = threading.Event()

            def on_token(tok: dict) -> None:
                produced[(tok["session_id"], tok["token_index"])] = time.perf_counter()

            finals: set[str] = set()

            def reader() -> None:
                last = {streams.live_key(s): "0-0" for s in sids}
                while not stop.is_set():
                    reply = reader_client.xread(last, block=50)
                    now = time.perf_counter()
                    for key, items in reply or []:
                        key = key.decode()
                        for eid, fields in items:
                            last[key] = eid.decode()
                            data = json.loads(fields[b"data"])
                            arrivals.append((data["session_id"], data, now))
                            if data.get("final"):
                                finals.add(data["session_id"])

            th = threading.Thread(target=reader, name="bench-live-reader", daemon=True)
            th.start()
            try:
                reqs = [ChatRequest(s, [{"role": "user", "content": LONG_PROMPTS[i % len(LONG_PROMPTS)]}],
                                    GenerationOptions(max_new_tokens=nt), on_token=on_token)
                        for i, s in enumerate(sids)]
                res = eng.run_batch(reqs)
                deadline = time.monotonic() + 5
                while len(finals) < ns and time.monotonic() < deadline:
                    time.sleep(0.01)
            finally:
                stop.set()
                th.join(5)
        finally:
            reader_client.close()
            streams.r.close()
    full, final = [], []
    for sid, d, t_arr in arrivals:
        if not d["scores"]:
            continue  # a final entry with no tokens left to flush
        last_idx = d["start"] + len(d["scores"]) - 1
        ms = (t_arr - produced[(sid, last_idx)]) * 1000
        (final if d.get("ended") or d.get("final") else full).append(ms)
    lat = full + final
    print(f"  sessions' tokens: {[len(x.tokens) for x in res]}; live entries with tokens: {len(lat)} "
          f"({len(full)} mid-turn, {len(final)} marked ended)")
    if full:
        print(f"  mid-turn:       p50 {percentile(full, 50):6.2f} ms  p99 {percentile(full, 99):6.2f} ms  "
              f"max {max(full):6.2f} ms")
    if final:
        print(f"  final:          p50 {percentile(final, 50):6.2f} ms  p99 {percentile(final, 99):6.2f} ms  "
              f"max {max(final):6.2f} ms")
    p50, p99 = percentile(lat, 50), percentile(lat, 99)
    print(f"  all entries:    p50 {p50:6.2f} ms  p99 {p99:6.2f} ms")
    record("token -> Redis latency p99", f"{p99:.2f} ms (p50 {p50:.2f})", "<= 10 ms",
           bool(lat) and p99 <= 10)


# ----------------------------------------------------------------------------- 4. end to end over HTTP
def bench_e2e(cfg, tmp: Path) -> None:
    import httpx
    import uvicorn

    from monitor import service
    from monitor.api import create_app
    from monitor.settings import Settings
    from probes.generation import GenerationOptions, generate

    k, nt, rounds = cfg["e2e_prompts"], cfg["e2e_tokens"], cfg["e2e_rounds"]
    print(f"\n[4] end to end: {k} streamed completions (SSE, httpx) one after another through uvicorn + "
          f"monitor.api (embedded Redis, SQLite, persistence worker) vs plain generate, batch 1, "
          f"max {nt} tokens, best of {rounds} interleaved rounds")
    db = tmp / "e2e.db"
    rt = service.start(Settings(database_url=f"sqlite:///{db}"))
    srv = th = None
    try:
        app = create_app(rt.engine, rt.store, rt.streams)
        port = _free_port()
        srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        th = threading.Thread(target=srv.run, name="bench-uvicorn", daemon=True)
        th.start()
        deadline = time.monotonic() + 30
        while not srv.started and time.monotonic() < deadline:
            time.sleep(0.05)
        if not srv.started:
            raise RuntimeError("uvicorn did not start within 30 s")
        lm = rt.engine.backend.lm
        msgs = [[{"role": "user", "content": p}] for p in E2E_PROMPTS[:k]]
        opts = GenerationOptions(max_new_tokens=nt)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        counter = iter(range(10**9))

        with httpx.Client(timeout=httpx.Timeout(300.0)) as client:
            def stream_one(m: list[dict], max_tokens: int) -> tuple[int, str]:
                body = {"model": "default", "messages": m, "max_tokens": max_tokens, "stream": True,
                        "session_id": f"bench-e2e-{next(counter)}"}
                n, text = 0, []
                with client.stream("POST", url, json=body) as resp:
                    resp.raise_for_status()
                    for line in resp.iter_lines():
                        if not line.startswith("data: "):
                            continue
                        payload = line[6:]
                        if payload == "[DONE]":
                            break
                        obj = json.loads(payload)
                        if "error" in obj:
                            raise RuntimeError(obj["error"])
                        if "token_index" in obj.get("axiswatch", {}):
                            n += 1
                            text.append(obj["choices"][0]["delta"].get("content", ""))
                return n, "".join(text)

            def run_server() -> tuple[int, list[str]]:
                outs = [stream_one(m, nt) for m in msgs]
                return sum(n for n, _ in outs), [t for _, t in outs]

            def run_plain() -> tuple[int, list[str]]:
                outs = [generate(lm, [m], opts)[0] for m in msgs]
                return sum(len(g.token_ids) for g in outs), [g.text for g in outs]

            stream_one(msgs[0], 8)  # warm-up both paths
            generate(lm, msgs[:1], GenerationOptions(max_new_tokens=8))
            runs = {"server (SSE)": run_server, "plain generate": run_plain}
            best = {name: float("inf") for name in runs}
            tokens: dict[str, int] = {}
            texts: dict[str, list[str]] = {}
            for i in range(rounds):
                order = list(runs) if i % 2 == 0 else list(runs)[::-1]  # alternate which side goes first
                for name in order:
                    t0 = time.perf_counter()
                    tokens[name], texts[name] = runs[name]()
                    best[name] = min(best[name], time.perf_counter() - t0)
    finally:
        if srv is not None:
            srv.should_exit = True
        if th is not None:
            th.join(15)
        rt.close()
        for suffix in ("", "-wal", "-shm"):
            Path(str(db) + suffix).unlink(missing_ok=True)
    tps = {name: tokens[name] / best[name] for name in best}
    for name in best:
        print(f"  {name:15s} {tokens[name]:4d} tokens  {best[name]:7.2f} s  {tps[name]:7.1f} tok/s")
    same = texts["server (SSE)"] == texts["plain generate"]
    print(f"  streamed text identical to plain generate's: {same}")
    ratio = tps["server (SSE)"] / tps["plain generate"]
    record("end to end (serve + SSE + Redis) / plain tokens/s", f"{ratio:.3f}x", ">= 0.90x", ratio >= 0.90)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer items (about 90 s)")
    a = ap.parse_args()
    cfg = QUICK if a.quick else FULL

    from monitor.settings import shipped_dir
    from probes.artifacts import load_axis
    from probes.models import load_model

    t_start = time.perf_counter()
    lm, axis = load_model("default"), load_axis(shipped_dir())
    print(f"model {lm.model_id} ({lm.model.dtype}, {lm.device}), axis layer {axis.monitor_layer}, "
          f"{torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs, {'--quick' if a.quick else 'full'} run")
    print("load average at start: " + " ".join(f"{x:.2f}" for x in os.getloadavg())
          + "  (other processes on the machine skew timings; the ratios interleave their two sides)")
    with tempfile.TemporaryDirectory(prefix="axiswatch-bench-") as d:
        tmp = Path(d)
        bench_audit(lm, axis, cfg)
        bench_persist(cfg, tmp)
        bench_latency(lm, axis, cfg)
        del lm  # section 4 serves its own copy (monitor.service.start loads the model)
        bench_e2e(cfg, tmp)

    print(f"\nsummary ({time.perf_counter() - t_start:.0f} s in all; load average at end: "
          + " ".join(f"{x:.2f}" for x in os.getloadavg()) + ")")
    w = max(len(m) for m, *_ in RESULTS)
    print(f"  {'metric':{w}s}  {'measured':>24s}  {'target':>12s}  result")
    for metric, measured, target, ok in RESULTS:
        print(f"  {metric:{w}s}  {measured:>24s}  {target:>12s}  {verdict(ok)}")


if __name__ == "__main__":
    main()
