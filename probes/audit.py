"""Scoring existing conversations by teacher forcing (audit and shadow mode).

Each assistant token at position ``p`` gets the projection of the monitor
layer's output at position ``p - 1`` (the position whose forward pass would
have produced it), the same convention as live generation, so audited and
generated scores are comparable. Only the content tokens of assistant turns
are scored (no template markers).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from probes.errors import InputError, ModelLoadError
from probes.hooks import layer_hooks
from probes.models import LoadedModel, content_text, format_chat, normalise_messages
from probes.ops import project


@dataclass
class TurnScores:
    index: int  # index of the message in the conversation
    role: str
    scores: list[float] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)

    @property
    def mean(self) -> float | None:
        return sum(self.scores) / len(self.scores) if self.scores else None

    def as_dict(self) -> dict:
        return {"index": self.index, "role": self.role, "mean": self.mean, "scores": self.scores, "tokens": self.tokens}


def parse_record(rec, where: str) -> tuple[str | None, list[dict]]:
    msgs: Any
    if isinstance(rec, list):
        msgs, rid = rec, None
    elif isinstance(rec, dict):
        msgs = rec.get("messages", rec.get("conversation"))
        rid = rec.get("id")
        if msgs is None:
            raise InputError(f"{where}: expected a 'messages' or 'conversation' list")
    else:
        raise InputError(f"{where}: expected an object with 'messages' or 'conversation'")
    if not isinstance(msgs, list) or not msgs:
        raise InputError(f"{where}: 'messages' must be a non-empty list")
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or "content" not in m:
            raise InputError(f"{where}: message {i} must be an object with string 'role' and 'content'")
    # content parts (OpenAI's [{"type": "text", "text": ...}]) become the string the template renders
    msgs = [{**m, "content": content_text(m["content"], f"{where}: message {i}")} for i, m in enumerate(msgs)]
    if not any(m["role"] == "assistant" for m in msgs):
        raise InputError(f"{where}: no assistant message to score")
    return (None if rid is None else str(rid)), msgs


def read_transcripts(path: str | Path) -> Iterator[tuple[str, tuple[str | None, list[dict]] | InputError]]:
    """Yield ``(where, (id, messages))`` per record of a file, or ``(where, InputError)`` for a bad one
    (:func:`transcripts_in`; a ``.jsonl`` file is JSON lines, a ``.json`` file one document)."""
    path = Path(path)
    try:
        raw = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        yield str(path), InputError(f"{path}: file not found")
        return
    except UnicodeDecodeError as e:
        yield str(path), InputError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})")
        return
    yield from transcripts_in(raw, str(path), {".jsonl": True, ".json": False}.get(path.suffix))


def transcripts_in(text: str, name: str, jsonl: bool | None = None
                   ) -> Iterator[tuple[str, tuple[str | None, list[dict]] | InputError]]:
    """Yield ``(where, (id, messages))`` per record of ``text`` (named ``name`` in errors), or
    ``(where, InputError)`` for a bad one: one JSON document (a conversation object, a list of them, or a bare
    list of messages) or JSON lines (one conversation per line); ``jsonl`` None: a text of several lines that
    is not one JSON document is read as JSON lines. ``axiswatch audit`` reads files with it, ``POST /v1/audit``
    its body."""
    if jsonl:
        yield from _jsonl(name, text)
        return
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        if jsonl is False or "\n" not in text.strip():
            yield name, InputError(f"{name}: invalid JSON ({e.msg} at line {e.lineno} column {e.colno})")
        else:  # not one JSON document: read it as JSON lines
            yield from _jsonl(name, text)
        return
    is_single = isinstance(doc, dict) or (isinstance(doc, list) and doc and isinstance(doc[0], dict) and "role" in doc[0])
    records = [doc] if is_single else doc if isinstance(doc, list) else None
    if records is None:
        yield name, InputError(f"{name}: expected a conversation object or a list of them")
        return
    for i, rec in enumerate(records):
        where = f"{name} record {i}"
        try:
            yield where, parse_record(rec, where)
        except InputError as e:
            yield where, e


def _jsonl(name: str, raw: str):
    for n, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{name} line {n}"
        try:
            yield where, parse_record(json.loads(line), where)
        except json.JSONDecodeError as e:
            yield where, InputError(f"{where}: invalid JSON ({e.msg} at column {e.colno})")
        except InputError as e:
            yield where, e


def _assistant_spans(tokenizer, text: str, msgs: list[dict]) -> list[tuple[int, int, int]]:
    """(message index, start, end) character spans of assistant contents in the rendered text.

    Each assistant content is searched after the rendered prefix that ends with
    that turn's header (the chat rendered up to it with a generation prompt),
    so text inside template markers is never mistaken for content."""
    spans, cursor = [], 0
    for i, m in enumerate(msgs):
        content = m["content"].strip()
        if m["role"] != "assistant":
            continue
        if not content:
            spans.append((i, cursor, cursor))  # an empty turn: reported, with no scores
            continue
        prefix = format_chat(tokenizer, msgs[:i], add_generation_prompt=True) if i else ""
        start = len(prefix) if text.startswith(prefix) else cursor
        at = text.find(content, max(start, cursor))
        if at < 0:
            raise InputError(f"message {i}: the chat template altered the assistant text; cannot align tokens")
        spans.append((i, at, at + len(content)))
        cursor = at + len(content)
    return spans


@torch.no_grad()
def score_conversation(lm: LoadedModel, messages: list[dict], axis_unit: torch.Tensor, layer: int) -> list[TurnScores]:
    """Per-token scores of every assistant turn (content tokens only)."""
    msgs = normalise_messages(lm.tokenizer, messages)
    text = format_chat(lm.tokenizer, msgs, add_generation_prompt=False)
    spans = _assistant_spans(lm.tokenizer, text, msgs)
    try:
        enc = lm.tokenizer(text, return_offsets_mapping=True, add_special_tokens=False, return_tensors="pt")
    except NotImplementedError:
        raise ModelLoadError("auditing needs a fast tokenizer (offset mappings); this model only has a slow one") from None
    ids, offsets = enc["input_ids"], enc["offset_mapping"][0].tolist()
    limit = getattr(lm.model.config, "max_position_embeddings", None)
    if limit and ids.shape[1] > limit:
        raise InputError(f"conversation is {ids.shape[1]} tokens; the model takes at most {limit}")
    captured: dict[str, torch.Tensor] = {}

    def grab(h):
        captured["h"] = h[0]

    with layer_hooks(lm.model, {layer: grab}, lm.layers_path):
        lm.model(input_ids=ids.to(lm.device), use_cache=False)
    scores = project(captured["h"], axis_unit.to(lm.device)).cpu()  # [t]
    # messages that were folded (system into user) shift indices: map back by content match
    index_of: dict[str, list[int]] = {}
    for j, m in enumerate(messages):
        if m["role"] == "assistant":
            index_of.setdefault(m["content"].strip(), []).append(j)
    turns = []
    for i, start, end in spans:
        pos = [p for p, (a, b) in enumerate(offsets) if start <= a < end and b > a and p > 0]
        orig = index_of.get(msgs[i]["content"].strip(), [i]).pop(0)
        turns.append(TurnScores(orig, "assistant", [float(scores[p - 1]) for p in pos],
                                [text[offsets[p][0]:offsets[p][1]] for p in pos]))
    return turns
