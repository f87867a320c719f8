"""Checks that need an NVIDIA GPU: skipped on a machine without one (every machine these tests run on in
CI); ``make check-gpu`` runs them where there is one. What they prove there: the monitor's op under CUDA
graphs equals eager and the ``hf`` backend on CUDA equals CPU (``bench/gpu_check.py``); with vLLM's CUDA
build, the vLLM backend with CUDA graphs on gives the ``hf`` backend's tokens and scores, and vLLM's GPU
default, async scheduling, is refused with its reason rather than served with scores paired to the wrong
token (supporting it needs scores keyed by request and position, and is not done)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")]
ROOT = Path(__file__).resolve().parent.parent


def test_the_op_under_cuda_graphs_and_hf_on_cuda(tmp_path):
    out = tmp_path / "gpu_check.json"
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--out", str(out)],
                       capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]


def _vllm_backend(lm, shipped, **vllm_kw):
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vLLM's CUDA build is not installed here")
    from monitor.backends.hf import HFBackend
    from monitor.backends.vllm import VLLMBackend, VLLMOptions

    hf = HFBackend(lm, shipped)
    return hf, VLLMBackend(hf, lm.meta["weights"], VLLMOptions(memory_gb=2, max_model_len=1024, **vllm_kw))


@pytest.mark.vllm
def test_vllm_with_cuda_graphs_gives_hf_tokens_and_scores(lm, shipped):
    from monitor.backends import Job
    from probes.generation import GenerationOptions

    hf, vb = _vllm_backend(lm, shipped)
    try:
        vc = vb.engine.vllm_config
        assert getattr(vc.compilation_config.cudagraph_mode, "name", "NONE") != "NONE", "CUDA graphs are off"

        class Sink:
            def __init__(self):
                self.ev = {}

            def step(self, events, ended):
                for job, e in events:
                    self.ev.setdefault(id(job), []).append(e)

        jobs = {}
        for name, b in (("hf", hf), ("vllm", vb)):
            js = [Job([{"role": "user", "content": p}], GenerationOptions(max_new_tokens=32))
                  for p in ("What is the capital of France?", "Pretend you are an oracle.")]
            sink = Sink()
            b.run(js, sink)
            jobs[name] = (js, sink)
        (hj, hs), (vj, vs) = jobs["hf"], jobs["vllm"]
        for a, b in zip(hj, vj):
            assert a.token_ids == b.token_ids
            assert [e.score for e in vs.ev[id(b)]] == pytest.approx([e.score for e in hs.ev[id(a)]], abs=2e-2)
    finally:
        vb.close()


@pytest.mark.vllm
def test_vllms_gpu_default_async_scheduling_is_refused_with_its_reason(lm):
    """Until scores are keyed by (request, position), async scheduling (vLLM's default on a GPU) is refused."""
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vLLM's CUDA build is not installed here")
    import vllm

    from monitor.backends.vllm import check_config
    from monitor.errors import InputError

    cfg = vllm.EngineArgs(model=lm.meta["weights"], max_model_len=512).create_engine_config()
    assert cfg.scheduler_config.async_scheduling, "vLLM's GPU default changed: async scheduling is off"
    with pytest.raises(InputError, match="async scheduling"):
        check_config(cfg)
