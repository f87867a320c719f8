"""What a vLLM user asks: the same OpenAI client load against a default ``vllm serve``, the axiswatch plugin
in an unchanged ``vllm serve`` (every request scored; and with capping on for every session), and
``axiswatch serve --backend vllm``, in one run; then the same on two tensor-parallel ranks.

    .venv-vllm/bin/python bench/bench_vllm_serving.py [--tokens 64] [--requests 32] [--rounds 2]
                                                      [--no-tp | --only-tp] [--json FILE]

Each server is started in turn (vLLM's defaults: compiled; the first start of a configuration compiles,
later ones load vLLM's compile cache), warmed with two requests, then driven by streaming greedy chat
requests of up to ``--tokens`` tokens: one at a time (``--requests / 4`` of them) and 16 at a time
(``--requests``), ``--rounds`` times each, the best round kept. Printed per server and concurrency:
tokens/s, time to first token p50/p90, and how many replies are identical to plain vLLM's; for the
monitored servers, tokens scored and stored against tokens streamed. Ratios are against plain vLLM in the
same run. On CPU the two ranks need ``VLLM_CPU_OMP_THREADS_BIND="0|1"`` (set here) and a model whose heads
split in two: the bundled SmolLM2 has 9, so the tensor-parallel part serves a random Llama of about its size
(8 heads of 64, 30 layers).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent
QUESTIONS = ["What is the capital of France?", "Write a haiku about rain.", "Explain photosynthesis to a child.",
             "Give me three tips for learning a language.", "What is a prime number?", "Describe the ocean.",
             "How do airplanes fly?", "Write a short poem about autumn.", "What is machine learning?",
             "Name five fruits and their colours.", "How does a refrigerator work?", "Tell me about the moon.",
             "What is the difference between weather and climate?", "Suggest a name for a cat.",
             "Why is the sky blue?", "How do I boil an egg?"]
CONCURRENCY = (1, 16)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """One server process: started, waited for, stopped."""

    def __init__(self, name: str, argv: list[str], env: dict, port: int, ready: str, work: Path,
                 db: Path | None = None):
        self.name, self.argv, self.env, self.port, self.ready, self.db = name, argv, env, port, ready, db
        self.base = f"http://127.0.0.1:{port}"
        self.log = work / f"{name}.log"

    def _fail(self, why: str):
        tail = "".join(self.log.read_text(errors="replace").splitlines(keepends=True)[-40:])
        return RuntimeError(f"{self.name} {why}; the end of its log:\n{tail}")

    def __enter__(self):
        t0 = time.monotonic()
        self._out = open(self.log, "w")
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=self._out, stderr=subprocess.STDOUT)
        while True:
            if self.proc.poll() is not None:
                raise self._fail("exited at start")
            try:
                if httpx.get(self.base + self.ready, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() - t0 > 900:
                raise self._fail("did not start in 15 minutes")
            time.sleep(1)
        self.start_s = time.monotonic() - t0
        return self

    def __exit__(self, *exc):
        self.proc.terminate()
        try:
            self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._out.close()


async def _one(client: httpx.AsyncClient, base: str, model: str, q: str, sid: str, tokens: int) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": q}], "max_tokens": tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True},
            "session_id": sid, "vllm_xargs": {"session_id": sid}}
    t0 = time.perf_counter()
    first, text, n_chunks, usage, scored, finish = None, [], 0, None, 0, None
    async with client.stream("POST", base + "/v1/chat/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            d = json.loads(line[6:])
            usage = d.get("usage") or usage
            for c in d.get("choices") or []:
                finish = c.get("finish_reason") or finish
                piece = (c.get("delta") or {}).get("content")
                if piece:
                    first = first if first is not None else time.perf_counter() - t0
                    text.append(piece)
            ax = d.get("axiswatch") or {}
            if "token_index" in ax:
                n_chunks += 1
                scored += ax.get("score") is not None
    n = int(usage["completion_tokens"]) if usage else n_chunks
    # the tokens a monitor stores: vLLM counts a reply's end-of-sequence token, axiswatch stores none
    content = n - 1 if usage and finish == "stop" else n
    return {"q": q, "text": "".join(text), "ttft": first, "tokens": n, "content_tokens": content, "scored": scored}


async def _load(base: str, model: str, questions: list[str], conc: int, tokens: int, tag: str) -> tuple[list, float]:
    sem = asyncio.Semaphore(conc)
    async with httpx.AsyncClient() as client:
        async def go(i, q):
            async with sem:
                return await _one(client, base, model, q, f"{tag}-{i}", tokens)
        t0 = time.perf_counter()
        res = await asyncio.gather(*(go(i, q) for i, q in enumerate(questions)))
        return list(res), time.perf_counter() - t0


def _stored_tokens(db: Path, prefix: str) -> int:
    out = subprocess.run([str(BIN / "axiswatch"), "sessions", "list", "--json", "--limit", "10000",
                          "--database-url", f"sqlite:///{db}"], capture_output=True, text=True)
    rows = [json.loads(x) for x in out.stdout.splitlines() if x.strip()]
    return sum(int(r.get("n_tokens") or 0) for r in rows if str(r["id"]).startswith(prefix))


def measure(srv: Server, model: str, a, plain: dict | None) -> dict:
    asyncio.run(_load(srv.base, model, QUESTIONS[:2], 2, 8, f"{srv.name}-warm"))
    out = {"start_s": round(srv.start_s, 1)}
    for conc in CONCURRENCY:
        n = max(2, a.requests // 4) if conc == 1 else a.requests
        qs = [QUESTIONS[i % len(QUESTIONS)] for i in range(n)]
        tag = f"{srv.name}-c{conc}"
        runs = [asyncio.run(_load(srv.base, model, qs, conc, a.tokens, f"{tag}-r{k}")) for k in range(a.rounds)]
        res, wall = min(runs, key=lambda r: r[1])  # the round with the best throughput (this machine is noisy)
        ttfts = sorted(r["ttft"] for r in res if r["ttft"] is not None)
        row = {"requests": n, "tokens": sum(r["tokens"] for r in res), "wall_s": round(wall, 2),
               "tok_s": round(sum(r["tokens"] for r in res) / wall, 1),
               "ttft_p50_s": round(statistics.median(ttfts), 3),
               "ttft_p90_s": round(ttfts[min(len(ttfts) - 1, int(0.9 * len(ttfts)))], 3),
               "texts": [r["text"] for r in res]}
        if plain is not None:
            row["identical_to_plain"] = sum(x == y for x, y in zip(row["texts"], plain[conc]["texts"]))
        if srv.name.startswith("axiswatch-serve"):
            row["scored_in_stream"] = sum(r["scored"] for r in res)
        if srv.db is not None:  # every request scored: the scored tokens its store holds
            want = sum(r["content_tokens"] for r in res)
            deadline, got = time.monotonic() + 60, -1
            while time.monotonic() < deadline:
                got = _stored_tokens(srv.db, f"{tag}-r{runs.index((res, wall))}")
                if got >= want:
                    break
                time.sleep(1)
            row["stored_tokens"], row["streamed_tokens"] = got, want
        out[conc] = row
    return out


def _random_llama(folder: Path) -> Path:
    """A random Llama about SmolLM2-135M's size whose 8 heads split over two ranks, its tokenizer SmolLM2's."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from probes.models import load_model

    tok = load_model("default").tokenizer
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=512, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=2048,
                      tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2, initializer_range=0.2)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _random_axis(model: Path, folder: Path) -> Path:
    import torch

    from probes.artifacts import AxisArtifact

    cfg = json.loads((model / "config.json").read_text())
    axis = torch.randn(cfg["num_hidden_layers"], cfg["hidden_size"], generator=torch.Generator().manual_seed(1))
    AxisArtifact(axis=axis, model_id=str(model), monitor_layer=20, calibration={},
                 provenance={"preset": "benchmark: random"}).save(folder)
    return folder


