"""Cost of per-token scoring during generation: the same batched greedy generation
with no hooks, with the monitor-layer score hook, and with score + capping at 4 layers.

    .venv/bin/python bench/bench_scoring_overhead.py [--batch 16] [--tokens 48]
"""

from __future__ import annotations

import argparse
import time

import torch

from probes.generation import CapPlan, GenerationOptions, generate
from probes.models import load_model


def timed_interleaved(runs: dict, repeats: int) -> dict[str, float]:
    """Best time of each run, the runs interleaved round by round so drift hits all alike."""
    best = {k: float("inf") for k in runs}
    for _ in range(repeats):
        for k, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    lm = load_model("default")
    torch.manual_seed(0)
    v = torch.nn.functional.normalize(torch.randn(lm.hidden_size), dim=0)
    prompts = [[{"role": "user", "content": f"Tell me a fact about the number {i}."}] for i in range(a.batch)]
    opts = GenerationOptions(max_new_tokens=a.tokens)
    cap = CapPlan((18, 19, 20, 21), v.repeat(4, 1), torch.full((4,), -1e9))
    runs = {
        "no hooks": lambda: generate(lm, prompts, opts),
        "score hook": lambda: generate(lm, prompts, opts, axis=v, monitor_layer=15),
        "score + cap x4": lambda: generate(lm, prompts, opts, axis=v, monitor_layer=15, capping=cap),
    }
    for f in runs.values():  # warm-up
        f()
    times = timed_interleaved(runs, a.repeats)
    base = times["no hooks"]
    print(f"batch {a.batch} x {a.tokens} tokens, best of {a.repeats}, {torch.get_num_threads()} threads")
    for k, t in times.items():
        print(f"{k:16s} {t:7.2f} s  {a.batch * a.tokens / t:7.1f} tok/s  ratio {t / base:5.3f}")


if __name__ == "__main__":
    main()
