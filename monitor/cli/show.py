"""``axiswatch sessions show`` as text: a stored session (``Store.get_session``) in lines. Pure."""

from __future__ import annotations

from monitor.conversation import walk


def fmt(v, spec="+.2f") -> str:
    return "-" if v is None else format(v, spec)


def clip(text: str, n: int = 100) -> str:
    text = text.replace("\n", " ")
    return text[:n] + ("..." if len(text) > n else "")


def _system(s: dict) -> list[str]:
    """The system prompt(s) the first reply was generated from (what drove the persona)."""
    first = next((t for t in s["turns"] if t["role"] == "assistant" and t.get("input_head")), None)
    if first is None:
        return []
    return [m["content"] for m in walk(first["input_head"], s["messages"]) if m["role"] == "system"]


def show_lines(s: dict) -> list[str]:
    out = [f"session {s['id']}  source {s['source']}  model {s['model_id']}  layer {s['layer']}",
           f"state {s['state']} (peak {s.get('peak_state', s['state'])})  running {fmt(s['running'])}  "
           f"capped {'yes' if s['capped'] else 'no'}  open alerts {s.get('open_alerts', 0)}"]
    out += [f"system: {clip(p, 300)}" for p in _system(s)]
    for t in s["turns"]:
        score = f"mean {fmt(t['mean'])}  state {t['state']}  " if t["role"] == "assistant" else ""
        out.append(f"  [{t['turn']}] {t['role']:9s} {score}{clip(t['text'])}")
        k = t.get("diverged_at")
        if k is not None and t.get("input_head"):
            saw = walk(t["input_head"], s["messages"])
            out.append(f"      ! the client's history differs from the stored one from message {k}; "
                       f"the model was given {len(saw)} messages, from there:")
            out += [f"        ({i}) {m['role']}: {clip(m['content'], 90)}" for i, m in enumerate(saw) if i >= k]
    for a in s["alerts"]:
        status = a.get("status", "open")
        who = f" by {a['acknowledged_by']}" if status == "acknowledged" and a.get("acknowledged_by") else ""
        out.append(f"  alert {a['event_id']} {a['level']} at turn {a['turn']} token {a['token_index']}: running "
                   f"{fmt(a['score'])} < {fmt(a['threshold'])}  [{status}{who}]  webhook {a['delivery_status']}")
        if a.get("excerpt"):
            out.append("        ..." + a["excerpt"][-120:].replace("\n", " "))
    for i in s["interventions"]:
        out.append(f"  capping {i['config_id']} from turn {i['turn']} token {i['token_index']}")
    return out
