"""The demo: scripted conversations driven through the monitor, in-process or over HTTP."""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import httpx

from monitor import service
from monitor.auth import auth_headers
from monitor.engine import ChatRequest
from monitor.errors import InputError
from monitor.records import new_id
from probes.generation import GenerationOptions

BAR = (-40.0, 40.0)


def _bar(v: float | None, width: int = 24) -> str:
    if v is None:
        return "." * width
    n = int(round(min(max((v - BAR[0]) / (BAR[1] - BAR[0]), 0.0), 1.0) * width))
    return "#" * n + "." * (width - n)


def load_scripts() -> list[dict]:
    path = Path(str(resources.files("probes") / "data" / "demo_scripts.json"))
    return json.loads(path.read_text())["scripts"]


def _http_turn(client, url: str, sid: str, messages: list[dict], max_tokens: int) -> dict:
    r = client.post(url.rstrip("/") + "/chat/completions", json={"messages": messages, "max_tokens": max_tokens,
                                                                 "session_id": sid}, timeout=600)
    if r.status_code >= 400:
        raise InputError(f"server answered {r.status_code}: {r.text[:300]}")
    body = r.json()
    aw = body["axiswatch"]
    return {"text": body["choices"][0]["message"]["content"], "mean": aw["mean"], "state": aw["state"],
            "capped": aw["capped"], "alerts": None}


def run_demo(settings, url: str | None, max_tokens: int, echo: Callable[[str], None]) -> list[dict]:
    """Run every script turn by turn (the scripts' turns are batched together in-process)."""
    scripts = load_scripts()
    sids = {s["name"]: new_id(f"demo-{s['name']}") for s in scripts}
    history: dict[str, list[dict]] = {s["name"]: [] for s in scripts}
    summary = []
    rt = client = None
    if url is None:
        rt = service.start(settings)
        assert rt.engine is not None  # started with the model
        echo(f"in-process monitor: {rt.engine.model_id}, layer {rt.engine.layer}, thresholds "
             + ", ".join(f"{k} {v:+.1f}" for k, v in rt.engine.thresholds.as_dict().items()) + f"; store {rt.store.url}")
    else:
        client = httpx.Client(headers=auth_headers())
        echo(f"driving {url}")
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
                                     "alerts": len(r.alerts)}
            else:
                assert url is not None
                replies = {s["name"]: _http_turn(client, url, sids[s["name"]], history[s["name"]], max_tokens)
                           for s in active}
            echo(f"\nturn {turn + 1}")
            for s in active:
                r = replies[s["name"]]
                history[s["name"]].append({"role": "assistant", "content": r["text"]})
                mean = "   -  " if r["mean"] is None else f"{r['mean']:+6.1f}"
                extra = (f"  {r['alerts']} alert(s)" if r["alerts"] else "") + ("  CAPPED" if r["capped"] else "")
                echo(f"  {s['name']:16s} mean {mean} [{_bar(r['mean'])}] {r['state']:8s}{extra}")
                echo(f"  {'':16s} {r['text'][:90].replace(chr(10), ' ')}")
                summary.append({"script": s["name"], "session_id": sids[s["name"]], "turn": turn + 1, **r})
        echo("\nsessions: " + ", ".join(f"{n} = {sid}" for n, sid in sids.items())
             + ("  (see them with: axiswatch sessions show <id>)" if rt is not None else ""))
    finally:
        if rt is not None:
            rt.close()
        if client is not None:
            client.close()
    return summary
