"""Commands that read the store: ``sessions list|show|export``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from monitor.cli.base import cli, handle_errors, settings_from


def _store(ctx, database_url):
    from monitor.store import Store

    s = settings_from(ctx, database_url=database_url)
    store = Store(s.database_url, must_exist=True)
    store.migrate()
    return store


def _fmt(v, spec="+.2f"):
    return "-" if v is None else format(v, spec)


@cli.group()
def sessions():
    """List, show and export stored sessions (AXISWATCH_DATABASE_URL)."""


@sessions.command("list")
@click.option("--state", type=click.Choice(["ok", "watch", "warning", "critical"]), default=None)
@click.option("--source", type=click.Choice(["live", "audit", "shadow"]), default=None)
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--database-url", default=None)
@click.option("--json", "as_json", is_flag=True, help="one JSON object per session")
@click.pass_context
@handle_errors
def sessions_list(ctx, state, source, limit, database_url, as_json):
    """Newest sessions first."""
    rows = _store(ctx, database_url).list_sessions(state=state, source=source, limit=limit)
    if as_json:
        for r in rows:
            click.echo(json.dumps(r, default=str))
        return
    click.echo(f"{'session':32s} {'source':7s} {'state':9s} {'running':>8s} {'turns':>5s} {'tokens':>6s} capped")
    for r in rows:
        click.echo(f"{r['id'][:32]:32s} {r['source']:7s} {r['state']:9s} {_fmt(r['running']):>8s} "
                   f"{r['n_turns']:5d} {r['n_tokens']:6d} {'yes' if r['capped'] else 'no'}")
    if not rows:
        click.echo("no sessions" + (" match these filters" if state or source else " stored yet"), err=True)


def _get(ctx, database_url, session_id):
    from monitor.errors import InputError

    s = _store(ctx, database_url).get_session(session_id)
    if s is None:
        raise InputError(f"no session {session_id!r} in the store")
    return s


@sessions.command("show")
@click.argument("session_id")
@click.option("--database-url", default=None)
@click.option("--json", "as_json", is_flag=True, help="the full trace as JSON")
@click.pass_context
@handle_errors
def sessions_show(ctx, session_id, database_url, as_json):
    """One session's turns, states, alerts and interventions."""
    s = _get(ctx, database_url, session_id)
    if as_json:
        click.echo(json.dumps(s, default=str))
        return
    click.echo(f"session {s['id']}  source {s['source']}  model {s['model_id']}  layer {s['layer']}  "
               f"state {s['state']}  running {_fmt(s['running'])}  capped {'yes' if s['capped'] else 'no'}")
    for t in s["turns"]:
        text = t["text"].replace("\n", " ")
        text = text[:100] + ("..." if len(text) > 100 else "")
        score = f"mean {_fmt(t['mean'])}  state {t['state']}" if t["role"] == "assistant" else ""
        click.echo(f"  [{t['turn']}] {t['role']:9s} {score}  {text}")
    for a in s["alerts"]:
        click.echo(f"  alert {a['level']} at turn {a['turn']} token {a['token_index']}: running {_fmt(a['score'])} "
                   f"< {_fmt(a['threshold'])}  ({a['delivery_status']})")
    for i in s["interventions"]:
        click.echo(f"  capping {i['config_id']} from turn {i['turn']} token {i['token_index']}")


@sessions.command("export")
@click.argument("session_id")
@click.option("--format", "fmt", type=click.Choice(["json", "csv"]), default="json", show_default=True)
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None, help="file (default: stdout)")
@click.option("--database-url", default=None)
@click.pass_context
@handle_errors
def sessions_export(ctx, session_id, fmt, output, database_url):
    """Export a session: the JSON trace, or CSV with one row per scored token."""
    from monitor.store.export import session_csv, session_json

    s = _get(ctx, database_url, session_id)
    text = session_json(s) if fmt == "json" else session_csv(s)
    if output:
        output.write_text(text)
        click.echo(f"wrote {output}", err=True)
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")


@cli.group()
def alerts():
    """Alerts across sessions, and replaying dead-lettered webhooks."""


@alerts.command("list")
@click.option("--status", type=click.Choice(["pending", "delivered", "retrying", "dead"]), default=None)
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--database-url", default=None)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@handle_errors
def alerts_list(ctx, status, limit, database_url, as_json):
    """Newest alerts first, with their webhook delivery status."""
    rows = _store(ctx, database_url).list_alerts(status=status, limit=limit)
    if as_json:
        for a in rows:
            click.echo(json.dumps(a, default=str))
        return
    click.echo(f"{'event':28s} {'session':28s} {'level':8s} where             running < threshold  webhook")
    for a in rows:
        click.echo(f"{a['event_id']:28s} {a['session_id'][:28]:28s} {a['level']:8s} turn {a['turn']:3d} "
                   f"token {a['token_index']:4d} {_fmt(a['score']):>7s} < {_fmt(a['threshold']):>7s}  "
                   f"{a['delivery_status']} ({a['attempts']} attempts)")
    if not rows:
        click.echo("no alerts" + (f" with status {status}" if status else " stored yet"), err=True)
    elif settings_from(ctx).webhook is None and any(a["delivery_status"] == "pending" for a in rows):
        click.echo("pending: not delivered yet. Alerts are sent only by a deployment with AXISWATCH_WEBHOOK_URL "
                   "and AXISWATCH_WEBHOOK_SECRET set (not set here).", err=True)


@alerts.command("replay")
@click.option("--limit", type=click.IntRange(1, 100_000), default=None, help="at most this many (oldest first)")
@click.option("--database-url", default=None)
@click.pass_context
@handle_errors
def alerts_replay(ctx, limit, database_url):
    """Deliver dead-lettered alerts again (needs REDIS_URL and AXISWATCH_WEBHOOK_URL/_SECRET)."""
    from monitor.errors import InputError
    from monitor.streams import Streams
    from monitor.streams.alerts import AlertLedger
    from monitor.workers.dead_letters import replay_dead

    s = settings_from(ctx, database_url=database_url)
    if not s.redis_url:
        raise InputError("replay reads the dead-letter list in the deployment's Redis: set REDIS_URL")
    config = s.webhook
    if config is None:
        raise InputError("set AXISWATCH_WEBHOOK_URL and AXISWATCH_WEBHOOK_SECRET to replay alerts")
    streams = Streams.from_url(s.redis_url)
    ledger = AlertLedger(streams)
    waiting = ledger.dead_count()
    delivered = replay_dead(streams, _store(ctx, database_url), config, limit=limit)
    left = ledger.dead_count()
    click.echo(f"replayed to {config.target}: {delivered} delivered, {left} still dead-lettered (of {waiting})")
    if left and delivered == 0 and waiting:
        sys.exit(1)
