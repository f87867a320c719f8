"""Offline rollouts: many chats answered in batches, and the mean residual stream over each answer.

:func:`batched_generate` answers chats in batches of similar prompt length with the runtime's own
decoding loop (:func:`probes.generation.generate`: the same scores, capping and steering as serving).
:func:`response_means` is ``compute-axis``' measurement: per answer and per layer, the mean residual
stream over the answer's content tokens at their *own* positions (the paper's choice; no template or
end-of-turn tokens), and the mean residual norm there. It reads them from one teacher-forced pass over
prompt + answer with a hook on every decoder block, after generation: the serving loop carries nothing
of it. Live per-token scores use the position that produced each token, one earlier: over a whole
answer the two means differ by one token at each end.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch

from probes.generation import Generated, GenerationOptions, generate
from probes.hooks import layer_hooks
from probes.models import LoadedModel, format_chat
from probes.ops import masked_mean


def batched_generate(lm: LoadedModel, msgs: list[list[dict]], opts: GenerationOptions, batch_size: int, *,
                     on_batch: Callable[[int], None] | None = None, **kw) -> list[Generated]:
    """Answers to many chats in their input order, generated in batches of similar prompt length
    (less padding); ``kw`` go to :func:`~probes.generation.generate` (``capping``, ``steering``,
    ``axis`` and ``monitor_layer``...); ``on_batch(n)`` is called after each batch of ``n``."""
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


@torch.no_grad()
def response_means(lm: LoadedModel, prompts: list[list[dict]], answers: list[list[int]]
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per chat, the mean residual stream ``[b, n_layers, d]`` and its mean norm ``[b, n_layers]`` over the
    answer's content tokens (``answers[i]``: token ids, no end-of-turn marker) at their own positions:
    layer ``L`` is the output of decoder block ``L``. An empty answer gets zeros."""
    tok = lm.tokenizer
    heads = [tok(format_chat(tok, p), add_special_tokens=False)["input_ids"] for p in prompts]
    rows = [h + list(a) for h, a in zip(heads, answers)]
    width = max((len(r) for r in rows), default=0)
    b, n_layers, dev = len(rows), lm.n_layers, lm.device
    ids = torch.full((b, width), tok.pad_token_id, dtype=torch.long)
    attn = torch.zeros(b, width, dtype=torch.long)
    content = torch.zeros(b, width, dtype=torch.bool)
    for i, (h, r) in enumerate(zip(heads, rows)):  # left padding, as generation pads
        ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
        attn[i, width - len(r):] = 1
        content[i, width - len(r) + len(h):] = True
    means = torch.zeros(b, n_layers, lm.hidden_size)
    norms = torch.zeros(b, n_layers)
    mask = content.to(dev)

    def keep(layer: int):
        def fn(h: torch.Tensor) -> None:  # [b, t, d]: the block's output over every position
            h = h.float()
            means[:, layer] = masked_mean(h, mask).cpu()
            norms[:, layer] = masked_mean(h.norm(dim=-1), mask).cpu()
        return fn

    if width:
        position_ids = (attn.cumsum(-1) - 1).clamp_min(0)
        # only the hooks' states are wanted: one position's logits, not the vocabulary at every position
        few = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(lm.model.forward).parameters else {}
        with layer_hooks(lm.model, {L: keep(L) for L in range(n_layers)}, lm.layers_path):
            lm.model(input_ids=ids.to(dev), attention_mask=attn.to(dev), position_ids=position_ids.to(dev),
                     use_cache=False, **few)
    return means, norms
