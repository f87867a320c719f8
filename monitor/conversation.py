"""What the model was given, as a hash chain of messages: pure, no I/O.

Each message is a node ``{"h", "p", "role", "content"}``: ``p`` is the hash of the message before it
(``""`` for the first), ``h`` the SHA-256 of ``[p, role, content]``. A conversation is named by the
hash of its last message (its head); walking the parents gives it back, and every message's text is
stored once per session however many turns repeat it. Two histories that share a head are the same
conversation; where they first differ is where a client edited (or regenerated) it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence


def node_hash(parent: str, role: str, content: str) -> str:
    return hashlib.sha256(json.dumps([parent, role, content], ensure_ascii=False).encode()).hexdigest()


def chain(messages: Iterable[Mapping], parent: str = "") -> list[dict]:
    """The nodes of these messages (``role``, ``content``), in order, after ``parent``."""
    out = []
    for m in messages:
        role, content = str(m["role"]), str(m["content"]).replace("\x00", "\ufffd")  # as every store keeps text
        h = node_hash(parent, role, content)
        out.append({"h": h, "p": parent, "role": role, "content": content})
        parent = h
    return out


def walk(head: str | None, nodes: Mapping[str, Mapping]) -> list[dict]:
    """The conversation that ends at ``head``, first message first (``nodes``: hash -> node).
    Stops at a missing parent (the list then starts with the first message it could find)."""
    out: list[dict] = []
    seen = set()
    while head and head in nodes and head not in seen:
        seen.add(head)
        out.append(dict(nodes[head]))
        head = nodes[head]["p"]
    return out[::-1]


def divergence(stored: Sequence[str], given: Sequence[str]) -> int | None:
    """Where the messages a client gave (their hashes) leave the stored conversation: None when they
    hold all of it first (the usual next turn), else the index of the first message that is not the
    stored one (an edited message, or a shorter history: a regenerated or truncated reply)."""
    for i, (a, b) in enumerate(zip(stored, given)):
        if a != b:
            return i
    return None if len(given) >= len(stored) else len(given)


def verify_node(n: Mapping) -> bool:
    """The node's hash is that of its own parent, role and content (an edited text no longer is)."""
    return n.get("h") == node_hash(str(n.get("p", "")), str(n.get("role", "")), str(n.get("content", "")))
