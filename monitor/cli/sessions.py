"""Commands that read the store: ``sessions list|show|export|verify``. Every session id may be given
as a unique prefix of one (``sessions list`` prints them whole)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import click

from monitor.cli.base import cli, handle_errors, settings_from
from monitor.cli.show import erasure_line, show_lines
from monitor.cli.show import fmt as _fmt


def store_for(ctx, database_url):
    from monitor.store import Store

    s = settings_from(ctx, database_url=database_url)
    store = Store(s.database_url, must_exist=True)
    store.migrate()
    return store


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
    """Newest sessions first. Beside each state, the statistic it comes from: the detector that holds it
    (``drift``: the running score minus the session's opening; ``level``: the session's slow running mean
    of the raw score) and
    its value, from the drift tracker stored with the latest turn."""
    from monitor.drift import snapshot_reading

    store = store_for(ctx, database_url)
    rows = store.list_sessions(state=state, source=source, limit=limit)
    ids = [r["id"] for r in rows]
    readings = {sid: snapshot_reading(snap) for sid, snap in store.last_trackers(ids).items()}
    if as_json:
        for r in rows:
            detector, statistic = readings.get(r["id"], (None, None))
            click.echo(json.dumps({**r, "detector": detector, "statistic": statistic}, default=str))
        return
    peaks, open_ = store.peak_states(ids), store.open_alert_counts(ids)
    width = max([len(r["id"]) for r in rows] + [7])
    click.echo(f"{'session':{width}s} {'source':7s} {'state':9s} {'peak':9s} {'statistic':>15s} {'running':>8s} "
               f"{'turns':>5s} {'tokens':>6s} {'open':>4s} capped")
    for r in rows:
        detector, statistic = readings.get(r["id"], (None, None))
        stat = f"{detector} {_fmt(statistic)}" if detector else "-"
        click.echo(f"{r['id']:{width}s} {r['source']:7s} {r['state']:9s} {peaks.get(r['id'], r['state']):9s} "
                   f"{stat:>15s} {_fmt(r['running']):>8s} {r['n_turns']:5d} {r['n_tokens']:6d} "
                   f"{open_.get(r['id'], 0):4d} {'yes' if r['capped'] else 'no'}")
    if not rows:
        click.echo("no sessions" + (" match these filters" if state or source else " stored yet"), err=True)


def _get(ctx, database_url, session_id):
    store = store_for(ctx, database_url)
    s = store.get_session(store.resolve_id("session", session_id))
    assert s is not None  # resolve_id found it
    return s


@sessions.command("show")
@click.argument("session_id")
@click.option("--database-url", default=None)
@click.option("--json", "as_json", is_flag=True, help="the full trace as JSON")
@click.pass_context
@handle_errors
def sessions_show(ctx, session_id, database_url, as_json):
    """One session: the conversation as the model saw it, every message in full and wrapped to the terminal
    (system prompt included, edits shown), its turns' states, alerts with their lifecycle, and interventions."""
    s = _get(ctx, database_url, session_id)
    if as_json:
        click.echo(json.dumps(s, default=str))
        return
    for line in show_lines(s, shutil.get_terminal_size((100, 24)).columns):  # full text, wrapped to the terminal
        click.echo(line)


@sessions.command("export")
@click.argument("session_id")
@click.option("--format", "fmt", type=click.Choice(["json", "csv"]), default="json", show_default=True)
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None, help="file (default: stdout)")
@click.option("--database-url", default=None)
@click.pass_context
@handle_errors
def sessions_export(ctx, session_id, fmt, output, database_url):
    """Export a session: the JSON trace, or CSV with one row per scored token."""
    from monitor.errors import InputError
    from monitor.replay import token_states
    from monitor.store.export import session_csv, session_json

    s = _get(ctx, database_url, session_id)
    if fmt == "json":
        text = session_json(s)
    else:
        try:
            drift = settings_from(ctx).axis_drift()
        except InputError as e:  # no thresholds to replay against: the states stay empty
            click.echo(f"note: no running score or state columns ({e})", err=True)
            drift = None
        states = token_states(s["turns"], *drift) if drift is not None else None
        text = session_csv(s, states)
    if output:
        output.write_text(text)
        click.echo(f"wrote {output}", err=True)
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")


@sessions.command("verify")
@click.argument("session_id", required=False)
@click.option("--database-url", default=None)
@click.option("--json", "as_json", is_flag=True, help="one JSON object per session")
@click.pass_context
@handle_errors
def sessions_verify(ctx, session_id, database_url, as_json):
    """Check sessions' hash chains against their stored records (every session without an id).

    Names the first record that does not match (edited, deleted, inserted outside axiswatch) and
    exits 1 when any does; prints each chain's head digest, which you can keep elsewhere to pin it,
    and every erasure (purge, erase) with what it removed, when, why and by whom."""
    store = store_for(ctx, database_url)
    ids = [store.resolve_id("session", session_id)] if session_id else store.session_ids()
    bad = 0
    for sid in ids:
        r = store.verify_session(sid)
        bad += not r["ok"]
        if as_json:
            click.echo(json.dumps(r))
        elif r["ok"]:
            click.echo(f"ok   {sid}  {r['links']} records  head {r['head'] or '-'}")
            for e in r["erasures"]:  # what a tombstone vouches for, when, why and by whom
                click.echo(f"     {erasure_line(e)}")
        else:
            p = r["problems"][0]
            where = f"link {p['seq']}" if p["seq"] is not None else "outside the chain"
            click.echo(f"FAIL {sid}  {p['kind']} {p['key']} ({where}): {p['problem']}"
                       + (f"  (+{len(r['problems']) - 1} more)" if len(r["problems"]) > 1 else ""))
    if not ids:
        click.echo("no sessions stored yet", err=True)
    elif not as_json:
        click.echo(f"{len(ids) - bad} of {len(ids)} session(s) verified" + (f", {bad} FAILED" if bad else ""), err=True)
    if bad:
        sys.exit(1)
