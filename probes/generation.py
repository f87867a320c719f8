"""Batched generation with per-token Assistant-Axis scores from the same forward pass.

Convention (used everywhere in axiswatch): the score of a generated token is
the projection, at the monitor layer, of the residual stream at the position
whose forward pass produced that token (the last input position of that
decoding step). Scores therefore arrive together with their token, come from
no extra forward pass, and equal ``hidden_states[L + 1][:, p - 1]`` of a
teacher-forced pass over the finished text, for a token at position ``p``.
Hidden states and scores stay on the device during a step and leave it once
per step, together with the sampled tokens (never one host sync per layer).

Each step goes to a :class:`TokenStreamer` (``put``/``end``, as transformers' streamers), which
does no more than take it. Capping is steered by the caller through per-row tiers: the ``cap_rows``
tensor (0 none, light, strong) is read before every step, so a row the caller raises there (from a
streamer's ``put``, say) is capped at its new tier from its next token on.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

import torch

from probes.hooks import layer_hooks
from probes.models import LoadedModel, format_chat
from probes.ops import cap, project, steer

LIGHT, STRONG = 1, 2  # capping tiers of a row (0: none)


@dataclass(frozen=True)
class CapPlan:
    """Capping at several layers: unit vectors ``[k, d]`` and floors ``[k]`` (the strong tier).

    ``light``: the light tier's floors ``[k]`` (``-inf`` where it sets none), or None for a one-tier plan.
    A row at tier :data:`LIGHT` is floored at ``light``, one at :data:`STRONG` at ``max(taus, light)``.
    ``generated_only``: floor only the positions that produce generated tokens (a prompt's last position
    and each decoding step), not the rest of the prompt."""

    layers: tuple[int, ...]
    vectors: torch.Tensor
    taus: torch.Tensor
    light: torch.Tensor | None = None
    generated_only: bool = False

    def tiers(self) -> torch.Tensor:
        """Per layer, the floor at tier 0, light and strong: ``[k, 3]`` (``-inf`` for no floor)."""
        strong = self.taus.float()
        light = self.light.float() if self.light is not None else torch.full_like(strong, float("-inf"))
        return torch.stack([torch.full_like(strong, float("-inf")), light, torch.maximum(strong, light)], -1)


def cap_plan(capping) -> CapPlan | None:
    """The plan of a :class:`~probes.artifacts.CappingConfig` (None for None)."""
    if capping is None:
        return None
    light = capping.light_floors()
    return CapPlan(tuple(capping.layers), capping.vectors, torch.tensor(capping.taus),
                   torch.tensor(light) if light is not None else None, capping.tokens == "generated")


@dataclass(frozen=True)
class SteerPlan:
    layer: int
    vector: torch.Tensor  # unit [d]
    coeff: float  # absolute coefficient (already scaled by the mean norm if asked)


@dataclass
class GenerationOptions:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None


@dataclass
class Generated:
    """One finished sequence: content tokens only (no end-of-turn marker)."""

    token_ids: list[int]
    tokens: list[str]
    text: str
    scores: list[float]
    pre_cap_scores: list[float]
    capped: bool
    finish_reason: str  # "stop" | "length"
    cap_flags: list[bool] = field(default_factory=list)  # per content token: was capping active
    cap_tiers: list[int] = field(default_factory=list)  # per content token: its capping tier (0, LIGHT, STRONG)


class TokenStreamer(Protocol):
    """Takes each decoding step of :func:`generate` (transformers' streamer pattern); it returns nothing:
    capping is switched on through ``generate``'s ``cap_rows`` mask."""

    def put(self, step: int, tokens: torch.Tensor, scores: torch.Tensor, content: torch.Tensor,
            pre_scores: torch.Tensor) -> None:
        """``tokens [b]`` long, ``scores [b]`` float, ``content [b]`` bool, ``pre_scores [b]`` float (on CPU):
        the monitor layer's score before capping acted on it (equal to ``scores`` where it did not)."""

    def end(self) -> None: ...


def stop_token_ids(lm: LoadedModel) -> set[int]:
    """The tokens that end a reply: the model's end-of-sequence ids and the end-of-turn markers its
    vocabulary holds (read once per model: the vocabulary is large)."""
    return set(lm.stop_ids)


class Detokenizer:
    """The text each new token of one sequence adds, linear in the sequence's length: every token
    decodes a short window (the tokens since the last emitted piece, with the piece before them as
    context, so tokenizers that drop a leading space at a decode boundary still come out right), never
    the whole reply. A token that ends in half a multi-byte character adds "" and its text comes with
    the token that completes it. The one detokeniser: stored tokens, the live tail and streaming."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self._start = self._read = 0  # window: context from _start, emitted up to _read

    def push(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        prefix = self.tokenizer.decode(self.ids[self._start:self._read], skip_special_tokens=True)
        text = self.tokenizer.decode(self.ids[self._start:], skip_special_tokens=True)
        if len(text) <= len(prefix) or text.endswith("\ufffd"):  # nothing yet, or half a character
            return ""
        self._start, self._read = self._read, len(self.ids)
        return text[len(prefix):]


def token_pieces(tokenizer, ids: list[int]) -> list[str]:
    """Per-token text pieces (:class:`Detokenizer`); they concatenate to ``decode(ids)``."""
    d = Detokenizer(tokenizer)
    return [d.push(i) for i in ids]


def _cache_kwarg(model) -> str:
    """transformers 5.x renamed ``past_key_values`` to ``cache``; accept both."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _sample_rows(logits: torch.Tensor, opts: list[GenerationOptions],
                 gens: list[torch.Generator | None]) -> torch.Tensor:
    """The next token of every row ``[b]`` from ``logits [b, V]``, each row with its own options."""
    out = logits.argmax(-1)
    for i, o in enumerate(opts):
        if o.temperature > 0:
            out[i] = _sample(logits[i:i + 1], o, gens[i])[0]
    return out


