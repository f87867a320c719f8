"""Batched generation with per-token Assistant-Axis scores from the same forward pass.

Convention (used everywhere in axiswatch): the score of a generated token is
the projection, at the monitor layer, of the residual stream at the position
whose forward pass produced that token (the last input position of that
decoding step). Scores therefore arrive together with their token, come from
no extra forward pass, and equal ``hidden_states[L + 1][:, p - 1]`` of a
teacher-forced pass over the finished text, for a token at position ``p``.
Hidden states and scores stay on the device during a step and leave it once
per step, together with the sampled tokens (never one host sync per layer).

``collect_means`` (used by compute-axis) averages, per layer, the residual
stream over the content tokens' *own* positions, as the paper does: position
``p`` is processed in the step after token ``p`` is sampled, so the sums lag
one step, and a sequence cut by ``max_new_tokens`` costs one extra pass.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from probes.hooks import layer_hooks
from probes.models import LoadedModel, format_chat
from probes.ops import cap, project, steer


@dataclass(frozen=True)
class CapPlan:
    """Capping at several layers: unit vectors ``[k, d]`` and floors ``[k]``."""

    layers: tuple[int, ...]
    vectors: torch.Tensor
    taus: torch.Tensor


def cap_plan(capping) -> CapPlan | None:
    """The plan of a :class:`~probes.artifacts.CappingConfig` (None for None)."""
    if capping is None:
        return None
    return CapPlan(tuple(capping.layers), capping.vectors, torch.tensor(capping.taus))


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
    layer_means: torch.Tensor | None = None  # [n_layers, d] mean over the content tokens' own positions
    layer_norms: torch.Tensor | None = None  # [n_layers] mean residual norm over the same positions


class StepSink(Protocol):
    """Receives each decoding step; may switch capping on for some rows."""

    def put(self, step: int, tokens: torch.Tensor, scores: torch.Tensor, content: torch.Tensor,
            pre_scores: torch.Tensor) -> torch.Tensor | None:
        """``tokens [b]`` long, ``scores [b]`` float, ``content [b]`` bool, ``pre_scores [b]`` float (on CPU):
        the monitor layer's score before capping acted on it (equal to ``scores`` where it did not).

        Return a bool ``[b]`` mask of rows to cap from the next token on, or None."""

    def end(self) -> None: ...


def stop_token_ids(lm: LoadedModel) -> set[int]:
    tok, ids = lm.tokenizer, set()
    for t in (tok.eos_token_id, getattr(lm.model.generation_config, "eos_token_id", None)):
        if isinstance(t, int):
            ids.add(t)
        elif isinstance(t, (list, tuple)):
            ids.update(int(x) for x in t)
    for s in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>"):
        i = tok.convert_tokens_to_ids(s) if s in tok.get_vocab() else None
        if isinstance(i, int):
            ids.add(i)
    return ids


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


def encode_prompts(lm: LoadedModel, prompts: list[list[dict] | str]) -> dict:
    texts = [p if isinstance(p, str) else format_chat(lm.tokenizer, p) for p in prompts]
    return lm.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(lm.device)


@torch.no_grad()
def generate(
    lm: LoadedModel,
    prompts: list[list[dict] | str],
    opts: GenerationOptions | Sequence[GenerationOptions] | None = None,
    *,
    axis: torch.Tensor | None = None,
    monitor_layer: int | None = None,
    capping: CapPlan | None = None,
    cap_rows: torch.Tensor | None = None,
    steering: SteerPlan | None = None,
    collect_means: bool = False,
    sink: StepSink | None = None,
) -> list[Generated]:
    """Generate for a batch of chats (message lists or pre-rendered strings).

    ``opts``: one options object for every row, or one per row (each row stops at its own
    ``max_new_tokens`` and samples with its own temperature, top-p and seed). ``axis`` is the unit
    axis ``[d]`` scored at ``monitor_layer``. ``capping`` applies to the rows in ``cap_rows`` (bool
    ``[b]``; all rows when None), and a ``sink`` may add rows while generating.

    Pre-cap scores: where every capping layer is at or above the monitor layer, the monitor layer's
    score before its own cap is the uncapped model's score. Where capping acts below the monitor
    layer, one forward pass holds no uncapped copy of it: each row then gets an uncapped twin row fed
    the same tokens (the batch doubles), and the twin's score is the row's pre-cap score, the score the
    uncapped model gives the same text (what a teacher-forced audit of the reply would find).
    """
    model, b = lm.model, len(prompts)
    row_opts = list(opts) if isinstance(opts, Sequence) else [opts or GenerationOptions()] * b
    if len(row_opts) != b:
        raise ValueError(f"{len(row_opts)} options for {b} prompts")
    twin = (capping is not None and axis is not None and monitor_layer is not None
            and min(capping.layers) < monitor_layer)
    if twin and collect_means:
        raise ValueError("collect_means with capping below the monitor layer is not supported")
    n = 2 * b if twin else b  # rows in the batch: b, then b uncapped twins
    enc = encode_prompts(lm, list(prompts) * (2 if twin else 1))
    input_ids, attn = enc["input_ids"], enc["attention_mask"]
    dev = input_ids.device
    stops = torch.tensor(sorted(stop_token_ids(lm)), device=dev)
    gens = [torch.Generator(device=dev).manual_seed(o.seed) if o.seed is not None else None for o in row_opts]
    limits = torch.tensor([o.max_new_tokens for o in row_opts] * (n // b if b else 1), device=dev)

    n_layers = lm.n_layers
    scores_now = torch.zeros(n, device=dev)
    pre_now = torch.zeros(n, device=dev)
    last_hidden: dict[int, torch.Tensor] = {}
    active = torch.zeros(n, dtype=torch.bool, device=dev)  # twins are never capped
    if capping is not None:
        active[:b] = (cap_rows.to(dev) if cap_rows is not None else True)

    fns: dict[int, list] = {}

    def add(layer, fn):
        fns.setdefault(layer, []).append(fn)

    if steering is not None:
        add(steering.layer, lambda h: steer(h, steering.vector.to(h.device), steering.coeff))
    if axis is not None and monitor_layer is not None:
        v = axis.to(dev).float()

        def score_pre(h):
            s = project(h[:, -1], v)
            pre_now.copy_(s)
            scores_now.copy_(s)

        add(monitor_layer, score_pre)
    if capping is not None:
        vecs, taus = capping.vectors.to(dev).float(), capping.taus.to(dev).float()
        for k, layer in enumerate(capping.layers):
            def cap_fn(h, k=k):
                tau = torch.where(active, taus[k], torch.tensor(float("-inf"), device=dev))
                return cap(h, vecs[k], tau.view(-1, *([1] * (h.dim() - 2))))

            add(layer, cap_fn)
        if axis is not None and monitor_layer in capping.layers:
            def score_post(h):
                scores_now.copy_(project(h[:, -1], v))

            add(monitor_layer, score_post)
    if collect_means:
        for layer in range(n_layers):
            def keep(h, layer=layer):
                last_hidden[layer] = h[:, -1].float()

            add(layer, keep)
        sums = torch.zeros(b, n_layers, lm.hidden_size, device=dev)
        norm_sums = torch.zeros(b, n_layers, device=dev)
        counts = torch.zeros(b, device=dev)

        def accumulate(mask: torch.Tensor) -> None:
            stacked = torch.stack([last_hidden[i] for i in range(n_layers)], 1)  # [b, L, d]
            sums.add_(stacked * mask.view(-1, 1, 1))
            norm_sums.add_(stacked.norm(dim=-1) * mask.view(-1, 1))
            counts.add_(mask)

    finished = limits <= 0  # a row asked for no tokens has ended before the first step
    stopped = torch.zeros(n, dtype=torch.bool, device=dev)  # ended by an end-of-turn token (not its length)
    prev_content = torch.zeros(n, dtype=torch.bool, device=dev)
    out_tokens: list[torch.Tensor] = []
    out_scores: list[torch.Tensor] = []
    out_pre: list[torch.Tensor] = []
    out_content: list[torch.Tensor] = []
    cap_on: list[torch.Tensor] = []
    position_ids = (attn.cumsum(-1) - 1).clamp_min(0)
    past = None
    cache_kw = _cache_kwarg(model)
    step_ids, step_pos = input_ids, position_ids
    with layer_hooks(model, fns, lm.layers_path):
        for step in range(max((o.max_new_tokens for o in row_opts), default=0)):
            out = model(input_ids=step_ids, attention_mask=attn, position_ids=step_pos,
                        use_cache=True, **{cache_kw: past})
            past = getattr(out, cache_kw)
            nxt = _sample_rows(out.logits[:b, -1], row_opts, gens)
            if twin:  # a twin reads its row's token, whatever it would have said itself
                nxt = torch.cat([nxt, nxt])
            is_stop = torch.isin(nxt, stops)
            content = ~finished & ~is_stop
            stopped |= ~finished & is_stop
            if collect_means and step > 0:  # this step's input is the previous token: its own position
                accumulate(prev_content)
            prev_content = content
            # one host transfer per step: tokens, scores, masks together
            pre = pre_now[b:] if twin else pre_now
            host = torch.stack([nxt[:b].float(), scores_now[:b], pre, content[:b].float(), active[:b].float()]).cpu()
            tok_h, sc_h, pre_h, cont_h, act_h = host[0].long(), host[1], host[2], host[3].bool(), host[4].bool()
            for acc, x in ((out_tokens, tok_h), (out_scores, sc_h), (out_pre, pre_h), (out_content, cont_h),
                           (cap_on, act_h)):
                acc.append(x)
            if sink is not None:
                more = sink.put(step, tok_h, sc_h, cont_h, pre_h)
                if more is not None and capping is not None:
                    active[:b] |= more.to(dev)
            finished |= is_stop | (step + 1 >= limits)
            # the next input: this step's token where it is content, padding (not attended) elsewhere
            step_ids = torch.where(content, nxt, torch.full_like(nxt, lm.tokenizer.pad_token_id)).unsqueeze(-1)
            attn = torch.cat([attn, content.long().unsqueeze(-1)], -1)
            step_pos = step_pos[:, -1:] + 1
            if bool(finished.all()):
                break
        if collect_means and bool(prev_content.any()):
            # rows cut at max_new_tokens: one more pass gives their last content token's own position
            model(input_ids=step_ids, attention_mask=attn, position_ids=step_pos, use_cache=True, **{cache_kw: past})
            accumulate(prev_content)
    if sink is not None:
        sink.end()

    results = []
    T = len(out_tokens)
    toks = torch.stack(out_tokens, 1) if T else torch.zeros(b, 0, dtype=torch.long)
    sc, pr = (torch.stack(out_scores, 1), torch.stack(out_pre, 1)) if T else (toks.float(), toks.float())
    cont = torch.stack(out_content, 1) if T else toks.bool()
    capm = torch.stack(cap_on, 1) if T else toks.bool()
    for i in range(b):
        m = cont[i]
        ids = toks[i][m].tolist()
        results.append(Generated(
            token_ids=ids,
            tokens=token_pieces(lm.tokenizer, ids),
            text=lm.tokenizer.decode(ids, skip_special_tokens=True),
            scores=sc[i][m].tolist() if axis is not None else [],
            pre_cap_scores=pr[i][m].tolist() if axis is not None else [],
            capped=bool(capm[i][m].any()) if capping is not None else False,
            cap_flags=capm[i][m].tolist() if capping is not None else [False] * len(ids),
            finish_reason="stop" if bool(stopped[i]) else "length",
            layer_means=(sums[i] / counts[i].clamp_min(1)).cpu() if collect_means else None,
            layer_norms=(norm_sums[i] / counts[i].clamp_min(1)).cpu() if collect_means else None,
        ))
    return results


def batched_generate(lm: LoadedModel, msgs: list[list[dict]], opts: GenerationOptions, batch_size: int, *,
                     on_batch=None, **kw) -> list[Generated]:
    """Answers to many chats in their input order, generated in batches of similar prompt length
    (less padding); ``kw`` go to :func:`generate` (``capping``, ``steering``, ``axis`` and
    ``monitor_layer``...); ``on_batch(n)`` is called after each batch of ``n``."""
    lengths = [len(lm.tokenizer(format_chat(lm.tokenizer, m))["input_ids"]) for m in msgs]
    order = sorted(range(len(msgs)), key=lambda i: (lengths[i], i))
    out: list = [None] * len(msgs)
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        for k, g in zip(idx, generate(lm, [msgs[k] for k in idx], opts, **kw)):
            out[k] = g
        if on_batch is not None:
            on_batch(len(idx))
    return out
