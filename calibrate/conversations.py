"""Scripted multi-turn conversations generated greedily, with per-token scores at the monitor layer.

Used by ``axiswatch calibrate-alerts``: each conversation is a system prompt (or
none) and a list of user turns; round ``k`` generates every conversation's
``k``-th reply in batches of similar length, with the replies before it in the
history, so a conversation sees exactly what a chat client would send. Each
round is checkpointed (``rounds/NN.json`` in the work folder) as soon as it is
done, so an interrupted run resumes at the next round.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

from calibrate.rollouts import batched_generate
from probes.errors import InputError
from probes.generation import GenerationOptions
from probes.models import LoadedModel


def run_conversations(lm: LoadedModel, convs: list[dict], axis_unit: torch.Tensor, layer: int, work: Path,
                      max_new_tokens: int = 96, batch_size: int = 32,
                      on_batch: Callable[[int], None] | None = None, axis_id: str | None = None) -> list[list[dict]]:
    """Replies of every conversation (``{"id", "system", "turns": [user, ...]}``), per turn:
    ``{"text", "scores"}`` (the scores of the content tokens at ``layer``)."""
    work = Path(work)
    (work / "rounds").mkdir(parents=True, exist_ok=True)
    plan = {"ids": [c["id"] for c in convs], "max_new_tokens": max_new_tokens, "layer": layer,
            "turns": [c["turns"] for c in convs], "systems": [c.get("system") for c in convs]}
    if axis_id is not None:  # the checkpoints hold scores: another axis (even at the same layer) starts over
        plan["axis"] = axis_id
    plan_path = work / "plan.json"
    if plan_path.exists() and json.loads(plan_path.read_text()) != plan:
        raise InputError(f"{work} holds conversations of another plan; use another work folder or --fresh")
    plan_path.write_text(json.dumps(plan))
    replies: list[list[dict]] = [[] for _ in convs]
    opts = GenerationOptions(max_new_tokens=max_new_tokens)
    for k in range(max((len(c["turns"]) for c in convs), default=0)):
        path = work / "rounds" / f"{k:02d}.json"
        rows = [i for i, c in enumerate(convs) if k < len(c["turns"])]
        if path.exists():
            done = json.loads(path.read_text())
            for i, r in zip(rows, done):
                replies[i].append(r)
            if on_batch is not None:
                on_batch(len(rows))
            continue
        outs = batched_generate(lm, [_history(convs[i], replies[i], k) for i in rows], opts, batch_size,
                                on_batch=on_batch, axis=axis_unit, monitor_layer=layer)
        got = dict(zip(rows, ({"text": g.text, "scores": g.pre_cap_scores} for g in outs)))
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps([got[i] for i in rows]))
        tmp.rename(path)
        for i in rows:
            replies[i].append(got[i])
    return replies


def _history(conv: dict, replies: list[dict], k: int) -> list[dict]:
    msgs = [{"role": "system", "content": conv["system"]}] if conv.get("system") else []
    for user, reply in zip(conv["turns"][:k], replies):
        msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": reply["text"]}]
    return msgs + [{"role": "user", "content": conv["turns"][k]}]
