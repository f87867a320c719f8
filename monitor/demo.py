"""The demo: scripted conversations driven through the monitor, in-process or over HTTP.

Both modes print the same lines from the same fields: per reply its mean score, drift state, the
alerts it raised (levels) and whether the session is capped; at the end the alerts per script."""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from monitor import service
from monitor.client import Server, chat_body, no_axiswatch_note
from monitor.engine import ChatRequest
from monitor.records import new_id
from probes.generation import GenerationOptions

BAR = (-40.0, 40.0)


def _bar(v: float | None, width: int = 24) -> str:
    if v is None:
        return "." * width
    n = int(round(min(max((v - BAR[0]) / (BAR[1] - BAR[0]), 0.0), 1.0) * width))
    return "#" * n + "." * (width - n)


def load_scripts() -> list[dict]:
    path = Path(str(resources.files("monitor") / "data" / "demo_scripts.json"))
    return json.loads(path.read_text())["scripts"]


def _http_turn(server: Server, sid: str, messages: list[dict], max_tokens: int) -> dict:
    """One reply from a running server; mean, state, capping and alerts are None where it sends no
    axiswatch data (an unchanged vLLM server with the plugin)."""
    body = server.post("/chat/completions", chat_body(messages, max_tokens, sid))
    text = body["choices"][0]["message"]["content"]
    aw = body.get("axiswatch")
    if aw is None:
        return {"text": text, "mean": None, "state": None, "capped": None, "alerts": None}
    alerts = aw.get("alerts")  # None: a server too old to list them
    return {"text": text, "mean": aw.get("mean"), "state": aw.get("state"), "capped": aw.get("capped"),
            "alerts": None if alerts is None else [a["level"] for a in alerts]}


def _alerts(levels: list[str] | None) -> str:
    if levels is None:
        return "alerts unknown (the server does not report them)"
    return f"{len(levels)} alert{'' if len(levels) == 1 else 's'}" + (f" ({', '.join(levels)})" if levels else "")


def reply_line(name: str, r: dict) -> str:
    """One reply of one script: what both modes print."""
    mean = "   -  " if r["mean"] is None else f"{r['mean']:+6.1f}"
    extra = (f"  {_alerts(r['alerts'])}" if r["alerts"] != [] else "") + ("  CAPPED" if r["capped"] else "")
    return f"  {name:16s} mean {mean} [{_bar(r['mean'])}] {r['state'] or '-':8s}{extra}"


def run_demo(settings, url: str | None, max_tokens: int, echo: Callable[[str], None]) -> list[dict]:
    """Run every script turn by turn (the scripts' turns are batched together in-process)."""
    scripts = load_scripts()
    sids = {s["name"]: new_id(f"demo-{s['name']}") for s in scripts}
    history: dict[str, list[dict]] = {s["name"]: [] for s in scripts}
    summary = []
    rt = server = None
    noted = False  # said once that the server sends no axiswatch data
    if url is None:
        rt = service.start(settings)
        assert rt.engine is not None  # started with the model
        echo(f"monitor in-process: {rt.engine.model_id}, layer {rt.engine.layer}, thresholds "
             + ", ".join(f"{k} {v:+.1f}" for k, v in rt.engine.thresholds.as_dict().items()) + f"; store {rt.store.url}")
    else:
        server = Server(url)
        echo(f"monitor at {url}: {server.served_model()}")
    try:
        for turn in range(max(len(s["turns"]) for s in scripts)):
            active = [s for s in scripts if turn < len(s["turns"])]
            for s in active:
                history[s["name"]].append({"role": "user", "content": s["turns"][turn]})
            if rt is not None and rt.engine is not None:
                futs = {s["name"]: rt.engine.submit(ChatRequest(sids[s["name"]], list(history[s["name"]]),
                                                                 GenerationOptions(max_new_tokens=max_tokens)))
                        for s in active}
                replies = {}
                for name, f in futs.items():
                    r = f.result()
                    replies[name] = {"text": r.text, "mean": r.mean, "state": r.state, "capped": r.capped,
                                     "alerts": [a.level for a in r.alerts]}
            else:
                assert server is not None
                replies = {s["name"]: _http_turn(server, sids[s["name"]], history[s["name"]], max_tokens)
                           for s in active}
                if not noted and any(r["state"] is None for r in replies.values()):
                    echo(no_axiswatch_note(list(sids.values())))
                    noted = True
            echo(f"\nturn {turn + 1}")
            for s in active:
                r = replies[s["name"]]
                history[s["name"]].append({"role": "assistant", "content": r["text"]})
                echo(reply_line(s["name"], r))
                echo(f"  {'':16s} {r['text'][:90].replace(chr(10), ' ')}")
                summary.append({"script": s["name"], "session_id": sids[s["name"]], "turn": turn + 1, **r})
        totals = []
        for name in sids:
            got = [r["alerts"] for r in summary if r["script"] == name]
            totals.append(f"{name} {_alerts(None if None in got else [lv for levels in got for lv in levels])}")
        echo("\nalerts: " + ", ".join(totals))
        where = "see them with: axiswatch sessions show <id>" if url is None or noted else \
            f"stored by the server: GET {url.rstrip('/')}/sessions/<id>"
        echo("sessions: " + ", ".join(f"{n} = {sid}" for n, sid in sids.items()) + f"  ({where})")
    finally:
        if rt is not None:
            rt.close()
        if server is not None:
            server.close()
    return summary
