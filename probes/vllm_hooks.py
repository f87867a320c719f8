"""Per-token scores and per-request capping inside vLLM's model runner (the worker side).

vLLM runs one forward pass per engine step over the flattened tokens of every scheduled request.
Each step, :func:`runner_rows` reads from the V1 model runner which rows belong to which request
(``input_batch.req_ids`` with ``query_start_loc``), which requests produce a token at this step (a
partial prefill chunk does not: ``discard_request_mask``) and each request's key (our own id, sent
in ``SamplingParams.extra_args[KEY]``). :class:`VLLMMonitor` puts the graph-safe op
(:mod:`probes.graph_op`, through :func:`probes.hooks.watched_layers`) into the model's decoder blocks where
vLLM loads it, before compilation and graph capture, so it runs compiled, under CUDA graphs and eager alike:
it scores every row on the residual stream after the monitor layer, before and after the monitor layer's
own cap (the same convention as :func:`probes.generation.generate`), and floors the projection at the
capping layers on the rows whose cap mask is 1. Between steps, host code (:func:`attach`: the runner's
``_model_forward``, after the runner has laid out the step's rows) writes the mask of the requests whose
key is in ``capped`` and notes which rows produce a token; :meth:`VLLMMonitor.take` reads their scores
after the step. Nothing here imports vLLM: it reads the runner's attributes.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass

import torch

from probes.generation import CapPlan
from probes.graph_op import OP_VERSION, WatchState
from probes.hooks import watched_layers

KEY = "axiswatch_key"  # SamplingParams.extra_args entry that names a request for the hooks


@dataclass(frozen=True)
class StepRows:
    """One forward pass: per scheduled request its key (None: not ours), its rows
    ``starts[i]:starts[i + 1]`` of the flattened batch, and whether its last row produces a token."""

    keys: list[str | None]
    starts: list[int]
    sampled: list[bool]


def runner_rows(runner, by_request_id: bool = False) -> StepRows | None:
    """The current step's rows, read from vLLM's V1 GPU/CPU model runner (None: nothing scheduled).

    A request's key is ``extra_args[KEY]`` (the backend names its own requests), or with
    ``by_request_id`` the runner's request id (the plugin watches every request)."""
    batch = runner.input_batch
    n = batch.num_reqs
    if n == 0:
        return None
    starts = [int(x) for x in runner.query_start_loc.np[: n + 1]]
    discard = runner.discard_request_mask.np[:n]
    keys = []
    for rid in batch.req_ids[:n]:
        if by_request_id:
            keys.append(rid)
            continue
        state = runner.requests.get(rid)
        params = getattr(state, "sampling_params", None)
        extra = (getattr(params, "extra_args", None) or {}) if params is not None else {}
        keys.append(extra.get(KEY))
    return StepRows(keys, starts, [not bool(d) for d in discard])


def vllm_capping(capping, monitor_layer: int):
    """The capping config the vLLM hooks can run, and why not where they cannot: ``(capping, None)``, or
    ``(None, reason)`` for a window that starts below the monitor layer. There the capped forward pass holds no
    uncapped monitor-layer state to take a capped token's pre-cap score from (the ``hf`` backend runs an
    uncapped twin of each capped row; the vLLM hooks have none), so the vLLM backend and plugin monitor and
    alert without it and refuse policy ``cap`` with this reason."""
    if capping is None:
        return None, None
    why = []
    if min(capping.layers) < monitor_layer:
        why.append(f"the capping config {capping.id} (layers {capping.layers[0]}-{capping.layers[-1]}) starts below "
                   f"the monitor layer {monitor_layer}, and the vLLM backend has no uncapped twin to take the "
                   f"pre-cap score from")
    if capping.tokens != "all" or (capping.light_taus is not None and capping.conditional):
        why.append(f"the capping config {capping.id} has two tiers (a light floor before the detector flags a "
                   "session, a strong one after) or floors only generated tokens, and the vLLM hooks run one tier "
                   "on every position")
    if not why:
        return capping, None
    return None, ("; ".join(why) + f": use the hf backend to cap, or a one-tier config whose window starts at or "
                  f"above layer {monitor_layer} (calibrate-capping --starts)")


