"""The ``hf`` backend: our transformers decoding loop (:func:`probes.generation.generate`), the
embedded default, for any Hugging Face causal LM.

It batches statically: :class:`Scheduler` gathers the jobs submitted from any thread within a short
wait into one batch (each job keeps its own options: the loop stops and samples per row) and runs
one batch at a time. Every token's score comes from the forward pass that produced it; a job whose
``capped`` flag is set between steps is capped (the strong tier) from its next token; a job under policy
``cap`` is floored at a two-tier config's light tier from its first.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future

import torch

from monitor.backends import Job, StepSink, TokenEvent
from monitor.errors import InputError
from probes.artifacts import AxisArtifact, CappingConfig
from probes.audit import score_conversation
from probes.generation import LIGHT, STRONG, CapPlan, Detokenizer, GenerationOptions, cap_plan, generate
from probes.models import LoadedModel, format_chat, template_default_system

log = logging.getLogger(__name__)


class HFBackend:
    name = "hf"

    def __init__(self, lm: LoadedModel, axis: AxisArtifact, capping: CappingConfig | None = None,
                 max_batch: int = 8, max_wait_s: float = 0.02):
        self.lm, self.axis, self.capping = lm, axis, capping
        self.model_id, self.layer, self.v = lm.model_id, axis.monitor_layer, axis.unit()
        self._plan = cap_plan(capping)
        self._model_lock = threading.Lock()  # one forward pass at a time: hooks go on the shared model
        self.max_batch, self.max_wait_s = max_batch, max_wait_s
        self._scheduler: Scheduler | None = None  # started by the first submit
        self._start_lock = threading.Lock()

    def validate(self, messages: list[dict], options: GenerationOptions) -> None:
        n = self.prompt_tokens(messages)  # validates roles, contents, the template
        limit = getattr(self.lm.model.config, "max_position_embeddings", None)
        if limit and n + options.max_new_tokens > limit:
            raise InputError(f"prompt of {n} tokens + {options.max_new_tokens} new tokens exceeds "
                             f"the model's {limit} positions")

    @property
    def template_system(self) -> str | None:
        return template_default_system(self.lm.tokenizer)  # a few template renders: per turn, as a date changes

    def prompt_tokens(self, messages: list[dict]) -> int:
        tok = self.lm.tokenizer
        return len(tok(format_chat(tok, messages), add_special_tokens=False)["input_ids"])

    def validate_transcript(self, messages: list[dict]) -> None:
        format_chat(self.lm.tokenizer, messages, add_generation_prompt=False)

    @property
    def plan(self) -> CapPlan | None:
        return self._plan

    def run(self, jobs: Sequence[Job], sink: StepSink, on_end: Callable[[Job], None] | None = None) -> None:
        """One batch; ``on_end(job)`` is called as each job ends (the scheduler resolves its future then,
        so a short reply does not wait for the batch's longest)."""
        rows = _Rows(self, list(jobs), sink, on_end)
        with self._model_lock:
            outs = generate(self.lm, [j.messages for j in jobs], [j.options for j in jobs], axis=self.v,
                            monitor_layer=self.layer, capping=self._plan, cap_rows=rows.active, streamer=rows)
        for job, g in zip(jobs, outs):  # the same values the rows set as they ended
            job.token_ids, job.text, job.finish_reason = g.token_ids, g.text, g.finish_reason

    def submit(self, job: Job, sink: StepSink) -> Future:
        with self._start_lock:
            if self._scheduler is None:
                self._scheduler = Scheduler(self, self.max_batch, self.max_wait_s)
        return self._scheduler.submit(job, sink)

    def score_conversation(self, messages: list[dict]) -> list:
        with self._model_lock:
            return score_conversation(self.lm, messages, self.v, self.layer)

    def close(self, timeout: float = 30.0) -> None:
        if self._scheduler is not None:
            self._scheduler.close(timeout)


class _Rows:
    """The streamer of one batch (:class:`probes.generation.TokenStreamer`): tensors per row -> token events
    per job. ``active`` is the batch's capping mask that generation reads before each step: a job whose
    ``capped`` flag the engine set during a step is capped from its next token on."""

    def __init__(self, backend: HFBackend, jobs: list[Job], sink: StepSink,
                 on_end: Callable[[Job], None] | None = None):
        self.jobs, self.sink, self.on_end, self.tokenizer = jobs, sink, on_end, backend.lm.tokenizer
        self.can_cap = backend.capping is not None
        self.light = backend.capping is not None and backend.capping.light_taus is not None
        self.active = self._tiers()
        self.detok = [Detokenizer(backend.lm.tokenizer) for _ in jobs]
        self.ended = [False] * len(jobs)

    def put(self, step, tokens, scores, content, pre_scores):
        events, ended = [], []
        for k, job in enumerate(self.jobs):
            if self.ended[k]:
                continue
            d = self.detok[k]
            if not bool(content[k]):  # its end-of-turn token: the reply is complete
                ended.append(self._end(k, "stop"))
                continue
            piece = d.push(int(tokens[k]))
            events.append((job, TokenEvent(int(tokens[k]), piece, float(scores[k]), float(pre_scores[k]),
                                           bool(self.active[k] > 0))))
            if len(d.ids) >= job.options.max_new_tokens:  # cut at its length: complete too
                ended.append(self._end(k, "length"))
        self.sink.step(events, ended)
        if self.on_end is not None:
            for job in ended:
                self.on_end(job)
        torch.maximum(self.active, self._tiers(), out=self.active)  # in place: generation holds this tensor

    def _tiers(self) -> torch.Tensor:
        """Each job's capping tier: strong once flagged, light under policy cap where the config has one."""
        return torch.tensor([STRONG if j.capped and self.can_cap else LIGHT if j.light and self.light else 0
                             for j in self.jobs], dtype=torch.long)

    def _end(self, k: int, reason: str) -> Job:
        job, ids = self.jobs[k], list(self.detok[k].ids)
        self.ended[k] = True
        job.token_ids, job.text, job.finish_reason = ids, self.tokenizer.decode(ids, skip_special_tokens=True), reason
        return job

    def end(self):
        pass


class Scheduler:
    """Jobs from any thread gathered into batches of up to ``max_batch`` (waiting ``max_wait_s`` for
    more), run one batch at a time by one worker thread; each submitter gets a future."""

    def __init__(self, backend: HFBackend, max_batch: int = 8, max_wait_s: float = 0.02):
        self.backend, self.max_batch, self.max_wait_s = backend, max_batch, max_wait_s
        self._q: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="axiswatch-hf-scheduler", daemon=True)
        self._thread.start()

    def submit(self, job: Job, sink: StepSink) -> Future:
        if self._stop.is_set():
            raise RuntimeError("the hf backend is closed")
        fut: Future = Future()
        self._q.put((job, sink, fut))
        return fut

    def close(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._q.put(None)
        self._thread.join(timeout)

    def _take(self) -> list[tuple[Job, StepSink, Future]]:
        first = self._q.get()
        if first is None:
            return []
        items = [first]
        try:
            while len(items) < self.max_batch:
                nxt = self._q.get(timeout=self.max_wait_s)
                if nxt is None:
                    self._stop.set()
                    break
                items.append(nxt)
        except queue.Empty:
            pass
        return items

    def _loop(self) -> None:
        while not (self._stop.is_set() and self._q.empty()):
            items = self._take()
            by_sink: dict[int, list] = {}
            for it in items:  # one batch per sink (in practice one engine)
                by_sink.setdefault(id(it[1]), []).append(it)
            for group in by_sink.values():
                self._run(group)

    def _run(self, group: list[tuple[Job, StepSink, Future]]) -> None:
        futs = {id(j): f for j, _, f in group}
        try:
            self.backend.run([j for j, _, _ in group], group[0][1], on_end=lambda j: futs[id(j)].set_result(None))
        except Exception as e:  # noqa: BLE001 - every error goes to the callers still waiting
            for f in futs.values():
                if not f.done():
                    f.set_exception(e)
            return
        for f in futs.values():
            if not f.done():
                f.set_result(None)
