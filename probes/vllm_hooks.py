"""Per-token scores and per-request capping inside vLLM's model runner (the worker side).

vLLM runs one forward pass per engine step over the flattened tokens of every scheduled request.
Each step, :func:`runner_rows` reads from the V1 model runner which rows belong to which request
(``input_batch.req_ids`` with ``query_start_loc``), which requests produce a token at this step (a
partial prefill chunk does not: ``discard_request_mask``) and each request's key (our own id, sent
in ``SamplingParams.extra_args[KEY]``). :class:`VLLMMonitor`'s hooks (installed through
:func:`probes.hooks.layer_hooks` with ``residual=True``: vLLM's blocks return ``(hidden, residual)``)
then score the last row of every request that produces a token, on the residual stream after the
monitor layer, before and after the monitor layer's own cap (the same convention as
:func:`probes.generation.generate`), and floor the projection at the capping layers on every row of
the requests whose key is in ``capped``. Nothing here imports vLLM: it reads the runner's attributes.
Hook functions never do I/O; :meth:`VLLMMonitor.take` hands the step's scores over.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from probes.generation import CapPlan
from probes.ops import cap, project

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
    if capping is None or min(capping.layers) >= monitor_layer:
        return capping, None
    return None, (f"the capping config {capping.id} (layers {capping.layers[0]}-{capping.layers[-1]}) starts below "
                  f"the monitor layer {monitor_layer}, and the vLLM backend has no uncapped twin to take the "
                  f"pre-cap score from: use the hf backend to cap, or a capping config whose window starts at or "
                  f"above layer {monitor_layer} (calibrate-capping --starts)")


class VLLMMonitor:
    """The monitor's hooks for one vLLM model: :meth:`hooks` for :func:`probes.hooks.layer_hooks`."""

    def __init__(self, axis_unit: torch.Tensor, monitor_layer: int, capping: CapPlan | None,
                 rows: Callable[[], StepRows | None]):
        if capping is not None and min(capping.layers) < monitor_layer:
            raise ValueError(f"capping at layers {list(capping.layers)} starts below the monitor layer "
                             f"{monitor_layer}: the vLLM backend has no uncapped twin to take the pre-cap score "
                             "from; use the hf backend or a capping window at or above the monitor layer")
        self.v, self.layer, self.capping, self.rows = axis_unit.float(), monitor_layer, capping, rows
        self.capped: set[str] = set()  # keys capped from the next step on (set between steps)
        self._step: StepRows | None = None
        self._pre: torch.Tensor | None = None
        self._post: torch.Tensor | None = None
        self._scored: list[str] = []
        self._first = min([monitor_layer, *(capping.layers if capping is not None else ())])

    def hooks(self) -> dict[int, list]:
        fns: dict[int, list] = {}

        def add(layer, fn):
            fns.setdefault(layer, []).append(fn)

        add(self._first, self._begin)
        add(self.layer, self._score_pre)
        if self.capping is not None:
            for k, layer in enumerate(self.capping.layers):
                add(layer, lambda h, k=k: self._cap(h, k))
            if self.layer in self.capping.layers:
                add(self.layer, self._score_post)
        return fns

    def take(self) -> dict[str, tuple[float, float]]:
        """The last step's scores: key -> (score, pre-cap score), for the requests that produced a token."""
        if self._pre is None:
            return {}
        pre = self._pre.cpu().tolist()  # the step's one host transfer
        post = self._post.cpu().tolist() if self._post is not None else pre
        out = dict(zip(self._scored, zip(post, pre)))
        self._pre = self._post = None
        return out

    # ---------------------------------------------------------------- hook functions (no I/O)
    def _begin(self, h: torch.Tensor) -> None:
        """At the first hooked block of a forward pass: this step's rows (None on vLLM's dummy runs)."""
        self._step = self.rows()

    def _last_rows(self) -> torch.Tensor | None:
        st = self._step
        if st is None:
            return None
        idx = [st.starts[i + 1] - 1 for i, key in enumerate(st.keys)
               if key is not None and st.sampled[i] and st.starts[i + 1] > st.starts[i]]
        self._scored = [key for i, key in enumerate(st.keys)
                        if key is not None and st.sampled[i] and st.starts[i + 1] > st.starts[i]]
        return torch.tensor(idx, dtype=torch.long) if idx else None

    def _score_pre(self, h: torch.Tensor) -> None:
        idx = self._last_rows()
        if idx is None:
            return None
        self._pre = project(h[idx.to(h.device)], self.v.to(h.device))
        self._post = None
        return None

    def _score_post(self, h: torch.Tensor) -> None:
        idx = self._last_rows()
        if idx is not None:
            self._post = project(h[idx.to(h.device)], self.v.to(h.device))
        return None

    def _cap(self, h: torch.Tensor, k: int) -> torch.Tensor | None:
        st, plan = self._step, self.capping
        if st is None or plan is None or not self.capped:
            return None
        tau = torch.full((h.shape[0],), float("-inf"), device=h.device)
        hit = False
        for i, key in enumerate(st.keys):
            if key is not None and key in self.capped:
                tau[st.starts[i]:st.starts[i + 1]] = float(plan.taus[k])
                hit = True
        if not hit:
            return None
        return cap(h, plan.vectors[k].to(h.device).float(), tau)
