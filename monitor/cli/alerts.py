"""Commands on alerts: ``alerts list|ack|deliver|replay``. Event ids may be given as unique prefixes."""

from __future__ import annotations

import getpass
import json
import sys
from datetime import UTC, datetime

import click

from monitor.cli.base import cli, handle_errors, redis_url_for, settings_from
from monitor.cli.sessions import store_for
from monitor.cli.show import fmt


@cli.group()
def alerts():
    """Alerts across sessions: list, acknowledge, deliver the ones raised before a webhook was set, replay
    dead-lettered webhooks."""


@alerts.command("list")
@click.option("--status", type=click.Choice(["pending", "delivered", "retrying", "dead"]), default=None,
              help="webhook delivery status")
@click.option("--session", "session_id", default=None, help="one session's alerts (an id or a unique prefix)")
@click.option("--open", "only_open", is_flag=True, help="only alerts neither acknowledged nor resolved")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--database-url", default=None)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@handle_errors
def alerts_list(ctx, status, session_id, only_open, limit, database_url, as_json):
    """Newest alerts first: where, how far, their lifecycle (open, acknowledged, resolved) and webhook delivery."""
    store = store_for(ctx, database_url)
    sid = store.resolve_id("session", session_id) if session_id else None
    rows = store.list_alerts(status=status, limit=limit, session_id=sid)
    rows = [a for a in rows if a["status"] == "open"] if only_open else rows
    if as_json:
        for a in rows:
            click.echo(json.dumps(a, default=str))
        return
    ew = max([len(a["event_id"]) for a in rows] + [5])
    sw = max([len(a["session_id"]) for a in rows] + [7])
    click.echo(f"{'time (UTC)':19s} {'event':{ew}s} {'session':{sw}s} {'level':8s} {'detector':8s} where"
               f"             running < threshold  {'status':12s} webhook")
    for a in rows:
        at = datetime.fromtimestamp(float(a["created_at"]), tz=UTC).strftime("%Y-%m-%d %H:%M:%S")
        click.echo(f"{at:19s} {a['event_id']:{ew}s} {a['session_id']:{sw}s} {a['level']:8s} "
                   f"{a.get('detector') or 'drift':8s} turn {a['turn']:3d} "
                   f"token {a['token_index']:4d} {fmt(a['score']):>7s} < {fmt(a['threshold']):>7s}  "
                   f"{a['status']:12s} {a['delivery_status']} ({a['attempts']} attempts)")
    if not rows:
        click.echo("no alerts" + (f" with status {status}" if status and not (sid or only_open)
                                  else " match these filters" if status or sid or only_open else " stored yet"), err=True)
    elif settings_from(ctx).webhook is None and any(a["delivery_status"] == "pending" for a in rows):
        click.echo("pending: not delivered yet. Alerts are sent only by a deployment with AXISWATCH_WEBHOOK_URL "
                   "and AXISWATCH_WEBHOOK_SECRET set (not set here); 'axiswatch alerts deliver' hands the "
                   "pending ones to it once it has them.", err=True)


@alerts.command("ack")
@click.argument("event_ids", nargs=-1, required=True)
@click.option("--by", default=None, help="who acknowledges (default: your login name)")
@click.option("--note", default="", help="why, or what is being done")
@click.option("--database-url", default=None)
@click.pass_context
@handle_errors
def alerts_ack(ctx, event_ids, by, note, database_url):
    """Acknowledge alerts: who and when are stored with them, in their sessions' hash chains."""
    from monitor.errors import InputError

    try:
        by = by or getpass.getuser()
    except (KeyError, OSError):
        raise InputError("cannot tell who you are: give --by NAME") from None
    store = store_for(ctx, database_url)
    for prefix in event_ids:
        eid = store.resolve_id("alert", prefix)
        u = store.acknowledge_alert(eid, by, note)
        mine = u["by"] == by and u["note"] == note
        click.echo(f"{eid} acknowledged by {u['by']}" + ("" if mine else " (earlier; kept)"))


@alerts.command("deliver")
@click.option("--limit", type=click.IntRange(1, 100_000), default=10_000, show_default=True)
@click.option("--database-url", default=None)
@click.pass_context
@handle_errors
def alerts_deliver(ctx, limit, database_url):
    """Hand pending alerts (raised before a webhook was configured, or never sent) to the deployment's
    alert worker again: it sends each once (receivers dedupe on the event id too). Needs the
    deployment's Redis (REDIS_URL, or the embedded one of a running serve on the same store)."""
    from monitor.errors import InputError
    from monitor.records import AlertEvent
    from monitor.streams import Streams

    s = settings_from(ctx, database_url=database_url)
    url = redis_url_for(s)
    if not url:
        raise InputError("no Redis to hand the alerts to: set REDIS_URL, or start 'axiswatch serve' on this store")
    store = store_for(ctx, database_url)
    pending = store.list_alerts(status="pending", limit=limit)[::-1]  # oldest first
    streams = Streams.from_url(url)
    for a in pending:
        streams.publish(AlertEvent.from_dict({**a, "excerpt": a.get("excerpt") or ""}))
    click.echo(f"{len(pending)} pending alert(s) handed to the alert worker at {url}"
               + ("" if s.webhook else " (AXISWATCH_WEBHOOK_URL is not set here: the deployment's worker must have it)"))


@alerts.command("replay")
@click.option("--limit", type=click.IntRange(1, 100_000), default=None, help="at most this many (oldest first)")
@click.option("--database-url", default=None)
@click.pass_context
@handle_errors
def alerts_replay(ctx, limit, database_url):
    """Deliver dead-lettered alerts again (needs the deployment's Redis and AXISWATCH_WEBHOOK_URL/_SECRET)."""
    from monitor.errors import InputError
    from monitor.streams import Streams
    from monitor.streams.alerts import AlertLedger
    from monitor.workers.dead_letters import replay_dead

    s = settings_from(ctx, database_url=database_url)
    url = redis_url_for(s)
    if not url:
        raise InputError("replay reads the dead-letter list in the deployment's Redis: set REDIS_URL, or start "
                         "'axiswatch serve' on this store")
    config = s.webhook
    if config is None:
        raise InputError("set AXISWATCH_WEBHOOK_URL and AXISWATCH_WEBHOOK_SECRET to replay alerts")
    streams = Streams.from_url(url)
    ledger = AlertLedger(streams)
    waiting = ledger.dead_count()
    delivered = replay_dead(streams, store_for(ctx, database_url), config, limit=limit)
    left = ledger.dead_count()
    click.echo(f"replayed to {config.target}: {delivered} delivered, {left} still dead-lettered (of {waiting})")
    if left and delivered == 0 and waiting:
        sys.exit(1)
