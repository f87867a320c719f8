"""What the store derives from a loaded session, with no I/O: each alert's lifecycle and the session's
peak state (:func:`lifecycle`), and what an engine needs to continue it (:func:`continuation`)."""

from __future__ import annotations

from typing import Any

from monitor.conversation import node_hash, walk
from monitor.records import STATES


def continuation(d: dict[str, Any]) -> dict[str, Any]:
    """A stored session (``Store.get_session``) as ``Store.session_meta`` gives it to an engine."""
    turns = d["turns"]
    snap = next((t for t in reversed(turns) if t.get("tracker")), None)
    after = snap["turn"] if snap else -1
    last = next((t for t in reversed(turns) if t["role"] == "assistant" and t.get("input_head")), None)
    conversation = [n["h"] for n in walk(last["input_head"], d["messages"])] if last else []
    if last:
        conversation.append(node_hash(last["input_head"], "assistant", last["text"]))
    return {"source": d["source"], "policy": d["policy"], "capped": bool(d["capped"]),
            "next_turn": int(turns[-1]["turn"]) + 1 if turns else 0,
            "tracker": snap["tracker"] if snap else None, "conversation": conversation,
            "open_alerts": [(a["event_id"], a["level"]) for a in d["alerts"] if a["status"] != "resolved"],
            "history": [t for t in turns if t.get("scores") and t["turn"] > after]}


def lifecycle(d: dict[str, Any]) -> None:
    """Each alert's ``status`` (open, acknowledged, resolved: the latest that applies), who acknowledged
    it and when, when it resolved, and the session's ``peak_state`` (the worst state any turn ended in
    or any alert reached) and ``open_alerts`` (not resolved, not acknowledged)."""
    by_event: dict[str, dict] = {}
    for u in d["updates"]:
        by_event.setdefault(u["event_id"], {})[u["action"]] = u
    for a in d["alerts"]:
        ups = by_event.get(a["event_id"], {})
        ack, res = ups.get("acknowledged"), ups.get("resolved")
        a.update(status="resolved" if res else "acknowledged" if ack else "open",
                 acknowledged_by=ack and ack["by"], acknowledged_at=ack and ack["created_at"],
                 resolved_at=res and res["created_at"])
    levels = [t["state"] for t in d["turns"] if t["role"] == "assistant"] + [a["level"] for a in d["alerts"]]
    d["peak_state"] = max(levels, key=STATES.index) if levels else d.get("state", "ok")
    d["open_alerts"] = sum(a["status"] == "open" for a in d["alerts"])
