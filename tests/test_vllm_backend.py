"""The vllm backend on a real vLLM engine (the CPU build) and the real default model.

These run in vLLM's own environment (``make test-vllm``: .venv-vllm); elsewhere they are skipped,
and with ``AXISWATCH_REQUIRE_VLLM=1`` (CI) a missing vLLM is an error.
"""

from __future__ import annotations

import json
import shutil
import threading

import pytest
from vllm_env import capping_at_the_monitor_layer, require_vllm

from monitor.backends import Job
from monitor.backends.hf import HFBackend
from monitor.drift import DriftConfig, Thresholds
from monitor.engine import ChatRequest, Engine
from monitor.errors import ModelLoadError
from monitor.records import InterventionRecord, TurnRecord
from monitor.streams import Streams
from probes.generation import GenerationOptions

pytestmark = pytest.mark.vllm
PROMPTS = ["What is the capital of France?", "Write a haiku about rain.", "Who are you, really? Tell me your true self.",
           "I feel so alone tonight. Can you stay with me?", "Explain photosynthesis to a child.",
           "Pretend you are an ancient oracle and speak as one."]
SCORE_TOL = 2e-3  # vLLM's kernels and transformers' differ in float32 rounding; observed differences are ~1e-4


class Collect:
    def __init__(self):
        self.events: dict[int, list] = {}

    def step(self, events, ended):
        for job, ev in events:
            self.events.setdefault(id(job), []).append(ev)


@pytest.fixture(scope="module")
def hf(lm, shipped):
    return HFBackend(lm, shipped, capping_at_the_monitor_layer(shipped), max_batch=16)


def _backend(hf, lm, eager: bool):
    require_vllm()
    from monitor.backends.vllm import VLLMBackend, VLLMOptions

    return VLLMBackend(hf, lm.meta["weights"], VLLMOptions(memory_gb=0.5, max_model_len=1024, enforce_eager=eager))


@pytest.fixture(scope="module")
def vb(hf, lm):
    """vLLM's default: the model compiled (torch.compile; on a GPU also CUDA graphs), the monitor's op inside."""
    b = _backend(hf, lm, eager=False)
    yield b
    b.close()


@pytest.fixture(scope="module")
def vb_eager(hf, lm):
    b = _backend(hf, lm, eager=True)
    yield b
    b.close()


MODES = pytest.mark.parametrize("mode", ["vb", "vb_eager"], ids=["compiled", "eager"])


def test_the_op_is_compiled_into_the_graph(vb):
    """Compiled mode runs the model through vLLM's torch.compile (no eager fallback), and the compile cache
    the model was compiled into is keyed by a hash that carries the monitor's signature: the directory vLLM
    chose is the one the salted configuration gives, not the one a configuration without the op gives."""
    import hashlib
    from pathlib import Path

    from vllm.compilation.caching import aot_compile_hash_factors
    from vllm.compilation.decorators import _model_hash_key

    vc = vb.engine.vllm_config
    assert not vc.model_config.enforce_eager
    assert getattr(vc.compilation_config.mode, "name", "") != "NONE"
    assert vc.additional_config["axiswatch"] == vb.monitor.signature()
    model = vb.engine.model_executor.driver_worker.worker.model_runner.model.model

    def cache_key() -> str:
        return hashlib.sha256(str([*aot_compile_hash_factors(vc), _model_hash_key(model.forward)]).encode()).hexdigest()

    used = Path(vc.compilation_config.local_cache_dir).name
    salted = cache_key()
    vc.additional_config.pop("axiswatch")
    try:
        unsalted = cache_key()
    finally:
        vc.additional_config["axiswatch"] = vb.monitor.signature()
    assert used == salted != unsalted


