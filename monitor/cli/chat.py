"""``axiswatch chat``: an interactive terminal chat with a live score per token."""

from __future__ import annotations

import sys

import click

from monitor.cli.base import check_max_tokens, cli, handle_errors, max_tokens_option, model_options, settings_from

COLOURS = {"ok": "green", "watch": "yellow", "warning": "magenta", "critical": "red"}


def legend(colour: bool) -> str:
    """One line naming the token colours (each in its colour on a terminal)."""
    names = " ".join(click.style(st, fg=fg) if colour else f"{st}={fg}" for st, fg in COLOURS.items())
    return f"token colours by drift state: {names}; uncoloured: the opening reply (the session's reference, no drift yet)"


def _fmt(v) -> str:
    return "-" if v is None else f"{v:+.1f}"


def event_lines(alerts: list[dict], interventions: list[dict]) -> list[str]:
    """A line per alert and per capping switch of one reply, in token order."""
    lines = [(int(a.get("token_index") or 0), f"! ALERT {a.get('level', '?')} at token {a.get('token_index', '?')}"
                                             f"{' (' + a['detector'] + ')' if a.get('detector') else ''}: "
                                             f"running {_fmt(a.get('score'))} fell below {_fmt(a.get('threshold'))}")
             for a in alerts]
    lines += [(int(i.get("token_index") or 0), f"! CAPPING ON from token {i.get('token_index', '?')}"
                                             + (f" (config {i['config_id']})" if i.get("config_id") else "")
                                             + ": this session stays capped for the rest of the conversation")
              for i in interventions]
    return [text for _, text in sorted(lines, key=lambda x: x[0])]


BAR_RANGE = (-40.0, 40.0)  # running scores drawn across the bar (higher = more Assistant-like)


def _bar(running: float | None, width: int = 20) -> str:
    if running is None:
        return "." * width
    lo, hi = BAR_RANGE
    n = int(round(min(max((running - lo) / (hi - lo), 0.0), 1.0) * width))
    return "#" * n + "." * (width - n)


STATISTIC = {"drift": "drift from the opening", "level": "level"}


def _status(state: str, running: float | None, mean: float | None, capped: bool, detector: str | None = None,
            statistics: dict | None = None) -> str:
    """The line after each reply: the running score, and what the state comes from: the statistic of the
    detector that holds it (the drift below the session's opening, or the absolute level), or every
    detector's statistic while the state is ok."""
    r = "-" if running is None else f"{running:+.1f}"
    m = "-" if mean is None else f"{mean:+.1f}"
    stats = statistics or {}
    shown = {detector: stats.get(detector)} if detector else stats
    why = ", ".join(f"{STATISTIC.get(k, k)} {_fmt(v)}" for k, v in shown.items())
    return (f"[{_bar(running)}] state {state}{' (' + why + ')' if why else ''} | running {r} | turn mean {m}"
            f"{' | CAPPED' if capped else ''}")


class _Reply:
    """One reply as it streams: its pieces, echoed coloured by drift state, and what the token payloads
    said about alerts and capping (for a server whose final chunk does not list them)."""

    def __init__(self, colour: bool):
        self.colour = colour
        self.pieces: list[str] = []
        self.alerts: list[dict] = []
        self.capped_from: int | None = None  # the first capped token, when capping switched on in this reply
        self._was_capped: bool | None = None

    def on_token(self, piece: str, tok: dict) -> None:
        """One token's text and its axiswatch payload (``{}`` from a server that sends none)."""
        idx = tok.get("token_index", len(self.pieces))
        self.pieces.append(piece)
        self.alerts += [{"level": level, "token_index": idx} for level in tok.get("alerts") or ()]
        capped = bool(tok.get("capped"))  # the session's flag once this token is scored
        switched = self._was_capped is False or (self._was_capped is None and bool(tok.get("alerts")))
        if capped and switched and self.capped_from is None:
            self.capped_from = idx + 1  # this token's alert switched capping on: it acts from the next token
        self._was_capped = capped
        # the opening reply has no drift yet: drawn neutral, as in the dashboard
        fg = COLOURS.get(tok.get("state", "")) if tok.get("drift", 0) is not None else None
        click.echo(click.style(piece, fg=fg) if self.colour and fg else piece, nl=False)

    def on_payload(self, tok: dict) -> None:
        """A token from the engine in this process (its payload holds its text)."""
        self.on_token(tok["token"], tok)

    def event_lines(self, final: dict) -> list[str]:
        alerts, interventions = final.get("alerts"), final.get("interventions")
        if interventions is None:
            interventions = [] if self.capped_from is None else [{"token_index": self.capped_from}]
        return event_lines(self.alerts if alerts is None else alerts, interventions)


