"""Cost of axiswatch inside vLLM's engine: the same greedy requests through plain vLLM (no op) and through the
vllm backend (the op, row mapping, per-token events), interleaved in one process; tokens/s and the ratio.
Both compiled (vLLM's default), or both eager with ``--eager``. What a user runs, servers and an HTTP
client, is ``bench_vllm_serving.py``.

    .venv-vllm/bin/python bench/bench_vllm.py [--batch 16] [--tokens 64] [--repeats 3] [--eager]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")

from monitor.backends import Job
from monitor.backends.hf import HFBackend
from monitor.backends.vllm import VLLMBackend, VLLMOptions
from monitor.settings import shipped_dir
from probes.artifacts import load_axis
from probes.generation import GenerationOptions
from probes.models import format_chat, load_model


class Count:
    def __init__(self):
        self.n = 0

    def step(self, events, ended):
        self.n += len(events)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--eager", action="store_true", help="both engines in vLLM's eager mode (default: compiled)")
    a = ap.parse_args()
    import vllm

    lm = load_model("default")
    hf = HFBackend(lm, load_axis(shipped_dir()))
    opts = VLLMOptions(memory_gb=0.5, max_model_len=1024, enforce_eager=a.eager)
    ours = VLLMBackend(hf, lm.meta["weights"], opts)
    plain = vllm.LLMEngine.from_engine_args(vllm.EngineArgs(
        model=lm.meta["weights"], dtype="float32", enforce_eager=a.eager, max_model_len=opts.max_model_len,
        kv_cache_memory_bytes=int(opts.memory_gb * 2**30), seed=0, enable_prefix_caching=False))
    chats = [[{"role": "user", "content": f"Tell me a fact about the number {i}."}] for i in range(a.batch)]
    ids = [lm.tokenizer(format_chat(lm.tokenizer, c), add_special_tokens=False)["input_ids"] for c in chats]

    def run_plain() -> int:
        params = vllm.SamplingParams(max_tokens=a.tokens, temperature=0.0, stop_token_ids=ours.stops, detokenize=False)
        for k, p in enumerate(ids):
            plain.add_request(f"p{time.monotonic_ns()}-{k}", {"prompt_token_ids": p}, params)
        n = 0
        while plain.has_unfinished_requests():
            for out in plain.step():
                if out.finished:
                    n += sum(t not in ours.stops for t in out.outputs[0].token_ids)
        return n

    def run_ours() -> int:
        sink = Count()
        ours.run([Job(c, GenerationOptions(max_new_tokens=a.tokens)) for c in chats], sink)
        return sink.n

    best = {"plain vLLM": 0.0, "axiswatch vllm backend": 0.0}
    counts = {}
    for _ in range(a.repeats):
        for name, fn in (("plain vLLM", run_plain), ("axiswatch vllm backend", run_ours)):
            t0 = time.perf_counter()
            counts[name] = fn()
            best[name] = max(best[name], counts[name] / (time.perf_counter() - t0))
    for name, tps in best.items():
        print(f"{name:26s} {tps:8.1f} tokens/s  ({counts[name]} tokens, batch {a.batch})")
    print(f"ratio axiswatch / plain: {best['axiswatch vllm backend'] / best['plain vLLM']:.3f}x")
    ours.close()


if __name__ == "__main__":
    main()
