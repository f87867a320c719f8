"""``axiswatch chat``: an interactive terminal chat with a live score per token."""

from __future__ import annotations

import json
import sys

import click

from monitor.cli.base import cli, handle_errors, model_options, settings_from

COLOURS = {"ok": "green", "watch": "yellow", "warning": "magenta", "critical": "red"}


BAR_RANGE = (-40.0, 40.0)  # running scores drawn across the bar (higher = more Assistant-like)


def _bar(running: float | None, width: int = 20) -> str:
    if running is None:
        return "." * width
    lo, hi = BAR_RANGE
    n = int(round(min(max((running - lo) / (hi - lo), 0.0), 1.0) * width))
    return "#" * n + "." * (width - n)


def _status(state: str, running: float | None, mean: float | None, capped: bool) -> str:
    r = "-" if running is None else f"{running:+.1f}"
    m = "-" if mean is None else f"{mean:+.1f}"
    return f"[{_bar(running)}] state {state} | running {r} | turn mean {m}{' | CAPPED' if capped else ''}"


def _stream_http(url: str, body: dict, on_token):
    import httpx

    final = {}
    from monitor.auth import auth_headers

    with httpx.stream("POST", url.rstrip("/") + "/chat/completions", json={**body, "stream": True}, timeout=600,
                      headers=auth_headers()) as r:
        if r.status_code >= 400:
            r.read()
            from monitor.errors import InputError

            raise InputError(f"server answered {r.status_code}: {r.text[:300]}")
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                from monitor.errors import InputError

                raise InputError(chunk["error"]["message"])
            aw = chunk.get("axiswatch", {})
            if chunk["choices"][0]["delta"].get("content"):
                on_token(aw)
            if chunk["choices"][0].get("finish_reason"):
                final = aw
    return final


@cli.command()
@model_options
@click.option("--url", default=None, help="a running 'axiswatch serve', e.g. http://127.0.0.1:8000/v1 (default: in-process)")
@click.option("--session", "session_id", default=None, help="continue this session id")
@click.option("--system", default=None, help="a system prompt")
@click.option("--max-tokens", type=int, default=128, show_default=True)
@click.option("--policy", type=click.Choice(["observe", "flag", "cap"]), default=None)
@click.pass_context
@handle_errors
def chat(ctx, model, device, dtype, layers_path, url, session_id, system, max_tokens, policy):
    """Chat in the terminal; every token is coloured by its drift state, with the running score after each turn."""
    from monitor.records import new_id

    colour = sys.stdout.isatty()
    sid = session_id or new_id("chat")
    messages = [{"role": "system", "content": system}] if system else []
    rt = None
    if url is None:
        from monitor import service

        rt = service.start(settings_from(ctx, model=model, device=device, dtype=dtype, layers_path=layers_path,
                                     policy=policy))
    click.echo(f"session {sid}; an empty line or Ctrl-D ends the chat")
    try:
        while True:
            try:
                text = input("you> ") if sys.stdin.isatty() else sys.stdin.readline()
            except EOFError:
                break
            text = text.strip()
            if not text:
                break
            messages.append({"role": "user", "content": text})
            click.echo("assistant> ", nl=False)

            pieces: list[str] = []

            def on_token(tok):
                piece = tok["token"]
                pieces.append(piece)  # noqa: B023 - called within this iteration
                click.echo(click.style(piece, fg=COLOURS.get(tok["state"])) if colour else piece, nl=False)

            body = {"messages": messages, "max_tokens": max_tokens, "session_id": sid, "policy": policy}
            if rt is None:
                final = _stream_http(url, body, on_token)
            else:
                from monitor.engine import ChatRequest
                from probes.generation import GenerationOptions

                res = rt.engine.submit(ChatRequest(sid, list(messages), GenerationOptions(max_new_tokens=max_tokens),
                                                    policy, on_token=on_token)).result()
                final = {"state": res.state, "running": res.running, "mean": res.mean, "capped": res.capped}
            click.echo()
            click.echo(_status(final.get("state", "?"), final.get("running"), final.get("mean"), final.get("capped", False)))
            messages.append({"role": "assistant", "content": "".join(pieces)})
    finally:
        if rt is not None:
            rt.close()
