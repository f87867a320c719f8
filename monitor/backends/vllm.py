"""The ``vllm`` backend: generation inside vLLM's engine (continuous batching, paged attention), with
the score of every generated token and per-request capping from the same forward pass.

vLLM's V1 engine runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, the V1 model runner),
driven step by step from one thread: jobs join the running batch between steps and leave it when
they end, each with its own sampling options. The monitor's op (:mod:`probes.vllm_hooks`) goes into
vLLM's model as it loads, before vLLM compiles it (its default: torch.compile, CUDA graphs on a GPU; or
eager): each step it scores the rows of every request that produces a token and floors the capped
requests' rows at the capping layers; between steps the backend reads each job's ``capped`` flag, so a
session is capped from its next token, as with the ``hf`` backend. Under tensor parallelism the ranks are
vLLM's worker processes: each runs the op, rank 0's cap mask reaches all of them every step, and whom to
cap and rank 0's scores travel through ``collective_rpc``.

Prompts are rendered and tokenised by our own tokenizer (the same ids as ``hf``), and replies are
detokenised by :class:`probes.generation.Detokenizer`. Audits, shadow mode and validation use the
transformers copy of the model (:class:`~monitor.backends.hf.HFBackend`). Prefix caching is off
while a capping config is loaded: a capped request's KV cache is never shared with an uncapped one.
A configuration in which the op would not see every token, or would score the wrong rows (speculative
decoding, async scheduling, the V2 model runner, pipeline or data parallelism), is refused: axiswatch
never serves unmonitored.
"""

from __future__ import annotations

import logging
import os
import queue
import tempfile
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

from monitor.backends import Job, StepSink, TokenEvent
from monitor.backends.hf import HFBackend
from monitor.errors import InputError, ModelLoadError
from monitor.vllm_load import WORKER_SWITCH, on_load
from probes.generation import Detokenizer, GenerationOptions, stop_token_ids
from probes.models import format_chat
from probes.vllm_hooks import (
    KEY,
    VLLMMonitor,
    attach,
    max_rows,
    rpc_set_capped,
    rpc_take,
    runner_rows,
    vllm_capping,
    write_spec,
)

log = logging.getLogger(__name__)
INSTALL_HINT = ("the vllm backend needs vLLM, which lives in its own environment: run 'make install' (it builds "
                ".venv-vllm) and start axiswatch from there (.venv-vllm/bin/axiswatch serve --backend vllm)")


@dataclass(frozen=True)
class VLLMOptions:
    """What users tune (``AXISWATCH_VLLM_*``); the defaults run the default model on CPU."""

    memory_gb: float = 1.0  # KV cache size (on CPU: host memory reserved for it)
    max_model_len: int = 2048
    max_num_seqs: int = 64  # requests decoded together at most
    tensor_parallel_size: int = 1
    enforce_eager: bool = False  # vLLM's default: compiled (CUDA graphs on a GPU); True runs eager


@dataclass(eq=False)
class _Live:
    job: Job
    sink: StepSink
    future: Future
    detok: Detokenizer


@dataclass
class _Step:
    events: list[tuple[Job, TokenEvent]] = field(default_factory=list)
    ended: list[Job] = field(default_factory=list)


def _vllm():
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine core, and the model, in this process
    os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")  # the runner whose batch layout the hooks read
    try:
        import vllm
        from vllm.sampling_params import RequestOutputKind
    except ImportError as e:
        raise InputError(f"{INSTALL_HINT} ({e})") from None
    return vllm, RequestOutputKind