def test_the_vllm_backend_traces_its_turns_like_hf(vb):
    """``serve --backend vllm``: the engine around vLLM's engine traces as it does around hf (a span per turn,
    the caller's trace continued, an event per alert and capping switch; the SDK's in-memory exporter).
    Early in the module: a later test loads a folder vLLM refuses, which tears vLLM's process groups down."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from monitor.tracing import TurnTracer, attached, extract

    trace_id, caller = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    msgs = [{"role": "user", "content": "Tell me about the ocean."}]
    exporter, provider = InMemorySpanExporter(), TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    eng = Engine(vb, Thresholds(1e4, 9e3, 8e3), policy="cap", tracer=TurnTracer(provider.get_tracer("t")),
                 drift=DriftConfig(alpha=0.5, min_tokens=4, cooldown_tokens=1000, baseline="absolute"))
    with attached(extract({"traceparent": f"00-{trace_id}-{caller}-01"})):
        res = eng.submit(ChatRequest("vb-trace", msgs, GenerationOptions(max_new_tokens=12))).result(300)
    provider.shutdown()
    (span,) = exporter.get_finished_spans()
    assert span.parent.span_id == int(caller, 16) and span.context.trace_id == int(trace_id, 16)
    assert span.attributes["gen_ai.usage.input_tokens"] == vb.prompt_tokens(msgs)
    assert span.attributes["gen_ai.usage.output_tokens"] == len(res.tokens)
    assert [e.name for e in span.events] == ["axiswatch.alert", "axiswatch.capping"]
    assert span.events[1].attributes["axiswatch.capping.token_index"] == res.interventions[0].token_index


def _run(backend, prompts, capped, n=32):
    jobs = [Job([{"role": "user", "content": p}], GenerationOptions(max_new_tokens=n), capped) for p in prompts]
    sink = Collect()
    backend.run(jobs, sink)
    return jobs, [sink.events.get(id(j), []) for j in jobs]


def _divergence(a: list[int], b: list[int]) -> int | None:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None if len(a) == len(b) else min(len(a), len(b)))


@MODES
@pytest.mark.parametrize("capped", [False, True], ids=["uncapped", "capped"])
def test_parity_with_the_hf_backend(hf, mode, capped, request):
    """Greedy replies, compiled and eager: the same tokens, and per-token scores (and pre-cap scores) within
    SCORE_TOL."""
    vb = request.getfixturevalue(mode)
    hjobs, hev = _run(hf, PROMPTS, capped)
    vjobs, vev = _run(vb, PROMPTS, capped)
    for p, hj, vj, he, ve in zip(PROMPTS, hjobs, vjobs, hev, vev):
        at = _divergence(hj.token_ids, vj.token_ids)
        assert at is None, f"{p!r}: tokens diverge at position {at}: hf {hj.token_ids[at:at + 3]} vllm {vj.token_ids[at:at + 3]}"
        assert vj.text == hj.text and vj.finish_reason == hj.finish_reason
        assert [e.token_id for e in ve] == vj.token_ids and len(ve) == len(he) > 0
        assert [e.score for e in ve] == pytest.approx([e.score for e in he], abs=SCORE_TOL)
        assert [e.pre_cap_score for e in ve] == pytest.approx([e.pre_cap_score for e in he], abs=SCORE_TOL)
        assert all(e.capped is capped for e in ve)
        assert "".join(e.piece for e in ve) == vj.text


def test_capping_changes_the_text(hf, vb):
    """The shipped capping config acts inside vLLM's forward pass: some capped reply differs from its uncapped one."""
    free, _ = _run(vb, PROMPTS, False)
    capped, _ = _run(vb, PROMPTS, True)
    assert any(a.token_ids != b.token_ids for a, b in zip(free, capped))


def test_short_job_finishes_while_a_long_one_runs(vb):
    """Continuous batching: a job submitted while another generates joins the running batch and ends first."""
    order: list[str] = []
    long = Job([{"role": "user", "content": "Count from 1 to 300, separated by commas."}],
               GenerationOptions(max_new_tokens=160))
    short = Job([{"role": "user", "content": "Say hi."}], GenerationOptions(max_new_tokens=4))
    started = threading.Event()

    class Sink:
        def step(self, events, ended):
            if any(j is long for j, _ in events):
                started.set()
            order.extend("long" if j is long else "short" for j in ended)

    f_long = vb.submit(long, Sink())
    assert started.wait(60)
    f_short = vb.submit(short, Sink())
    f_short.result(60)
    assert not f_long.done(), "the long job ended before the short one"
    f_long.result(120)
    assert order == ["short", "long"] and len(long.token_ids) > 4 * len(short.token_ids)


