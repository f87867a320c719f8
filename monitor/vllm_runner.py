"""The vLLM plugin inside one model runner (:mod:`monitor.vllm_plugin` starts it where the model loads).

The monitor's op (:mod:`probes.vllm_hooks`) goes into vLLM's model as it loads, before compilation,
held until the runtime closes, and every step's sampled tokens go, with their scores, through the same
:class:`~monitor.engine.Engine` as ``axiswatch serve``, built by the same :func:`monitor.service.start`:
sessions, drift tracker, policy (``cap`` caps a session from its next token), and the turns, alerts and
interventions published to Redis, so ``axiswatch worker``, the dashboard and webhooks work unchanged.

A request names its session in ``extra_body={"vllm_xargs": {"session_id": ...}}`` (optionally ``"policy"``,
and a W3C ``"traceparent"``/``"tracestate"`` that the turn's span continues where the ``OTEL_*`` variables
switch tracing on: :mod:`monitor.tracing`); one without gets a session of its own. The turn's stored
messages are read back from the prompt's tokens (chat-markup templates; anything else is stored as one user
message). Under tensor parallelism rank 0's runner holds all of this and the other ranks the op alone
(:class:`RankMonitor`), capping with the mask rank 0 broadcasts each step. Pipeline and data parallelism and
async scheduling are refused (:func:`~monitor.backends.vllm.check_config`), as is prefix caching while a
capping config is loaded. Set-up follows :class:`~monitor.settings.Settings` (``AXISWATCH_*``,
``REDIS_URL``; without it an embedded Redis is started, its address logged) and starts a persistence worker
in the process of the runner (the engine core, or rank 0's worker) unless
``AXISWATCH_VLLM_PLUGIN_WORKERS=0``. A step in which a reply ends waits until its records are stored
(:meth:`RunnerMonitor._stored`): vLLM kills this process a moment after SIGTERM.
"""

from __future__ import annotations

import atexit
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
from transformers import AutoTokenizer

from monitor import service
from monitor.backends import Backend, Job, TokenEvent
from monitor.backends.vllm import check_config, run_mode
from monitor.errors import InputError
from monitor.records import new_id
from monitor.settings import Settings
from monitor.tracing import attached, extract
from monitor.turns import ChatRequest, Turn
from probes.cache import cache_dir
from probes.generation import Detokenizer, GenerationOptions, cap_plan
from probes.models import DEFAULT_MODEL_ID
from probes.vllm_hooks import VLLMMonitor, attach, max_rows, read_spec, runner_rows, vllm_capping

log = logging.getLogger("vllm.axiswatch")  # under vLLM's logger: its handlers print it
_CHATML = re.compile(r"<\|im_start\|>(\w+)\n(.*?)(?:<\|im_end\|>|$)", re.S)


def parse_prompt(text: str) -> list[dict]:
    """The chat a rendered prompt holds (chat markup: ``<|im_start|>role\\n...<|im_end|>``); the last,
    empty assistant header (the generation prompt) is dropped. Other templates: one user message."""
    msgs = [{"role": r, "content": c.strip("\n")} for r, c in _CHATML.findall(text)]
    if msgs and msgs[-1]["role"] == "assistant" and not msgs[-1]["content"]:
        msgs.pop()
    return msgs or [{"role": "user", "content": text}]


@dataclass(eq=False)
class _Req:
    turn: Turn
    detok: Detokenizer
    stops: set[int]
    max_tokens: int  # it ends at this many sampled tokens (its max_tokens, or the model length's room)
    n: int = 0


class _Watcher:
    """Only the model's identity for the engine: vLLM runs generation, the plugin feeds the engine."""

    name = "vllm-plugin"

    # the chat is parsed from the prompt vLLM rendered: the template's own system message is in it already
    template_system = None

    def __init__(self, model_id, layer, axis, capping, capping_note=None):
        self.model_id, self.layer, self.axis, self.capping = model_id, layer, axis, capping
        self.capping_note = capping_note  # why a loaded capping config cannot run here (policy cap is refused)