def check_config(vc) -> None:
    """Refuse, with the reason, any vLLM configuration in which the monitor's hooks would not run, or
    would score or cap the wrong rows."""
    problems = []
    if vc.speculative_config is not None:
        problems.append("speculative decoding is on: draft tokens would be scored as if generated")
    if getattr(vc, "use_v2_model_runner", False):
        problems.append("vLLM's V2 model runner is in use (set VLLM_USE_V2_MODEL_RUNNER=0)")
    if getattr(vc.scheduler_config, "async_scheduling", False):
        problems.append("async scheduling is on (vLLM's default on GPUs; pass --no-async-scheduling): the next "
                        "step's forward pass runs before a step's tokens come back, so scores would pair with "
                        "the wrong token")
    if vc.parallel_config.data_parallel_size != 1:
        problems.append("data parallelism: each engine would keep its own trackers for one session")
    if vc.parallel_config.pipeline_parallel_size != 1:
        problems.append("pipeline parallelism: the monitor and capping layers sit on different ranks, and the "
                        "rows' scores and cap mask would have to follow the stage boundaries (not supported; "
                        "tensor parallelism is)")
    if problems:
        raise InputError("vLLM configuration refused, the monitor would not see every token: " + "; ".join(problems))


@contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


class _Ranks:
    """The monitor of tensor-parallel workers (processes of vLLM's executor), as the backend's loop uses
    it: whom to cap goes to every rank before the step, rank 0's scores come back after it, both through
    ``collective_rpc``, which shares the queue of vLLM's ``execute_model`` (so each lands at a step boundary)."""

    def __init__(self, engine):
        self.engine = engine
        self._sent: frozenset[str] = frozenset()

    @property
    def capped(self) -> set[str]:
        return set(self._sent)

    @capped.setter
    def capped(self, keys: set[str]) -> None:
        if frozenset(keys) != self._sent:
            self.engine.collective_rpc(rpc_set_capped, args=(sorted(keys),))
            self._sent = frozenset(keys)

    def take(self) -> dict[str, tuple[float, float]]:
        return self.engine.collective_rpc(rpc_take)[0]


def run_mode(vc) -> str:
    """How vLLM runs the model, in words (the start-up log says it)."""
    if vc.model_config.enforce_eager:
        return "eager, the op runs in PyTorch's eager mode"
    mode = getattr(vc.compilation_config.mode, "name", str(vc.compilation_config.mode))
    graphs = getattr(vc.compilation_config, "cudagraph_mode", None)
    graphs = getattr(graphs, "name", graphs)
    return f"the op in vLLM's compiled graph: {mode}" + (f", CUDA graphs {graphs}" if graphs not in (None, "NONE") else "")