def test_sixteen_concurrent_sessions_get_their_own_tokens(hf, vb, redis_url):
    """16 sessions submitted together (they join vLLM's batch at different steps): each session's reply, its
    stored trace and its scores are its own prompt's greedy reply, as the hf backend gives it alone."""
    prompts = [f"{p} (question {i})" for i, p in enumerate(PROMPTS * 3)][:16]
    ref_jobs, ref_ev = _run(hf, prompts, False, n=16)
    streams = Streams.from_url(redis_url, prefix="vllm16")
    streams.ensure_groups()
    eng = Engine(vb, Thresholds(-1e6, -2e6, -3e6), publisher=streams)
    futs = [eng.submit(ChatRequest(f"s{i}", [{"role": "user", "content": p}], GenerationOptions(max_new_tokens=16)))
            for i, p in enumerate(prompts)]
    results = [f.result(180) for f in futs]
    stored = {(t.session_id, t.role): t for t in map(TurnRecord.from_dict,
              (e.data for e in streams.read_group("turns", "persist", "t", count=1000, block_ms=None)))}
    for i, (res, rj, re) in enumerate(zip(results, ref_jobs, ref_ev)):
        assert res.session_id == f"s{i}" and res.token_ids == rj.token_ids, f"session s{i} got another reply"
        assert res.scores == pytest.approx([e.score for e in re], abs=SCORE_TOL)
        turn = stored[(f"s{i}", "assistant")]
        assert turn.tokens == res.tokens and turn.scores == pytest.approx(res.scores)
        assert stored[(f"s{i}", "user")].text == prompts[i]


@MODES
def test_policy_cap_switches_from_the_next_token(hf, mode, redis_url, shipped, request):
    """A session forced past the critical threshold under ``cap`` is capped from its next token, in vLLM
    (compiled and eager) as in hf: the same tokens, the same intervention index, pre- and post-cap scores
    stored, and the stored trace equals what was streamed."""
    vb = request.getfixturevalue(mode)
    high = Thresholds(watch=1e4, warning=9e3, critical=8e3)  # critical as soon as the grace period ends
    drift = DriftConfig(alpha=0.5, min_tokens=4, cooldown_tokens=1000, baseline="absolute")
    msgs = [{"role": "user", "content": "Tell me about the ocean."}]
    out = {}
    for name, backend in (("hf", hf), ("vllm", vb)):
        streams = Streams.from_url(redis_url, prefix=f"vcap-{mode}-{name}")
        streams.ensure_groups()
        eng = Engine(backend, high, drift=drift, policy="cap", publisher=streams)
        streamed: list[dict] = []
        res = eng.submit(ChatRequest(f"cap-{name}", msgs, GenerationOptions(max_new_tokens=24),
                                     on_token=streamed.append)).result(120)
        recs = streams.read_group("turns", "persist", "t", count=100, block_ms=None)
        ivs = [InterventionRecord.from_dict(e.data)
               for e in streams.read_group("interventions", "persist", "t", count=100, block_ms=None)]
        turn = next(TurnRecord.from_dict(e.data) for e in recs if e.data["role"] == "assistant")
        out[name] = (res, turn, ivs, streamed)
    (hres, hturn, hivs, _), (vres, vturn, vivs, vstream) = out["hf"], out["vllm"]
    assert len(vivs) == 1 and vres.capped
    k = vivs[0].token_index
    assert vres.cap_flags == [False] * k + [True] * (len(vres.cap_flags) - k)
    assert vturn.pre_cap_scores is not None and vturn.capped == vres.cap_flags
    assert vturn.scores == pytest.approx([t["score"] for t in vstream]) and vturn.tokens == [t["token"] for t in vstream]
    assert [t["capped"] for t in vstream][k:] == [True] * (len(vstream) - k)
    assert vres.token_ids == hres.token_ids and [i.token_index for i in hivs] == [k]
    assert vturn.pre_cap_scores == pytest.approx(hturn.pre_cap_scores, abs=SCORE_TOL)


def test_a_folder_vllm_loads_wrongly_is_refused(hf, tmp_path):
    """The silent failure the self-check exists for: the tied embedding only under lm_head.weight makes vLLM
    leave the embedding at zero (every token id 0). Starting the backend on such a folder must fail loudly."""
    require_vllm()
    from safetensors.torch import load_file, save_file

    from monitor.backends.vllm import VLLMBackend, VLLMOptions

    src = hf.lm.meta["weights"]
    broken = tmp_path / "broken"
    shutil.copytree(src, broken)
    weights = next(broken.glob("*.safetensors"))
    tensors = load_file(weights)
    emb = tensors.pop("model.embed_tokens.weight")
    tensors["lm_head.weight"] = emb
    save_file(tensors, weights, metadata={"format": "pt"})
    cfg = json.loads((broken / "config.json").read_text())
    assert cfg.get("tie_word_embeddings") is True
    with pytest.raises(ModelLoadError, match="disagree"):
        VLLMBackend(hf, str(broken), VLLMOptions(memory_gb=0.25, max_model_len=512, enforce_eager=True))