def _tensor_parallel() -> tuple[int, Callable[[torch.Tensor], None] | None]:
    """This process' tensor-parallel rank, and the broadcast that hands rank 0's cap mask to every rank
    at the same step (None on one rank). After a decoder block the residual stream is replicated on every
    rank: each rank caps its copy with the same mask, and rank 0's scores are the ones read."""
    from vllm.distributed import get_tensor_model_parallel_rank, get_tensor_model_parallel_world_size, get_tp_group

    if get_tensor_model_parallel_world_size() == 1:
        return 0, None
    group = get_tp_group()
    return get_tensor_model_parallel_rank(), lambda t: group.broadcast(t, src=0)


def _monitor(runner, broadcast, check_prefix_caching: bool, rank: int = 0):
    """The axis and capping config the settings name, checked against vLLM's configuration, and the
    :class:`VLLMMonitor` over them: ``(monitoring, capping, note, monitor)``."""
    vc = runner.vllm_config
    check_config(vc)
    settings = Settings.from_env()
    hf = vc.model_config.hf_config
    mon = service.load_monitoring(settings, int(hf.hidden_size), int(hf.num_hidden_layers))
    capping, note = vllm_capping(mon.capping, mon.axis.monitor_layer)
    if capping is not None and check_prefix_caching and vc.cache_config.enable_prefix_caching:
        raise InputError(f"a capping config is loaded ({mon.cap_dir}) and vLLM's prefix caching is on: a "
                         "capped session could reuse an uncapped one's KV cache (start vLLM with "
                         "--no-enable-prefix-caching, as `axiswatch vllm-args` prints)")
    monitor = VLLMMonitor(mon.axis.unit(), mon.axis.monitor_layer, cap_plan(capping), max_rows(runner),
                          runner.device, broadcast=broadcast, rank=rank)
    return settings, mon, capping, note, monitor


def on_rank(runner, plugin: bool, workers: bool = True, spec: str | None = None):
    """What runs where a model runner has loaded its model: with the plugin on, on tensor-parallel rank 0
    the whole :class:`RunnerMonitor`, on the other ranks a :class:`RankMonitor`; in the ``vllm`` backend's
    tensor-parallel workers (``spec``: the monitor the backend wrote, :func:`probes.vllm_hooks.write_spec`)
    a :class:`RankMonitor` on every rank, read and told whom to cap through ``collective_rpc``."""
    rank, broadcast = _tensor_parallel()
    if plugin and rank == 0:
        return RunnerMonitor(runner, workers=workers, broadcast=broadcast)
    if plugin:
        monitor = _monitor(runner, broadcast, check_prefix_caching=False, rank=rank)[-1]
    else:
        check_config(runner.vllm_config)
        axis, layer, plan = read_spec(spec)
        monitor = VLLMMonitor(axis, layer, plan, max_rows(runner), runner.device, broadcast=broadcast, rank=rank)
    return RankMonitor(runner, monitor, by_request_id=plugin)


class RankMonitor:
    """The monitor's op in one rank's model, without a service: it caps with the mask rank 0 broadcasts
    and scores rows that rank 0 reads (the plugin's :class:`RunnerMonitor`, or, in the ``vllm`` backend's
    workers, :func:`probes.vllm_hooks.rpc_take` for the backend's process)."""

    def __init__(self, runner, monitor: VLLMMonitor, by_request_id: bool):
        self.monitor = monitor
        self._stack = attach(runner, monitor, lambda: runner_rows(runner, by_request_id=by_request_id))
        atexit.register(self._stack.close)