def _stream_http(server, body: dict, reply: _Reply) -> dict | None:
    """One streamed reply from a running server: each token to ``reply``; the final chunk's axiswatch
    object, or None when the server sent none (a plain OpenAI-compatible server)."""
    final: dict | None = None
    for chunk in server.stream("/chat/completions", body):
        aw = chunk.get("axiswatch")
        choice = (chunk.get("choices") or [{}])[0]
        piece = (choice.get("delta") or {}).get("content")
        if piece:
            reply.on_token(piece, aw or {})
        if choice.get("finish_reason"):
            final = aw
    return final


@cli.command()
@model_options
@click.option("--url", default=None, help="a running 'axiswatch serve', e.g. http://127.0.0.1:8000/v1 (default: in-process)")
@click.option("--session", "session_id", default=None, help="continue this session id")
@click.option("--system", default=None, help="a system prompt")
@max_tokens_option(128)
@click.option("--policy", type=click.Choice(["observe", "flag", "cap"]), default=None)
@click.pass_context
@handle_errors
def chat(ctx, model, device, dtype, layers_path, url, session_id, system, max_tokens, policy):
    """Chat in the terminal; every token is coloured by its drift state, with the running score after each turn."""
    from monitor.records import new_id

    colour = sys.stdout.isatty()
    s = settings_from(ctx, model=model, device=device, dtype=dtype, layers_path=layers_path, policy=policy)
    check_max_tokens(max_tokens, s, remote=url is not None)  # before a model loads or a line is read
    sid = session_id or new_id("chat")
    messages = [{"role": "system", "content": system}] if system else []
    rt = server = None
    noted = False  # said once that the server sends no axiswatch data
    if url is None:
        from monitor import service

        rt = service.start(s)
    else:
        from monitor.client import Server

        server = Server(url)
    click.echo(f"session {sid}; an empty line or Ctrl-D ends the chat")
    click.echo(legend(colour))
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

            reply = _Reply(colour)
            if server is not None:
                from monitor.client import chat_body, no_axiswatch_note

                got = _stream_http(server, chat_body(messages, max_tokens, sid, policy), reply)
                if got is None and not noted:
                    click.echo()
                    click.echo(no_axiswatch_note([sid]), err=True)
                    noted = True
                final = got or {}
            else:
                assert rt is not None and rt.engine is not None
                from monitor.engine import ChatRequest
                from probes.generation import GenerationOptions

                res = rt.engine.submit(ChatRequest(sid, list(messages), GenerationOptions(max_new_tokens=max_tokens),
                                                    policy, on_token=reply.on_payload)).result()
                final = {"state": res.state, "running": res.running, "mean": res.mean, "capped": res.capped,
                         "detector": res.detector, "statistics": res.statistics,
                         "alerts": [a.to_dict() for a in res.alerts],
                         "interventions": [i.to_dict() for i in res.interventions]}
            click.echo()
            for line in reply.event_lines(final):
                click.echo(click.style(line, fg="red", bold=True) if colour else line)
            click.echo(_status(final.get("state", "?"), final.get("running"), final.get("mean"), final.get("capped", False),
                               final.get("detector"), final.get("statistics")))
            messages.append({"role": "assistant", "content": "".join(reply.pieces)})
    finally:
        if rt is not None:
            rt.close()
        if server is not None:
            server.close()