def _sample(logits: torch.Tensor, opts: GenerationOptions, gen: torch.Generator | None) -> torch.Tensor:
    if opts.temperature <= 0:
        return logits.argmax(-1)
    # Shift by the row maximum and divide in float64: a tiny temperature (a subnormal float is
    # valid input) then sends every other logit to -inf, where float32 would round it to 0 and
    # divide 0 by 0, or overflow to inf - inf; either way nan, and multinomial raises.
    logits = logits.double()
    probs = torch.softmax((logits - logits.amax(-1, keepdim=True)) / opts.temperature, -1)
    if opts.top_p < 1.0:
        sorted_p, idx = probs.sort(-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < opts.top_p
        sorted_p = sorted_p * keep
        probs = torch.zeros_like(probs).scatter(-1, idx, sorted_p)
    return torch.multinomial(probs, 1, generator=gen).squeeze(-1)


def encode_prompts(lm: LoadedModel, prompts: Sequence[list[dict] | str]) -> dict:
    """``input_ids`` and ``attention_mask`` ``[batch, longest]``, left-padded with the pad token.

    Padded here, not by the tokenizer: a fast tokenizer keeps its padding setting in shared state, so a
    ``padding=True`` call racing an unpadded one in another thread (the API counting a prompt's tokens
    while a batch is encoded) can come back ragged. Every call here leaves that state at "no padding"."""
    texts = [p if isinstance(p, str) else format_chat(lm.tokenizer, p) for p in prompts]
    rows = [lm.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    width, pad = max(len(r) for r in rows), lm.tokenizer.pad_token_id
    ids = torch.full((len(rows), width), pad if pad is not None else 0, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r):] = 1
    return {"input_ids": ids.to(lm.device), "attention_mask": mask.to(lm.device)}


class _Scorer:
    """The hook functions of one :func:`generate` call and the device tensors they share: each step,
    the monitor layer's score of every row's last position, before and after that layer's own cap,
    and the capping floor on the rows in ``active``. ``[n]`` tensors: ``n`` rows (twins included)."""

    def __init__(self, n: int, dev: torch.device, axis: torch.Tensor | None, layer: int | None,
                 capping: CapPlan | None, steering: SteerPlan | None):
        self.pre, self.post = torch.zeros(n, device=dev), torch.zeros(n, device=dev)
        self.active = torch.zeros(n, dtype=torch.long, device=dev)  # each row's capping tier at this step
        self.v = axis.to(dev).float() if axis is not None else None
        self.layer, self.capping, self.steering = layer, capping, steering
        if capping is not None:
            self.vecs, self.floors = capping.vectors.to(dev).float(), capping.tiers().to(dev)  # [k, d], [k, 3]

    def hooks(self) -> dict[int, list]:
        fns: dict[int, list] = {}
        scored = self.layer if self.v is not None else None  # the monitor layer, where there is an axis
        if self.steering is not None:
            fns.setdefault(self.steering.layer, []).append(self._steer)
        if scored is not None:
            fns.setdefault(scored, []).append(self._score_pre)
        if self.capping is not None:
            for k, layer in enumerate(self.capping.layers):
                fns.setdefault(layer, []).append(partial(self._cap, k))
            if scored is not None and scored in self.capping.layers:
                fns.setdefault(scored, []).append(self._score_post)
        return fns

    def _steer(self, h: torch.Tensor) -> torch.Tensor:
        st = self.steering
        assert st is not None
        return steer(h, st.vector.to(h.device), st.coeff)

    def _score_pre(self, h: torch.Tensor) -> None:
        assert self.v is not None
        s = project(h[:, -1], self.v)
        self.pre.copy_(s)
        self.post.copy_(s)

    def _score_post(self, h: torch.Tensor) -> None:
        assert self.v is not None
        self.post.copy_(project(h[:, -1], self.v))

    def _cap(self, k: int, h: torch.Tensor) -> torch.Tensor:
        tau = self.floors[k][self.active]  # [n]: this row's tier's floor at this layer
        assert self.capping is not None
        if self.capping.generated_only and h.dim() == 3 and h.shape[1] > 1:  # the prompt: its last position only
            return torch.cat([h[:, :-1], cap(h[:, -1:], self.vecs[k], tau.view(-1, 1))], 1)
        return cap(h, self.vecs[k], tau.view(-1, *([1] * (h.dim() - 2))))


class _Decoding:
    """One batch's decoding state on the device: the next inputs, attention mask, positions and KV cache,
    and which rows have finished (by an end-of-turn token: ``stopped``, or by their length)."""

    def __init__(self, lm: LoadedModel, prompts: list, limits: list[int]):
        enc = encode_prompts(lm, prompts)
        self.lm, self.ids, self.attn = lm, enc["input_ids"], enc["attention_mask"]
        dev = self.ids.device
        self.positions = (self.attn.cumsum(-1) - 1).clamp_min(0)
        self.stops = torch.tensor(sorted(stop_token_ids(lm)), device=dev)
        self.limits = torch.tensor(limits, device=dev)
        self.finished = self.limits <= 0  # a row asked for no tokens has ended before the first step
        self.stopped = torch.zeros(len(limits), dtype=torch.bool, device=dev)
        self.past, self.cache_kw = None, _cache_kwarg(lm.model)

    def forward(self) -> torch.Tensor:
        """One step over every row; the last position's logits ``[n, V]``."""
        out = self.lm.model(input_ids=self.ids, attention_mask=self.attn, position_ids=self.positions,
                            use_cache=True, **{self.cache_kw: self.past})
        self.past = getattr(out, self.cache_kw)
        return out.logits[:, -1]

    def advance(self, step: int, nxt: torch.Tensor) -> torch.Tensor:
        """Take this step's tokens ``[n]``; the rows where they are content. Rows that ended feed padding
        (not attended) from here on."""
        is_stop = torch.isin(nxt, self.stops)
        content = ~self.finished & ~is_stop
        self.stopped |= ~self.finished & is_stop
        self.finished |= is_stop | (step + 1 >= self.limits)
        self.ids = torch.where(content, nxt, torch.full_like(nxt, self.lm.tokenizer.pad_token_id)).unsqueeze(-1)
        self.attn = torch.cat([self.attn, content.long().unsqueeze(-1)], -1)
        self.positions = self.positions[:, -1:] + 1
        return content


def _results(lm: LoadedModel, trace: list[torch.Tensor], stopped: list[bool], scored: bool,
             capping: bool) -> list[Generated]:
    """The finished sequences from the per-step host rows ``[5, b]``: token, score, pre-cap score,
    content, capping tier."""
    b = len(stopped)
    steps = torch.stack(trace, -1) if trace else torch.zeros(5, b, 0)  # [5, b, T]
    toks, sc, pr, cont, tier = steps[0].long(), steps[1], steps[2], steps[3].bool(), steps[4].long()
    capm = tier > 0
    out = []
    for i in range(b):
        m = cont[i]
        ids = toks[i][m].tolist()
        out.append(Generated(
            token_ids=ids, tokens=token_pieces(lm.tokenizer, ids), text=lm.tokenizer.decode(ids, skip_special_tokens=True),
            scores=sc[i][m].tolist() if scored else [], pre_cap_scores=pr[i][m].tolist() if scored else [],
            capped=bool(capm[i][m].any()) if capping else False,
            cap_flags=capm[i][m].tolist() if capping else [False] * len(ids),
            cap_tiers=tier[i][m].tolist() if capping else [0] * len(ids),
            finish_reason="stop" if stopped[i] else "length"))
    return out


def _tiers(cap_rows: torch.Tensor | None, b: int, dev: torch.device) -> torch.Tensor:
    if cap_rows is None:
        return torch.full((b,), STRONG, dtype=torch.long, device=dev)
    rows = cap_rows.to(dev)
    return rows.long() * STRONG if rows.dtype == torch.bool else rows.long()


@torch.no_grad()
def generate(
    lm: LoadedModel,
    prompts: Sequence[list[dict] | str],
    opts: GenerationOptions | Sequence[GenerationOptions] | None = None,
    *,
    axis: torch.Tensor | None = None,
    monitor_layer: int | None = None,
    capping: CapPlan | None = None,
    cap_rows: torch.Tensor | None = None,
    steering: SteerPlan | None = None,
    streamer: TokenStreamer | None = None,
) -> list[Generated]:
    """Generate for a batch of chats (message lists or pre-rendered strings).

    ``opts``: one options object for every row, or one per row (each row stops at its own
    ``max_new_tokens`` and samples with its own temperature, top-p and seed). ``axis`` is the unit
    axis ``[d]`` scored at ``monitor_layer``. ``capping`` applies to the rows set in ``cap_rows``, read
    before every step: a ``[b]`` tensor of tiers (0 none, :data:`LIGHT`, :data:`STRONG`; a bool tensor
    means strong where set); a row the caller raises while generating is capped at its new tier from its
    next token on, and a row's tier never falls; every row strong when None. ``streamer`` gets every step.

    Pre-cap scores: where every capping layer is at or above the monitor layer, the monitor layer's
    score before its own cap is the uncapped model's score. Where capping acts below the monitor
    layer, one forward pass holds no uncapped copy of it: each row then gets an uncapped twin row fed
    the same tokens (the batch doubles), and the twin's score is the row's pre-cap score, the score the
    uncapped model gives the same text (what a teacher-forced audit of the reply would find).
    """
    b = len(prompts)
    row_opts = list(opts) if isinstance(opts, Sequence) else [opts or GenerationOptions()] * b
    if len(row_opts) != b:
        raise ValueError(f"{len(row_opts)} options for {b} prompts")
    twin = capping is not None and axis is not None and monitor_layer is not None and min(capping.layers) < monitor_layer
    copies = 2 if twin else 1  # rows in the batch: b, then b uncapped twins
    dec = _Decoding(lm, list(prompts) * copies, [o.max_new_tokens for o in row_opts] * copies)
    dev = dec.ids.device
    scorer = _Scorer(b * copies, dev, axis, monitor_layer, capping, steering)
    gens = [torch.Generator(device=dev).manual_seed(o.seed) if o.seed is not None else None for o in row_opts]
    trace: list[torch.Tensor] = []
    with layer_hooks(lm.model, scorer.hooks(), lm.layers_path):
        for step in range(max((o.max_new_tokens for o in row_opts), default=0)):
            if capping is not None:  # the caller's tiers, read before every step (twins are never capped)
                want = _tiers(cap_rows, b, dev)
                scorer.active[:b] = torch.maximum(scorer.active[:b], want)
            logits = dec.forward()
            nxt = _sample_rows(logits[:b], row_opts, gens)
            if twin:  # a twin reads its row's token, whatever it would have said itself
                nxt = torch.cat([nxt, nxt])
            on = scorer.active[:b].float()  # this step's token's capping tier
            content = dec.advance(step, nxt)
            # one host transfer per step: tokens, scores, masks together
            host = torch.stack([nxt[:b].float(), scorer.post[:b], scorer.pre[b:] if twin else scorer.pre[:b],
                                content[:b].float(), on]).cpu()
            trace.append(host)
            if streamer is not None:
                streamer.put(step, host[0].long(), host[1], host[3].bool(), host[2])
            if bool(dec.finished.all()):
                break
    if streamer is not None:
        streamer.end()
    return _results(lm, trace, dec.stopped[:b].tolist(), axis is not None, capping is not None)