class VLLMMonitor:
    """The monitor inside one vLLM model: the graph-safe op at the monitor and capping layers
    (:func:`install`), the per-row cap mask written before each step (:meth:`begin`), and the step's
    scores read after it (:meth:`take`).

    ``rows``: the most rows a forward pass can have (the runner's token budget, its largest graph).
    ``broadcast``: under tensor parallelism, a collective that sends rank 0's cap mask to every rank (each
    rank calls it every step, rank 0's ``capped`` is the one that counts); None on one rank. ``rank``: this
    process' tensor-parallel rank."""

    def __init__(self, axis_unit: torch.Tensor, monitor_layer: int, capping: CapPlan | None, rows: int,
                 device: torch.device | str = "cpu", broadcast: Callable[[torch.Tensor], None] | None = None,
                 rank: int = 0):
        if capping is not None and min(capping.layers) < monitor_layer:
            raise ValueError(f"capping at layers {list(capping.layers)} starts below the monitor layer "
                             f"{monitor_layer}: the vLLM backend has no uncapped twin to take the pre-cap score "
                             "from; use the hf backend or a capping window at or above the monitor layer")
        self.layer, self.capping, self.broadcast, self.rank = monitor_layer, capping, broadcast, rank
        self.state = WatchState(axis_unit, capping.vectors if capping is not None else None,
                                capping.taus if capping is not None else None, rows, device)
        slots: dict[int, list[int]] = {monitor_layer: [-1, 0, -1]}
        for k, layer in enumerate(capping.layers if capping is not None else ()):
            slot = slots.setdefault(layer, [-1, -1, -1])
            slot[0] = k
            if layer == monitor_layer:
                slot[2] = 1  # the score after the monitor layer's own cap
        self.slots = {layer: (k, pre, post) for layer, (k, pre, post) in slots.items()}
        self._post = capping is not None and monitor_layer in capping.layers
        self.capped: set[str] = set()  # keys capped from the next step on (set between steps)
        self._staging = torch.zeros(rows, pin_memory=torch.device(device).type == "cuda")
        self._dirty = False  # the device mask holds ones from an earlier step
        self._scored: list[str] = []
        self._idx: torch.Tensor | None = None

    def signature(self) -> str:
        """What the compiled graph depends on (vLLM's compile-cache hash takes it)."""
        cap = (None if self.capping is None else list(self.capping.layers))
        return f"axiswatch-op{OP_VERSION}:layer{self.layer}:cap{cap}:rows{self.state.rows}"

    def install(self, model: torch.nn.Module):
        """The op into ``model``'s decoder blocks (a context manager; before vLLM compiles the model)."""
        return watched_layers(model, self.state, self.slots)

    # ---------------------------------------------------------------- host side, between steps
    def begin(self, step: StepRows | None) -> None:
        """Before a step's forward pass, after the runner laid out its rows (None: a dummy run): which rows
        are scored, and the cap mask of this step's rows."""
        self._scored, idx = [], []
        if step is not None:
            for i, key in enumerate(step.keys):
                if key is not None and step.sampled[i] and step.starts[i + 1] > step.starts[i]:
                    self._scored.append(key)
                    idx.append(step.starts[i + 1] - 1)
        self._idx = torch.tensor(idx, dtype=torch.long, device=self.state.scores.device) if idx else None
        if self._idx is not None:  # a row the op did not write this step reads back NaN: no score, never a stale one
            self.state.scores.index_fill_(1, self._idx, float("nan"))
        if self.capping is None:
            return
        try:
            hit = self._fill(step)
        finally:  # every rank calls the collective every step, whatever happened here
            if self.broadcast is not None:
                self.state.mask.copy_(self._staging, non_blocking=True)
                self.broadcast(self.state.mask)
        if self.broadcast is None and (hit or self._dirty):
            self.state.mask.copy_(self._staging, non_blocking=True)
            self._dirty = hit

    def _fill(self, step: StepRows | None) -> bool:
        """The staging mask of this step's rows from ``capped`` (all zero on ranks other than 0 under tensor
        parallelism, and when nobody is capped); whether any row is capped."""
        hit = False
        if step is not None and self.capped and (self.broadcast is None or self.rank == 0):
            for i, key in enumerate(step.keys):
                if key is not None and key in self.capped:
                    if not hit:
                        self._staging.zero_()
                        hit = True
                    self._staging[step.starts[i]:step.starts[i + 1]] = 1.0
        if not hit and (self._dirty or self.broadcast is not None):
            self._staging.zero_()
        return hit

    def take(self) -> dict[str, tuple[float, float]]:
        """The last step's scores: key -> (score, pre-cap score), for the requests that produced a token and
        whose row the op scored."""
        if self._idx is None:
            return {}
        vals = self.state.scores.index_select(1, self._idx).cpu().tolist()  # the step's one host transfer
        pre = vals[0]
        post = vals[1] if self._post else pre
        self._idx = None
        # NaN: the op did not run on that row (a graph compiled without it): the caller says it has no score
        return {key: (s, p) for key, s, p in zip(self._scored, post, pre) if s == s and p == p}


