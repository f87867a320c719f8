"""``axiswatch sessions show`` as text: a stored session (``Store.get_session``) in lines, every message
in full, wrapped to the terminal's width (what an investigator reads). Pure."""

from __future__ import annotations

import textwrap
import time

from monitor.conversation import walk
from monitor.drift import snapshot_reading

WIDTH = 100  # the lines' width when none is given (a terminal's, from the command)


def fmt(v, spec="+.2f") -> str:
    return "-" if v is None else format(v, spec)


def when(t: float) -> str:
    """Epoch seconds as UTC, to the second."""
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(t))


def erasure_line(e: dict) -> str:
    """One erasure (a tombstone, as ``verify`` or ``get_session`` list it): what, when, by whom, why."""
    return f"erased {e['records']} records ({e['scope']}) {when(e.get('at', e.get('created_at', 0)))} by {e['by']}: {e['reason']}"


def wrapped(text: str, width: int, first: str, indent: str) -> list[str]:
    """``text`` in full after ``first``, wrapped at ``width``; its own line breaks kept (a blank line for an
    empty one), continuation lines indented by ``indent``."""
    out: list[str] = []
    for k, para in enumerate(text.split("\n") or [""]):
        lead = first if k == 0 else indent
        lines = textwrap.wrap(para, width=max(width, len(lead) + 20), initial_indent=lead, subsequent_indent=indent,
                              break_long_words=True, break_on_hyphens=False, drop_whitespace=True)
        out += lines or [lead.rstrip()]
    return out


def _system(s: dict) -> list[str]:
    """The system prompt(s) the first reply was generated from (what drove the persona)."""
    first = next((t for t in s["turns"] if t["role"] == "assistant" and t.get("input_head")), None)
    if first is None:
        return []
    return [m["content"] for m in walk(first["input_head"], s["messages"]) if m["role"] == "system"]


def show_lines(s: dict, width: int = WIDTH) -> list[str]:
    replies = [t for t in s["turns"] if t["role"] == "assistant"]
    detector, statistic = snapshot_reading(replies[-1].get("tracker") if replies else None)
    stat = f"  {detector} {fmt(statistic)}" if detector else ""
    out = [f"session {s['id']}  source {s['source']}  model {s['model_id']}  layer {s['layer']}",
           f"state {s['state']} (peak {s.get('peak_state', s['state'])}){stat}  running {fmt(s['running'])}  "
           f"capped {'yes' if s['capped'] else 'no'}  open alerts {s.get('open_alerts', 0)}"]
    for p in _system(s):
        out += wrapped(p, width, "system: ", "        ")
    for t in s["turns"]:
        score = f"  mean {fmt(t['mean'])}  state {t['state']}" if t["role"] == "assistant" else ""
        out.append(f"  [{t['turn']}] {t['role']}{score}")
        out += wrapped(t["text"], width, "      ", "      ")
        k = t.get("diverged_at")
        if k is not None and t.get("input_head"):
            saw = walk(t["input_head"], s["messages"])
            out.append(f"      ! the client's history differs from the stored one from message {k}; "
                       f"the model was given {len(saw)} messages, from there:")
            for i, m in enumerate(saw):
                if i >= k:
                    out += wrapped(m["content"], width, f"        ({i}) {m['role']}: ", "            ")
    for a in s["alerts"]:
        status = a.get("status", "open")
        who = f" by {a['acknowledged_by']}" if status == "acknowledged" and a.get("acknowledged_by") else ""
        out.append(f"  alert {a['event_id']} {a['level']} at turn {a['turn']} token {a['token_index']}: running "
                   f"{fmt(a['score'])} < {fmt(a['threshold'])}  [{status}{who}]  webhook {a['delivery_status']}")
        if a.get("excerpt"):
            out += wrapped("..." + a["excerpt"], width, "        ", "        ")
    for i in s["interventions"]:
        out.append(f"  capping {i['config_id']} from turn {i['turn']} token {i['token_index']}")
    out += [f"  {erasure_line(e)}" for e in s.get("erasures", ())]
    return out
