"""The GPU check that needs no vLLM: the monitor's graph-safe op (``probes.graph_op``) inside the bundled
model compiled with ``torch.compile(mode="reduce-overhead")`` (CUDA graphs), its cap mask changed between
replays, against eager; and the ``hf`` backend on CUDA against CPU (greedy tokens, scores).

    .venv/bin/python bench/gpu_check.py [--out report.json]

On a machine without a GPU the first part runs on CPU with ``torch.compile``'s default mode (no CUDA
graphs: the op is still traced into an inductor graph) and the second is skipped. ``make check-gpu`` runs
this and, where vLLM's CUDA build can be installed, the vLLM parity tests and the serving benchmark.
Prints one JSON report; exits 1 when a comparison fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from monitor.backends import Job
from monitor.backends.hf import HFBackend
from monitor.settings import shipped_dir
from probes.artifacts import load_axis, load_capping
from probes.generation import GenerationOptions, cap_plan
from probes.graph_op import WatchState
from probes.hooks import watched_layers
from probes.models import load_model

PROMPTS = ["What is the capital of France?", "Write a haiku about rain.",
           "Pretend you are an ancient oracle and speak as one.", "I feel so alone tonight. Can you stay with me?"]
LOGIT_TOL, SCORE_TOL = 2e-3, 1e-2  # compiled kernels sum in another order: on CPU (inductor) 1e-4 and 4e-3 of scores ~50


def op_under_graphs(device: str, batch: int = 4, length: int = 24, replays: int = 3) -> dict:
    """The op at the monitor layer and the shipped capping layers of the bundled model, eager vs compiled,
    over three cap masks (some sequences capped, another one, none) written between replays."""
    lm = load_model("default", device=device, dtype="float32")
    axis = load_axis(shipped_dir())
    plan = cap_plan(load_capping(shipped_dir()))
    assert plan is not None
    slots = {layer: (k, -1, -1) for k, layer in enumerate(plan.layers)}
    slots[axis.monitor_layer] = (slots.get(axis.monitor_layer, (-1,))[0], 0, -1)
    state = WatchState(axis.unit(), plan.vectors, plan.taus, batch * length, device)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(10, lm.tokenizer.vocab_size - 10, (batch, length), generator=gen).to(device)
    masks = {}
    for name, seqs in (("seqs 0 and 2 capped", [0, 2]), ("seq 1 capped", [1]), ("none capped", [])):
        m = torch.zeros(batch, length)
        m[seqs] = 1.0
        masks[name] = m.reshape(-1).to(device)

    def forward(x):
        return lm.model(input_ids=x, use_cache=False).logits

    out: dict = {"device": device, "mode": "reduce-overhead (CUDA graphs)" if device == "cuda" else "default (inductor)"}
    with torch.no_grad(), watched_layers(lm.model, state, slots, residual=False):
        eager = {}
        for name, m in masks.items():
            state.mask.copy_(m)
            logits = forward(ids)
            eager[name] = (logits.clone(), state.scores[0].clone())
        t0 = time.perf_counter()
        compiled = torch.compile(forward, mode="reduce-overhead" if device == "cuda" else "default")
        worst_logit = worst_score = 0.0
        for _ in range(replays):
            for name, m in masks.items():
                state.mask.copy_(m)  # the captured graph reads the mask from its static buffer
                logits = compiled(ids).clone()
                scores = state.scores[0].clone()
                worst_logit = max(worst_logit, float((logits - eager[name][0]).abs().max()))
                worst_score = max(worst_score, float((scores - eager[name][1]).abs().max()))
        out["compile_and_replays_s"] = round(time.perf_counter() - t0, 1)
    if device == "cuda":  # inductor may fall back from CUDA graphs (mutated inputs, CPU tensors) and still match
        from torch._dynamo.utils import counters

        out["cudagraph_skips"] = int(sum(counters["inductor"].get(k, 0) for k in counters["inductor"]
                                         if "cudagraph_skip" in k))
    free = eager["none capped"]
    capped_rows = masks["seqs 0 and 2 capped"].reshape(batch, length)[:, 0].bool()
    out |= {
        "max_abs_logit_diff_compiled_vs_eager": worst_logit,
        "max_abs_score_diff_compiled_vs_eager": worst_score,
        # capping acts on the capped sequences only: their logits move, the others' stay bit-identical
        "capped_sequences_changed": bool((eager["seqs 0 and 2 capped"][0][capped_rows] != free[0][capped_rows]).any()),
        "uncapped_sequences_identical": bool(torch.equal(eager["seqs 0 and 2 capped"][0][~capped_rows],
                                                         free[0][~capped_rows])),
        "replays": replays * len(masks),
    }
    out["ok"] = (worst_logit <= LOGIT_TOL and worst_score <= SCORE_TOL and out["capped_sequences_changed"]
                 and out["uncapped_sequences_identical"] and not out.get("cudagraph_skips"))
    return out


class _Collect:
    def __init__(self):
        self.events: dict[int, list] = {}

    def step(self, events, ended):
        for job, ev in events:
            self.events.setdefault(id(job), []).append(ev)


def hf_cuda_vs_cpu(tokens: int = 32) -> dict:
    """The ``hf`` backend's greedy replies and scores on CUDA against CPU, uncapped and capped."""
    axis = load_axis(shipped_dir())
    capping = load_capping(shipped_dir())
    out: dict = {}
    runs = {}
    for device in ("cpu", "cuda"):
        hf = HFBackend(load_model("default", device=device, dtype="float32"), axis, capping, max_batch=8)
        for capped in (False, True):
            jobs = [Job([{"role": "user", "content": p}], GenerationOptions(max_new_tokens=tokens), capped)
                    for p in PROMPTS]
            sink = _Collect()
            hf.run(jobs, sink)
            runs[device, capped] = (jobs, [sink.events.get(id(j), []) for j in jobs])
    for capped in (False, True):
        (cj, ce), (gj, ge) = runs["cpu", capped], runs["cuda", capped]
        same = sum(a.token_ids == b.token_ids for a, b in zip(cj, gj))
        diffs = [abs(x.score - y.score) for a, b in zip(ce, ge) for x, y in zip(a, b)]
        out["capped" if capped else "uncapped"] = {"identical_replies": f"{same}/{len(cj)}",
                                                  "max_abs_score_diff": max(diffs) if diffs else None}
    out["ok"] = all(v["identical_replies"].split("/")[0] == v["identical_replies"].split("/")[1]
                    and (v["max_abs_score_diff"] or 0) <= 5e-2 for v in out.values() if isinstance(v, dict))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="also write the report here (JSON)")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    a = ap.parse_args()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
    report: dict = {"torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                    "op_under_graphs": op_under_graphs(device)}
    report["hf_cuda_vs_cpu"] = hf_cuda_vs_cpu() if device == "cuda" else "skipped: no CUDA device"
    report["ok"] = report["op_under_graphs"]["ok"] and (device != "cuda" or report["hf_cuda_vs_cpu"]["ok"])
    text = json.dumps(report, indent=2)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