class VLLMBackend:
    name = "vllm"

    def __init__(self, hf: HFBackend, weights: str | None, options: VLLMOptions | None = None, dtype: str = "float32"):
        if weights is None:
            raise InputError("the vllm backend needs the model as a Hugging Face folder or hub id, not a GGUF file")
        vllm, self._kind = _vllm()
        self.hf, self.options = hf, options or VLLMOptions()
        self.lm, self.axis = hf.lm, hf.axis
        self.model_id, self.layer = hf.model_id, hf.layer
        # a window below the monitor layer cannot run here: monitoring goes on, policy cap is refused (why: the note)
        self.capping, self.capping_note = vllm_capping(hf.capping, self.layer)
        if self.capping_note:
            log.warning("%s", self.capping_note)
        self._sampling = vllm.SamplingParams
        self.stops = sorted(stop_token_ids(self.lm))
        o = self.options
        args = vllm.EngineArgs(model=weights, tokenizer=weights, dtype=dtype, enforce_eager=o.enforce_eager,
                               max_model_len=o.max_model_len, max_num_seqs=o.max_num_seqs,
                               kv_cache_memory_bytes=int(o.memory_gb * 2**30),
                               tensor_parallel_size=o.tensor_parallel_size, seed=0, async_scheduling=False,
                               enable_prefix_caching=self.capping is None)
        self._hooks = ExitStack()
        self.monitor: VLLMMonitor | _Ranks | None = None
        try:
            if o.tensor_parallel_size > 1:  # the workers are processes of their own: they read the monitor from a file
                spec = self._hooks.enter_context(tempfile.TemporaryDirectory(prefix="axiswatch-vllm-")) + "/monitor.pt"
                write_spec(spec, hf.v, self.layer, hf.plan if self.capping is not None else None)
                self._hooks.enter_context(_env(WORKER_SWITCH, spec))
            with on_load(self._attach):  # the op goes into the model as it loads, before vLLM compiles it
                self.engine = vllm.LLMEngine.from_engine_args(args)
            if o.tensor_parallel_size > 1:
                self.monitor = _Ranks(self.engine)
        except BaseException:
            self._hooks.close()
            raise
        self._q: queue.Queue = queue.Queue()
        self._live: dict[str, _Live] = {}
        self._n = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="axiswatch-vllm", daemon=True)
        try:
            check_config(self.engine.vllm_config)
            if self.monitor is None:
                raise InputError("vLLM loaded the model without the monitor's op (a model runner axiswatch does "
                                 "not know?): refused, axiswatch never serves unmonitored")
            log.info("vllm backend: %s", run_mode(self.engine.vllm_config))
            self._thread.start()
            self._self_check()
        except BaseException:
            self.close()
            raise

    def _attach(self, runner) -> VLLMMonitor:
        """Where vLLM's runner has loaded the model (this process, before compilation): the monitor's op."""
        if not hasattr(runner, "input_batch"):
            raise InputError("vLLM's model runner has no input_batch (the V2 runner?): set VLLM_USE_V2_MODEL_RUNNER=0")
        self.monitor = VLLMMonitor(self.hf.v, self.layer, self.hf.plan if self.capping is not None else None,
                                   max_rows(runner), runner.device)
        self._hooks.enter_context(attach(runner, self.monitor, lambda: runner_rows(runner)))
        return self.monitor

    # ------------------------------------------------------------------ the Backend interface
    def validate(self, messages: list[dict], options: GenerationOptions) -> None:
        self.hf.validate(messages, options)
        n = self.hf.prompt_tokens(messages)
        if n + options.max_new_tokens > self.options.max_model_len:
            raise InputError(f"prompt of {n} tokens + {options.max_new_tokens} new tokens exceeds the vllm backend's "
                             f"{self.options.max_model_len} positions (AXISWATCH_VLLM_MAX_MODEL_LEN)")

    template_system = property(lambda self: self.hf.template_system)

    def prompt_tokens(self, messages: list[dict]) -> int:
        return self.hf.prompt_tokens(messages)

    def validate_transcript(self, messages: list[dict]) -> None:
        self.hf.validate_transcript(messages)

    def score_conversation(self, messages: list[dict]) -> list:
        return self.hf.score_conversation(messages)

    def submit(self, job: Job, sink: StepSink) -> Future:
        if self._stop.is_set():
            raise RuntimeError("the vllm backend is closed")
        fut: Future = Future()
        self._q.put((job, sink, fut))
        return fut

    def run(self, jobs: Sequence[Job], sink: StepSink) -> None:
        futs = [self.submit(j, sink) for j in jobs]
        errors = [f.exception() for f in futs]
        if any(errors):
            raise next(e for e in errors if e is not None)

    def close(self, timeout: float = 30.0) -> None:
        """Stop taking jobs, fail those still running, stop the engine thread and free vLLM's engine."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._q.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._hooks.close()
        shutdown = getattr(self.engine.engine_core, "shutdown", None)
        if shutdown is not None:
            shutdown()

    # ------------------------------------------------------------------ the engine thread
    def _self_check(self) -> None:
        """One greedy token of a fixed prompt through vLLM and through transformers must agree, token and
        score: weights loaded wrongly (a tied embedding left at zero, say) fail here, not silently."""
        class _Collect:
            def __init__(self):
                self.events: list[TokenEvent] = []

            def step(self, events, ended):
                self.events.extend(ev for _, ev in events)

        msgs = [{"role": "user", "content": "What is the capital of France?"}]
        ours, theirs = _Collect(), _Collect()
        self.run([Job(msgs, GenerationOptions(max_new_tokens=2))], ours)
        self.hf.run([Job(msgs, GenerationOptions(max_new_tokens=2))], theirs)
        got, ref = ours.events, theirs.events
        if not got or [e.token_id for e in got] != [e.token_id for e in ref] or \
                abs(got[0].score - ref[0].score) > 0.05 * max(1.0, abs(ref[0].score)):
            raise ModelLoadError(
                f"vLLM and transformers disagree on the first tokens of a fixed prompt (vLLM {[e.token_id for e in got]}"
                f" {[round(e.score, 3) for e in got]}, transformers {[e.token_id for e in ref]} "
                f"{[round(e.score, 3) for e in ref]}): vLLM did not load these weights as transformers does")

    def _loop(self) -> None:
        while True:
            if not self._admit():
                return
            if not self._live:
                continue
            try:
                self._step()
            except Exception as e:
                log.exception("vLLM step failed")
                self._fail_all(e)

    def _admit(self) -> bool:
        """New jobs into the running batch (blocking while there is nothing to do); False to stop."""
        block = not self._live
        while True:
            try:
                item = self._q.get(block=block)
            except queue.Empty:
                return True
            if item is None:
                self._fail_all(RuntimeError("the vllm backend was closed"))
                return False
            job, sink, fut = item
            try:
                self._add(job, sink, fut)
            except Exception as e:  # noqa: BLE001 - this job's error, to its caller
                fut.set_exception(e)
            block = False

    def _add(self, job: Job, sink: StepSink, fut: Future) -> None:
        self._n += 1
        key = f"aw-{self._n}"
        tok, o = self.lm.tokenizer, job.options
        ids = tok(format_chat(tok, job.messages), add_special_tokens=False)["input_ids"]
        params = self._sampling(max_tokens=o.max_new_tokens, temperature=o.temperature, top_p=o.top_p, seed=o.seed,
                                stop_token_ids=self.stops, output_kind=self._kind.DELTA, detokenize=False,
                                extra_args={KEY: key})
        self.engine.add_request(key, {"prompt_token_ids": ids}, params)
        self._live[key] = _Live(job, sink, fut, Detokenizer(tok))

    def _step(self) -> None:
        cap = self.capping
        # the strong tier once flagged; a one-tier config that floors every session (its light = its floors) from the first
        capped = {k for k, lv in self._live.items()
                  if cap is not None and (lv.job.capped or (lv.job.light and cap.light_taus is not None))}
        mon = self.monitor
        assert mon is not None  # the constructor refuses an engine without it
        mon.capped = capped  # from this step's tokens on
        outs = self.engine.step()
        scores = mon.take()
        steps: dict[int, tuple[StepSink, _Step]] = {}
        done = []
        for out in outs:
            lv = self._live.get(out.request_id)
            if lv is None:
                continue
            st = steps.setdefault(id(lv.sink), (lv.sink, _Step()))[1]
            completion = out.outputs[0]
            content = [t for t in completion.token_ids if t not in self.stops]
            if len(content) > 1:
                raise RuntimeError(f"{len(content)} tokens in one step for one request: only one can be scored")
            for tid in content:
                if out.request_id not in scores:
                    raise RuntimeError("a generated token has no score: the monitor's op did not run")
                score, pre = scores[out.request_id]
                st.events.append((lv.job, TokenEvent(tid, lv.detok.push(tid), score, pre, out.request_id in capped)))
            if out.finished:
                ids = list(lv.detok.ids)
                lv.job.token_ids, lv.job.text = ids, self.lm.tokenizer.decode(ids, skip_special_tokens=True)
                lv.job.finish_reason = "length" if completion.finish_reason == "length" else "stop"
                st.ended.append(lv.job)
                done.append(out.request_id)
        for sink, st in steps.values():
            sink.step(st.events, st.ended)
        for key in done:
            self._live.pop(key).future.set_result(None)

    def _fail_all(self, e: BaseException) -> None:
        if self._live:
            try:
                self.engine.abort_request(list(self._live))
            except Exception:
                log.exception("could not abort the vLLM requests")
        for lv in self._live.values():
            if not lv.future.done():
                lv.future.set_exception(e)
        self._live.clear()