def attach(runner, monitor: VLLMMonitor, rows: Callable[[], StepRows | None]) -> ExitStack:
    """``monitor`` into a V1 model runner whose model is loaded and not yet compiled: the op in its decoder
    blocks, :meth:`VLLMMonitor.begin` run by the runner's ``_model_forward`` (after ``_update_states`` and
    ``_prepare_inputs`` laid out this step's rows), and vLLM's compile-cache hash salted with the monitor's
    signature, so a graph compiled without the op (or with another layout) is never loaded. Closing the
    returned stack takes it all out again."""
    vc = runner.vllm_config
    extra = vc.additional_config
    if not isinstance(extra, dict):
        raise TypeError("vLLM's additional_config is not a dict: the compile cache cannot be salted")
    extra["axiswatch"] = monitor.signature()
    stack = ExitStack()
    stack.enter_context(monitor.install(runner.model))
    forward = runner._model_forward

    def _model_forward(*args, **kwargs):
        monitor.begin(rows())
        return forward(*args, **kwargs)

    runner._model_forward = _model_forward
    stack.callback(lambda: runner.__dict__.pop("_model_forward", None))
    return stack


def max_rows(runner) -> int:
    """The most rows one forward pass of this runner can have: its token budget, or its largest graph."""
    sizes = list(getattr(runner.vllm_config.compilation_config, "cudagraph_capture_sizes", None) or [])
    return max([int(runner.max_num_tokens), *sizes])


# ---------------------------------------------------------------------- the vllm backend's tensor-parallel workers
def write_spec(path, axis_unit: torch.Tensor, monitor_layer: int, capping: CapPlan | None) -> None:
    """What a worker process needs to build the backend's :class:`VLLMMonitor` (tensors and ints only)."""
    spec = {"axis": axis_unit.detach().float().cpu(), "layer": int(monitor_layer)}
    if capping is not None:
        spec |= {"cap_layers": torch.tensor(capping.layers), "cap_vectors": capping.vectors.detach().float().cpu(),
                 "cap_taus": torch.as_tensor(capping.taus).float().cpu()}
    torch.save(spec, path)


def read_spec(path) -> tuple[torch.Tensor, int, CapPlan | None]:
    spec = torch.load(path, weights_only=True)
    plan = None
    if "cap_layers" in spec:
        plan = CapPlan(tuple(int(x) for x in spec["cap_layers"]), spec["cap_vectors"], spec["cap_taus"])
    return spec["axis"], int(spec["layer"]), plan


def _monitor_of(worker) -> VLLMMonitor:
    runner = getattr(worker, "model_runner", None) or worker.worker.model_runner
    held = getattr(runner, "_axiswatch", None)
    if held is None:
        raise RuntimeError("no axiswatch monitor in this vLLM worker: axiswatch's vllm.general_plugins entry "
                           "point did not load here (is axiswatch installed in the workers' environment?)")
    return getattr(held, "monitor", held)


def rpc_set_capped(worker, keys: list[str]) -> None:
    """``collective_rpc`` target in the backend's workers: the requests capped from the next step on. Every
    rank gets the call; only rank 0 keeps the set, and its broadcast hands the mask to the others."""
    monitor = _monitor_of(worker)
    monitor.capped = set(keys) if monitor.rank == 0 else set()


def rpc_take(worker) -> dict[str, tuple[float, float]]:
    """``collective_rpc`` target: the last step's scores (the backend reads rank 0's)."""
    return _monitor_of(worker).take()