class RunnerMonitor:
    """The plugin inside one model runner (tensor-parallel rank 0): the op, per-request turns, and the
    engine they feed."""

    def __init__(self, runner, workers: bool = True, broadcast=None):
        self.runner = runner
        vc = runner.vllm_config
        # the axis, the capping config and vLLM's configuration checked before anything starts
        settings, mon, capping, note, self.monitor = _monitor(runner, broadcast, check_prefix_caching=True)
        if note:  # a window below the monitor layer cannot run here: monitoring goes on, policy cap is refused
            log.warning("axiswatch: %s", note)
        model = str(vc.model_config.model)
        in_cache = Path(model).resolve().is_relative_to(cache_dir(settings.cache_dir).resolve())
        model_id = DEFAULT_MODEL_ID if in_cache else model.rstrip("/")
        # the plugin's backend for service.start: only the model's identity (vLLM generates, this runner's
        # hooks score; the engine's turns are opened, fed and finished from outside)
        watcher = cast(Backend, _Watcher(model_id, mon.axis.monitor_layer, mon.axis, capping, note))
        # a one-tier config that floors every session under policy cap (light = its floors) from its first token
        self._every = capping is not None and capping.light_taus is not None

        self.tok = AutoTokenizer.from_pretrained(vc.model_config.tokenizer)
        self.max_model_len = int(vc.model_config.max_model_len)
        self.rt: service.Runtime | None
        self.rt = rt = service.start(settings, workers=workers, backend=lambda _s: (watcher, mon), replica="vllm")
        assert rt.engine is not None
        self.engine = rt.engine
        try:
            # the op into the model before vLLM compiles it; taken out at close
            rt.hold(attach(runner, self.monitor, lambda: runner_rows(runner, by_request_id=True)))
        except BaseException:
            rt.close()
            raise
        atexit.register(self.close)
        self.live: dict[str, _Req] = {}
        self.errors = 0
        # a reply is stored before vLLM sends it: vLLM's shutdown kills this process a moment after SIGTERM
        # (its default --shutdown-timeout 0), so nothing accepted may wait for an orderly close here
        self._published: list[tuple[str, str]] = []
        self._persist = next((w for w in rt.workers if hasattr(w, "wait_persisted")), None)
        self._paused_until = 0.0
        if self._persist is not None and rt.outbox is not None:
            publish = rt.outbox.publish

            def published(record):
                entry = publish(record)
                if entry is not None:
                    self._published.append(entry)
                return entry

            rt.outbox.publish = published  # type: ignore[method-assign]
        run, sample = runner.execute_model, runner.sample_tokens
        runner.execute_model = lambda so, *a, **kw: self._after(run(self._before(so), *a, **kw))
        runner.sample_tokens = lambda *a, **kw: self._after(sample(*a, **kw))
        log.info("axiswatch plugin: scoring every token at layer %d (%s, policy %s; %s)", self.engine.layer,
                 model_id, settings.policy, run_mode(vc))
        log.info("axiswatch plugin: publishing to %s, store %s", rt.redis_url, settings.database_url)
        if rt.tracing is not None:
            log.info("axiswatch plugin: a trace span per turn to %s", rt.tracing.where)

    # ------------------------------------------------------------------ around each step
    def _before(self, so):
        """Requests vLLM finished without a token we saw end (stop strings, aborts); capping for this step."""
        try:
            for rid in getattr(so, "finished_req_ids", ()) or ():
                if rid in self.live:
                    self._end([self.live.pop(rid)], "stop")
            self.monitor.capped = {rid for rid, r in self.live.items()
                                   if r.turn.job.capped or (self._every and r.turn.job.light)}
        except Exception:  # noqa: BLE001 - a monitor bug must not stop vLLM's step; it is logged and counted
            self._error("before-step bookkeeping failed")
        return so

    def _after(self, out):
        """A step's output (None while vLLM splits the forward pass from sampling: then ``sample_tokens``)."""
        if out is not None and getattr(out, "sampled_token_ids", None):
            try:
                self._step(out, self.monitor.take())
            except Exception:  # noqa: BLE001 - see _before
                self._error("scoring step failed")
        return out

    def _error(self, what: str) -> None:
        self.errors += 1
        log.exception("axiswatch plugin: %s (%d monitor errors so far)", what, self.errors)

    def _step(self, out, scores: dict) -> None:
        """Each request's sampled token, with its score, to its turn; ended turns finished. A request's
        failure is its own: the others' tokens still reach the engine."""
        events, ended = [], []
        for i, rid in enumerate(out.req_ids):
            sampled = out.sampled_token_ids[i] if i < len(out.sampled_token_ids) else []
            if not len(sampled):
                continue
            try:
                r = self.live.get(rid) or self._open(rid)
                if r is None:
                    continue
                tid = int(sampled[0])
                r.n += 1
                if rid not in scores:
                    raise RuntimeError(f"token {tid} of request {rid} has no score: the monitor's op did not write its "
                                       "row (or the model's activations are not finite)")
                score, pre = scores[rid]
                if tid not in r.stops:
                    r.turn.job.token_ids.append(tid)
                    events.append((r.turn.job, TokenEvent(tid, r.detok.push(tid), score, pre,
                                                          rid in self.monitor.capped)))
                if tid in r.stops or r.n >= r.max_tokens:
                    r.turn.job.finish_reason = "stop" if tid in r.stops else "length"
                    self._text(r)
                    ended.append(self.live.pop(rid))
            except Exception:  # noqa: BLE001 - this request's bookkeeping only
                self._error(f"request {rid}")
        if not (events or ended):
            return
        try:
            self.engine.step(events, [r.turn.job for r in ended])
        finally:
            self._end(ended, None)
            if ended:
                self._stored()

    def _stored(self, timeout: float = 5.0, pause_s: float = 30.0) -> None:
        """Wait (in vLLM's step, before it hands the ended replies on) until the persistence worker has
        written every record published so far: a reply a client has is in the store. After a wait that
        timed out (the store or the worker in trouble) steps do not wait for ``pause_s``: serving goes on,
        the records stay in Redis for the worker."""
        entries, self._published = self._published, []
        if self._persist is None or not entries or time.monotonic() < self._paused_until:
            return
        if not self._persist.wait_persisted(entries, timeout):
            self._paused_until = time.monotonic() + pause_s
            log.warning("axiswatch plugin: %d records not in the store after %.0f s; replies are not held for "
                        "the store for the next %.0f s (the records stay in Redis for the worker)", len(entries),
                        timeout, pause_s)

    def _open(self, rid: str) -> _Req | None:
        state = self.runner.requests.get(rid)
        params = getattr(state, "sampling_params", None)
        if state is None or params is None:
            return None
        extra = params.extra_args or {}
        sid = str(extra.get("session_id") or new_id("vllm"))
        prompt = str(self.tok.decode(state.prompt_token_ids or [], skip_special_tokens=False))
        opts = GenerationOptions(max_new_tokens=int(params.max_tokens or 0), temperature=float(params.temperature),
                                 top_p=float(params.top_p), seed=params.seed)
        req = ChatRequest(sid, parse_prompt(prompt), opts, policy=extra.get("policy"))
        tracer = self.engine.tracer
        with attached(extract(extra) if tracer is not None else None):  # the caller's trace, from vllm_xargs
            try:
                turn = self.engine.open_turn(req)
            except InputError as e:  # a bad policy, or an audit session's id: scored under a session of its own
                log.warning("axiswatch plugin: request %s: %s; scored in a new session", rid, e)
                req.session_id, req.policy = new_id("vllm"), None
                turn = self.engine.open_turn(req)
        if tracer is not None:
            tracer.usage(turn, len(state.prompt_token_ids or []))
        stops = set() if params.ignore_eos else {params.eos_token_id} - {None}
        stops |= set(params.stop_token_ids or ())
        room = self.max_model_len - len(state.prompt_token_ids or [])  # the positions its reply may take
        r = _Req(turn, Detokenizer(self.tok), {int(s) for s in stops}, min(int(params.max_tokens or room), room))
        self.live[rid] = r
        return r

    def _text(self, r: _Req) -> None:
        job: Job = r.turn.job
        job.text = str(self.tok.decode(job.token_ids, skip_special_tokens=True))

    def _end(self, reqs: list[_Req], reason: str | None) -> None:
        for r in reqs:
            if reason is not None:
                r.turn.job.finish_reason = reason
                self._text(r)
                r.turn.ended = True
            try:
                self.engine.finish_turn(r.turn)
            except Exception:  # noqa: BLE001 - the next turn still finishes
                self._error(f"finishing session {r.turn.session.id}'s turn")

    def close(self) -> None:
        """At exit: the open turns end, then what was published drains to the store."""
        for r in list(self.live.values()):
            self._end([r], "stop")
        self.live.clear()
        if self.rt is not None:
            rt, self.rt = self.rt, None
            rt.close()
        if self.errors:
            log.warning("axiswatch plugin: %d monitor errors in this run (see the log above)", self.errors)