def servers(a, work: Path, tp: int) -> list[Server]:
    """The servers of one part: plain vLLM, the plugin, the plugin capping every session, axiswatch serve."""
    from calibrate.capping import capping_for
    from monitor.settings import shipped_dir
    from probes.artifacts import CappingConfig, load_axis
    from probes.models import load_model

    env = {**os.environ, "REDIS_URL": "", "AXISWATCH_VLLM_MEMORY_GB": "1", "AXISWATCH_VLLM_MAX_MODEL_LEN": "1024"}
    if tp == 1:
        lm = load_model("default")
        model, name = str(lm.meta["weights"]), lm.model_id
        axis_dir = shipped_dir()
    else:
        env["VLLM_CPU_OMP_THREADS_BIND"] = "0|1"
        model = name = str(_random_llama(work / "tp-model"))
        axis_dir = _random_axis(Path(model), work / "tp-axis")
        env |= {"AXISWATCH_MODEL": model, "AXISWATCH_THRESHOLD_WATCH": "-1e4", "AXISWATCH_THRESHOLD_WARNING": "-2e4",
                "AXISWATCH_THRESHOLD_CRITICAL": "-3e4", "AXISWATCH_LEVEL_DETECTOR": "off",
                "AXISWATCH_VLLM_TENSOR_PARALLEL_SIZE": str(tp)}
    env["AXISWATCH_AXIS"] = str(axis_dir)
    axis = load_axis(axis_dir)
    cap_dir = work / f"capping-tp{tp}"
    layers = tuple(range(axis.monitor_layer, min(axis.monitor_layer + 4, axis.n_layers)))
    if tp == 1:  # floors at the shipped axis' p90, as calibrate-capping's configs
        capping_for(axis, layers, 90).save(cap_dir)
    else:  # the random model has no calibration: floors at 0 (the cost of capping does not depend on them)
        CappingConfig(id="bench-floor0", layers=list(layers), vectors=axis.axis[list(layers)].clone(),
                      taus=[0.0] * len(layers), model_id=axis.model_id, provenance={"preset": "benchmark"}).save(cap_dir)
    vllm_args = ["--model", model, "--served-model-name", name, "--dtype", "float32", "--max-model-len", "1024",
                 "--kv-cache-memory-bytes", str(2**30), "--tensor-parallel-size", str(tp)]
    api = [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    out = []
    port = _free_port()
    out.append(Server(f"plain-tp{tp}", [*api, *vllm_args, "--port", str(port)], env, port, "/v1/models", work))
    port = _free_port()
    db = work / f"plugin-tp{tp}.db"
    out.append(Server(f"plugin-tp{tp}", [*api, *vllm_args, "--no-async-scheduling", "--port", str(port)],
                      {**env, "AXISWATCH_VLLM_PLUGIN": "1", "AXISWATCH_DATABASE_URL": f"sqlite:///{db}"},
                      port, "/v1/models", work, db))
    port = _free_port()
    db = work / f"plugin-capped-tp{tp}.db"
    capped = {"AXISWATCH_VLLM_PLUGIN": "1", "AXISWATCH_DATABASE_URL": f"sqlite:///{db}", "AXISWATCH_POLICY": "cap",
              "AXISWATCH_CAPPING": str(cap_dir), "AXISWATCH_THRESHOLD_WATCH": "1e4",
              "AXISWATCH_THRESHOLD_WARNING": "9e3", "AXISWATCH_THRESHOLD_CRITICAL": "8e3",
              "AXISWATCH_DRIFT_BASELINE": "absolute", "AXISWATCH_LEVEL_DETECTOR": "off", "AXISWATCH_MIN_TOKENS": "1",
              "AXISWATCH_COOLDOWN_TOKENS": "100000"}
    out.append(Server(f"plugin-capped-tp{tp}", [*api, *vllm_args, "--no-async-scheduling",
                                                "--no-enable-prefix-caching", "--port", str(port)],
                      {**env, **capped}, port, "/v1/models", work, db))
    port = _free_port()
    db = work / f"serve-tp{tp}.db"
    out.append(Server(f"axiswatch-serve-tp{tp}", [str(BIN / "axiswatch"), "serve", "--backend", "vllm"],
                      {**env, "AXISWATCH_PORT": str(port), "AXISWATCH_DATABASE_URL": f"sqlite:///{db}"},
                      port, "/healthz", work, db))
    for s in out:
        s.model = name  # type: ignore[attr-defined]
    return out


def report(part: dict) -> None:
    plain = next(v for k, v in part.items() if k.startswith("plain"))
    print("ratio: tokens/s against plain vLLM; ttft x: time to first token p50 against plain vLLM's; same: replies "
          "identical to plain vLLM's (capping changes some by design); stored/streamed: scored tokens in the store "
          "against the reply tokens streamed (end-of-sequence tokens are not stored)")
    print(f"{'server':26s} {'conc':>4s} {'tok/s':>7s} {'ratio':>6s} {'ttft p50':>9s} {'p90':>7s} {'ttft x':>6s} "
          f"{'same':>6s} {'stored/streamed':>16s} {'start s':>7s}")
    for name, res in part.items():
        for conc in CONCURRENCY:
            r, p = res[conc], plain[conc]
            same = f"{r.get('identical_to_plain', r['requests'])}/{r['requests']}"
            stored = f"{r['stored_tokens']}/{r['streamed_tokens']}" if "stored_tokens" in r else "-"
            print(f"{name:26s} {conc:4d} {r['tok_s']:7.1f} {r['tok_s'] / p['tok_s']:6.3f} {r['ttft_p50_s']:9.3f} "
                  f"{r['ttft_p90_s']:7.3f} {r['ttft_p50_s'] / p['ttft_p50_s']:6.2f} {same:>6s} {stored:>16s} "
                  f"{res['start_s']:7.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--requests", type=int, default=32, help="requests at concurrency 16 (a quarter at 1)")
    ap.add_argument("--rounds", type=int, default=2, help="rounds per server and concurrency; the best is kept")
    ap.add_argument("--no-tp", action="store_true", help="skip the two-rank part")
    ap.add_argument("--only-tp", action="store_true", help="only the two-rank part")
    ap.add_argument("--json", help="write every number (and the replies) here")
    a = ap.parse_args()
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-vllm-serving-") as tmp:
        for tp in (1,) if a.no_tp else (2,) if a.only_tp else (1, 2):
            part: dict = {}
            plain = None
            for srv in servers(a, Path(tmp), tp):
                with srv:
                    part[srv.name] = measure(srv, srv.model, a, plain)  # type: ignore[attr-defined]
                plain = plain or part[srv.name]
                print(f"{srv.name}: done ({srv.start_s:.0f} s to start)", flush=True)
            results[f"tp{tp}"] = part
            print(f"\n== {tp} rank{'s' if tp > 1 else ''}: up to {a.tokens} greedy tokens a reply, streamed ==")
            report(part)
            print(flush=True)
            if a.json:  # after each part: a later part that fails keeps this one's numbers
                Path(a.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
