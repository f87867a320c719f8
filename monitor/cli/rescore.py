"""``axiswatch sessions rescore``: what if the stored sessions had been scored with another axis, detector
or thresholds? Which of their alerts would be raised again (kept), which not (dropped), which are new
(added). Reads the store read-only; nothing stored changes (:mod:`monitor.rescore_run`)."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import click

from monitor.cli.base import handle_errors, load_model_for, model_options, settings_from
from monitor.cli.sessions import sessions
from monitor.records import SOURCES
from monitor.rescore import DETECTOR_CHOICES


@sessions.command("rescore")
@model_options
@click.argument("session_ids", nargs=-1)
@click.option("--axis", "axis_dir", required=True, type=click.Path(path_type=Path),
              help="the axis folder to score with (its calibrated thresholds unless --thresholds)")
@click.option("--detector", type=click.Choice(DETECTOR_CHOICES), default="axis", show_default=True,
              help="axis: the axis' calibrated rule (the drift, and the level where calibrated); drift: the drift "
                   "alone; level: the level alone; cusum: the CUSUM (needs --thresholds)")
@click.option("--thresholds", default=None, metavar="W,A,C",
              help="watch,warning,critical of the detector (the drift's for axis and drift), instead of the axis'")
@click.option("--since", default=None, help="sessions created since: a duration (24h, 7d) or an ISO date")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="at most the newest N sessions")
@click.option("--source", type=click.Choice(SOURCES), default=None, help="only sessions of this source")
@click.option("--changed", "changed_only", is_flag=True, help="list only sessions whose alerts change")
@click.option("--database-url", default=None)
@click.option("--json", "as_json", is_flag=True, help="the rescore document (every session and the summary) as JSON")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="also save the rescore document here (the dashboard's Rescore page opens it)")
@click.pass_context
@handle_errors
def sessions_rescore(ctx, model, device, dtype, layers_path, session_ids, axis_dir, detector, thresholds, since,
                     limit, source, changed_only, database_url, as_json, out):
    """Re-read stored sessions by teacher forcing with another axis (or detector, or thresholds) and
    compare the alerts they would raise with the ones they recorded: kept, added, dropped.

    SESSION_IDS (unique prefixes will do), or every session (--since, --source, --limit narrow it). The
    conversation each reply was given is rebuilt from the store and read back through the model with
    --axis's monitor layer; the scores are replayed through a fresh drift tracker as the engine would.
    Two alerts are the same when they fall in the same turn at the same level from the same detector,
    at any token of it."""
    from sqlalchemy.engine import make_url
    from tqdm.auto import tqdm

    from monitor.drift import DriftConfig, DriftTracker
    from monitor.errors import InputError
    from monitor.rescore import detectors_for, parse_thresholds
    from monitor.rescore_report import document
    from monitor.rescore_run import Rescorer, rescore
    from monitor.rescore_store import open_read_only, parse_since, select_sessions
    from probes.artifacts import load_axis, read_axis_meta

    if session_ids and (since or source):
        raise InputError("give session ids, or --since/--source to select sessions, not both")
    if axis_dir.is_file() and axis_dir.name == "axis.json":
        axis_dir = axis_dir.parent
    if not axis_dir.is_dir():
        raise InputError(f"--axis {axis_dir}: not a folder (an axis folder holds axis.json and axis.safetensors)")
    read_axis_meta(axis_dir)  # not an axis folder: says so before the model loads
    override = parse_thresholds(thresholds) if thresholds else None
    s = settings_from(ctx, model=model, device=device, dtype=dtype, layers_path=layers_path, database_url=database_url)
    # the axis' calibration with the deployment's drift settings; a deployment's AXISWATCH_THRESHOLD_* were set
    # for its own axis, not this one: only --thresholds replaces the calibrated ones
    drift_th = (override.watch, override.warning, override.critical) if override and detector in ("axis", "drift") \
        else (None, None, None)
    try:
        th, config = replace(s, axis=str(axis_dir), thresholds=drift_th).axis_drift()
    except InputError:
        if override is None or detector in ("axis", "drift"):
            raise
        th, config = override, DriftConfig().resolved(override)  # level or cusum on an uncalibrated axis
    dets = detectors_for(detector, th, config, override)  # a bad choice fails before the model loads

    def tracker() -> DriftTracker:
        fresh = detectors_for(detector, th, config, override)
        return DriftTracker(fresh[0].thresholds, config, policy="flag", detectors=fresh)

    cutoff = parse_since(since) if since else None
    art = load_axis(axis_dir, roles=False)
    store = open_read_only(s.database_url)
    try:
        ids = select_sessions(store, tuple(session_ids), cutoff, limit, source)
        results, model_id = [], None
        if ids:  # the model loads only for something to read
            lm = load_model_for(s)
            art.check(lm.model_id, lm.hidden_size, lm.n_layers)
            model_id, rescorer = lm.model_id, Rescorer(lm, art, tracker)
            with tqdm(total=len(ids), desc="rescore", unit="session", file=sys.stderr, mininterval=1) as bar:
                results = [r.as_dict() for r in rescore(store, ids, rescorer, lambda _: bar.update())]
    finally:
        store.close()
    doc = document(results, created_at=time.time(), database=make_url(s.database_url).render_as_string(True),
                   model=model_id, axis={"path": str(axis_dir.resolve()), "fingerprint": art.fingerprint(),
                                            "monitor_layer": art.monitor_layer, "model_id": art.model_id},
                   detector=detector, detectors=[d.describe() for d in dets], drift=config.as_dict(),
                   selection={"ids": list(session_ids), "since": since, "limit": limit, "source": source})
    if not ids:
        click.echo("no sessions match" if since or source else "no sessions stored yet", err=True)
    if out is not None:
        out.write_text(json.dumps(doc) + "\n")
        click.echo(f"wrote {out}", err=True)
    if as_json:
        click.echo(json.dumps(doc))
        return
    for line in report_lines(doc, changed_only):
        click.echo(line)


def _detectors(doc: dict) -> str:
    parts = []
    for d in doc["detectors"]:
        th = d["thresholds"]
        parts.append(f"{d['name']} ({th['watch']:+.1f} / {th['warning']:+.1f} / {th['critical']:+.1f})")
    return " + ".join(parts)


def report_lines(doc: dict, changed_only: bool = False) -> list[str]:
    """The rescore document for people: one line per session (its changes), then the summary by level."""
    from monitor.rescore_report import alert_label, level_rows

    ax, summ = doc["axis"], doc["summary"]
    lines = [f"rescored with {ax['path']} (layer {ax['monitor_layer']}, fingerprint {ax['fingerprint']}): "
             f"{_detectors(doc)}"]
    shown = [x for x in doc["sessions"] if not changed_only or x["added"] or x["dropped"] or x["skipped"]]
    width = max([len(x["session_id"]) for x in shown] + [7])
    if shown:
        lines.append(f"{'session':{width}s} {'source':7s} {'policy':7s} {'peak (recorded -> rescored)':28s} "
                     f"{'kept':>4s} {'added':>5s} {'dropped':>7s}  changes")
    for x in shown:
        head = f"{x['session_id']:{width}s} {x['source']:7s} {x['policy'] or '-':7s}"
        if x["skipped"]:
            lines.append(f"{head} skipped: {x['skipped']}")
            continue
        changes = [f"+{alert_label(a)}" for a in x["added"]] + [f"-{alert_label(a)}" for a in x["dropped"]]
        peak = f"{x['recorded_peak']} -> {x['rescored_peak']}"
        lines.append(f"{head} {peak:28s} {len(x['kept']):4d} {len(x['added']):5d} {len(x['dropped']):7d}  "
                     + (", ".join(changes) or "-"))
        lines += [f"{'':{width}s}   note: {n}" for n in x["notes"]]
    lines.append("")
    lines.append(f"{'level':9s} {'recorded':>8s} {'rescored':>8s} {'kept':>6s} {'added':>6s} {'dropped':>7s}  "
                 "sessions at or above it (recorded -> rescored)")
    for r in level_rows(summ):
        reach = "" if r["sessions_recorded"] is None else f"{r['sessions_recorded']} -> {r['sessions_rescored']}"
        lines.append(f"{r['level']:9s} {r['recorded']:8d} {r['rescored']:8d} {r['kept']:6d} {r['added']:6d} "
                     f"{r['dropped']:7d}  {reach}")
    lines.append(f"{summ['rescored']} session(s) rescored, {summ['changed']} changed ({summ['with_added']} with "
                 f"alerts added, {summ['with_dropped']} with alerts dropped)"
                 + (f", {summ['skipped']} skipped" if summ["skipped"] else ""))
    return lines
