"""Commands that remove stored conversations: ``sessions erase ID`` (one session, on request) and ``sessions
purge --older-than 30d`` (retention). Both keep every session's hash chain verifiable: a tombstone in the
chain names what was removed, when, why and by whom (monitor/store/erasure.py)."""

from __future__ import annotations

import getpass
import json

import click

from monitor.cli.base import handle_errors, redis_url_for, settings_from
from monitor.cli.sessions import sessions, store_for


def _who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name in this environment (a container's uid)
        return "operator"


def _forget(ctx, database_url, ids: list[str]) -> str:
    """Remove the erased sessions' copies in the deployment's Redis (``REDIS_URL``, else the embedded one of a
    ``serve`` on this store); what was done, for the output."""
    if not ids:
        return ""
    url = redis_url_for(settings_from(ctx, database_url=database_url))
    if url is None:
        return "; no Redis known (REDIS_URL unset, no serve running on this store): live tails expire within a day"
    from monitor.streams import Streams
    from monitor.streams.forget import forget_sessions

    r = forget_sessions(Streams.from_url(url), ids)
    if r is None:
        return f"; Redis at {url} unreachable: live tails expire within a day, stream entries when trimmed"
    return f"; Redis: {r['live']} live tails, {r['entries']} stream entries, {r['dead_letters']} dead letters"


def _counts(c: dict) -> str:
    return (f"{c['turns']} turns ({c['tokens']} tokens), {c['contexts']} contexts, {c['messages']} messages, "
            f"{c['excerpts']} alert excerpts, {c['spilled']} spilled records")


def _erasing(fn):
    """The options both commands take: who, no confirmation, the store, JSON output."""
    for option in reversed((click.option("--by", default=None, help="who asks for it (default: your user name)"),
                            click.option("--yes", is_flag=True, help="do not ask for confirmation"),
                            click.option("--database-url", default=None),
                            click.option("--json", "as_json", is_flag=True))):
        fn = option(fn)
    return fn


@sessions.command("erase")
@click.argument("session_id")
@click.option("--reason", required=True, help="why (kept in the audit trail), e.g. 'erasure request #1234'")
@_erasing
@click.pass_context
@handle_errors
def sessions_erase(ctx, session_id, reason, by, yes, database_url, as_json):
    """Erase one session's conversation: message texts, replies, tokens, per-token scores, drift state and
    alert excerpts. The session, its alerts (level, turn, acknowledgements) and its interventions stay;
    ``sessions verify`` still passes and lists the erasure. Cannot be undone."""
    store = store_for(ctx, database_url)
    sid = store.resolve_id("session", session_id)
    if not yes:
        click.confirm(f"erase the conversation of session {sid}? this cannot be undone", abort=True, err=True)
    r = store.erase_session(sid, reason=reason, by=by or _who())
    redis_note = _forget(ctx, database_url, [sid])
    if as_json:
        click.echo(json.dumps(r))
    elif r["erased"]:
        click.echo(f"erased {sid}: {_counts(r['counts'])}; tombstone {r['tombstone']}{redis_note}")
    else:
        click.echo(f"{sid}: nothing left to erase{redis_note}")


@sessions.command("purge")
@click.option("--older-than", "older_than", required=True, metavar="DURATION",
              help="erase sessions whose last activity is older than this (30d, 12h, 2w)")
@click.option("--reason", default=None, help="kept in each tombstone (default: 'retention <DURATION>')")
@click.option("--dry-run", is_flag=True, help="list the sessions it would erase, erase nothing")
@_erasing
@click.pass_context
@handle_errors
def sessions_purge(ctx, older_than, reason, by, dry_run, yes, database_url, as_json):
    """Erase every session idle for longer than --older-than (as ``sessions erase`` does, one session per
    transaction). ``AXISWATCH_RETENTION_DAYS`` makes the persistence worker do this by itself."""
    from tqdm.auto import tqdm

    from monitor.durations import parse_duration

    seconds = parse_duration(older_than, "--older-than")
    store = store_for(ctx, database_url)
    ids = store.expired_sessions(seconds)
    if dry_run or not ids:
        if as_json:
            click.echo(json.dumps({"sessions": ids, "dry_run": dry_run}))
        else:
            for sid in ids:
                click.echo(sid)
            click.echo(f"{len(ids)} session(s) idle for longer than {older_than}" + (" (dry run)" if dry_run else ""),
                       err=True)
        return
    if not yes:
        click.confirm(f"erase the conversations of {len(ids)} session(s) idle for longer than {older_than}? "
                      "this cannot be undone", abort=True, err=True)
    with tqdm(total=len(ids), desc="purging", unit="session", disable=as_json, file=click.get_text_stream("stderr")) as bar:
        r = store.purge(seconds, reason=reason or f"retention {older_than}", by=by or _who(),
                        progress=lambda _: bar.update())
    redis_note = _forget(ctx, database_url, r["sessions"])
    if as_json:
        click.echo(json.dumps(r))
    else:
        click.echo(f"erased {len(r['sessions'])} session(s): {r['records']} records, {r['tokens']} tokens"
                   f"{redis_note}; sessions verify lists each erasure")
