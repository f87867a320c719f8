"""Serving throughput: N sessions sent at once through the hf backend's scheduler vs one after another.

    .venv/bin/python bench/bench_serving.py [--sessions 8] [--tokens 32]

Both runs use the same engine (bundled model, shipped axis, drift tracking,
records published to an embedded Redis); greedy decoding, so the tokens match.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import wait

from monitor.backends.hf import HFBackend
from monitor.drift import thresholds_from_calibration
from monitor.engine import ChatRequest, Engine
from monitor.settings import shipped_dir
from monitor.streams import Streams
from monitor.streams.embedded import EmbeddedRedis
from probes.artifacts import load_axis
from probes.generation import GenerationOptions
from probes.models import load_model

QUESTIONS = ["Name a fruit.", "What is 3 + 4?", "Say hello in French.", "Name a planet.", "What colour is the sky?",
             "Give me a word that rhymes with cat.", "What is the capital of Italy?", "Name a musical instrument."]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=32)
    a = ap.parse_args()
    lm, axis = load_model("default"), load_axis(shipped_dir())
    with EmbeddedRedis() as r:
        streams = Streams.from_url(r.url)
        streams.ensure_groups()
        eng = Engine(HFBackend(lm, axis, max_batch=a.sessions, max_wait_s=0.05),
                     thresholds_from_calibration(axis.calibration)[0], publisher=streams)
        opts = GenerationOptions(max_new_tokens=a.tokens)
        reqs = lambda tag: [ChatRequest(f"{tag}-{i}", [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}], opts)  # noqa: E731
                            for i in range(a.sessions)]
        eng.run_batch(reqs("warm")[:1])
        t0 = time.perf_counter()
        seq = [eng.run_batch([q])[0] for q in reqs("seq")]
        t_seq = time.perf_counter() - t0
        t0 = time.perf_counter()
        futs = [eng.submit(q) for q in reqs("conc")]
        wait(futs)
        t_conc = time.perf_counter() - t0
        eng.close()
        conc = [f.result() for f in futs]
    n_seq, n_conc = sum(len(x.tokens) for x in seq), sum(len(x.tokens) for x in conc)
    same = all(x.tokens == y.tokens for x, y in zip(seq, conc))
    print(f"{a.sessions} sessions x up to {a.tokens} tokens, tokens identical in both runs: {same}")
    print(f"one after another: {t_seq:6.2f} s  {n_seq / t_seq:7.1f} tok/s")
    print(f"all at once:       {t_conc:6.2f} s  {n_conc / t_conc:7.1f} tok/s")
    print(f"ratio (throughput all at once / one after another): {(n_conc / t_conc) / (n_seq / t_seq):5.2f}x")


if __name__ == "__main__":
    main()
