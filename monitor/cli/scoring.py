"""Commands that score text with the axis: audit, generate and the demo."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from monitor.cli.base import (
    check_max_tokens,
    cli,
    handle_errors,
    load_axis_for,
    load_capping_for,
    load_model_for,
    max_tokens_option,
    model_options,
    settings_from,
)
from monitor.errors import AxiswatchError


@cli.command()
@model_options
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--axis", type=click.Path(exists=True, path_type=Path), default=None,
              help="axis folder (default: the shipped one)  [env AXISWATCH_AXIS]")
@click.option("--layer", type=int, default=None, help="layer to score (default: the axis' monitor layer)")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per conversation on stdout")
@click.pass_context
@handle_errors
def audit(ctx, model, device, dtype, layers_path, files, axis, layer, as_json):
    """Score existing conversations by teacher forcing.

    FILES are JSON or JSONL with OpenAI-style 'messages' or the paper's
    'conversation' transcripts. Bad records are reported on stderr (file and
    record) and skipped; the exit status is then 1.
    """
    from monitor.drift import DriftTracker
    from monitor.verdict import verdict
    from probes.audit import read_transcripts, score_conversation

    s = settings_from(ctx, model=model, device=device, dtype=dtype, layers_path=layers_path, axis=str(axis) if axis else None)
    lm = load_model_for(s)
    art = load_axis_for(s, lm)
    layer = art.monitor_layer if layer is None else layer
    if not 0 <= layer < art.n_layers:
        raise AxiswatchError(f"--layer {layer} outside 0..{art.n_layers - 1}")
    v = art.unit(layer)
    drift, why = _audit_drift(s, art, layer)
    if why and not as_json:
        click.echo(f"note: no drift states: {why}", err=True)
    failed = 0
    for f in files:
        for where, rec in read_transcripts(f):
            try:
                if isinstance(rec, AxiswatchError):
                    raise rec
                rid, msgs = rec
                turns = score_conversation(lm, msgs, v, layer)
            except AxiswatchError as e:
                msg = str(e)
                click.echo(f"error: {msg if msg.startswith(str(f)) else f'{where}: {msg}'}", err=True)
                failed += 1
                continue
            # unnamed records are named by the number their errors would use: JSONL line, or JSON list index
            place = where[len(str(f)):].split()
            out = verdict(rid if rid is not None else ":".join([Path(f).name, *place[-1:]]), lm.model_id, layer,
                          [t.as_dict() for t in turns], None if drift is None else DriftTracker(*drift, policy="flag"))
            if as_json:
                click.echo(json.dumps(out))
            else:
                _print_trajectory(out)
    if failed:
        sys.exit(1)


def _audit_drift(s, art, layer: int):
    """The deployment's thresholds and drift config for this axis ((thresholds, config), None), or
    (None, why) when there are none to apply: an axis without an alert calibration, or another layer."""
    if layer != art.monitor_layer:
        return None, f"the alert thresholds hold for the monitor layer {art.monitor_layer}, not --layer {layer}"
    try:
        return s.drift_setup(art.calibration), None
    except AxiswatchError as e:
        return None, str(e)


def _bar(score: float, lo: float, hi: float, width: int = 30) -> str:
    frac = 0.0 if hi <= lo else min(max((score - lo) / (hi - lo), 0.0), 1.0)
    return "#" * int(round(frac * width)) + "." * (width - int(round(frac * width)))


def _print_trajectory(out: dict) -> None:
    """Human-readable per-token trajectory of one scored conversation."""
    scores = [s for t in out["turns"] for s in t["scores"]]
    lo, hi = (min(scores), max(scores)) if scores else (0, 1)
    click.echo(f"conversation {out['id']}  model {out['model']}  layer {out['layer']}  (higher = more Assistant-like)")
    alerts = out.get("alerts") or []
    for t in out["turns"]:
        mean = t["mean"]
        state = f"  state {t['state']}" if "state" in t else ""
        click.echo(f"\n  turn {t['index']}  mean {mean:+.2f}{state}" if mean is not None
                   else f"\n  turn {t['index']}  (empty){state}")
        at = {a["token_index"]: a for a in alerts if a["turn"] == t["index"]}
        for k, (tok, sc) in enumerate(zip(t["tokens"], t["scores"])):
            a = at.get(k)
            mark = f"  <- ALERT {a['level']}: running {a['score']:+.2f} below {a['threshold']:+.2f}" if a else ""
            click.echo(f"    {sc:+8.2f} {_bar(sc, lo, hi)} {tok!r}{mark}")
    if "state" in out:
        levels = ", ".join(f"{a['level']} (turn {a['turn']}, token {a['token_index']})" for a in alerts)
        drift = "-" if out["drift"] is None else f"{out['drift']:+.2f}"
        click.echo(f"\n  final state {out['state']}  drift {drift}  alerts: {levels or 'none'}")


def _read_generate_records(path: Path) -> list[dict]:
    from monitor.errors import InputError

    try:
        lines = path.read_bytes().decode("utf-8").splitlines()
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    records = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{path} line {n}: invalid JSON ({e.msg})") from None
        if not isinstance(rec, dict):
            raise InputError(f"{path} line {n}: expected an object with 'user' or 'messages'")
        if isinstance(rec.get("messages"), list):
            msgs = rec["messages"]
        elif isinstance(rec.get("user"), str):
            msgs = ([{"role": "system", "content": rec["system"]}] if isinstance(rec.get("system"), str) else []) + \
                   [{"role": "user", "content": rec["user"]}]
        else:
            raise InputError(f"{path} line {n}: needs 'user' (string) or 'messages' (list)")
        records.append({"id": str(rec.get("id", n)), "messages": msgs, "where": f"{path} line {n}"})
    return records


@cli.command()
@model_options
@click.option("--input", "input_path", required=True, type=click.Path(path_type=Path), help="JSONL: {id, system?, user} or {id, messages}")
@click.option("--axis", type=click.Path(exists=True, path_type=Path), default=None, help="axis folder (default: the shipped one)")
@max_tokens_option(64)
@click.option("--temperature", type=float, default=0.0, show_default=True, help="0 = greedy")
@click.option("--cap", is_flag=True, help="apply the capping config (the axis folder's, or --capping); a two-tier "
              "config's light tier, what every session under policy cap runs until the detector flags it")
@click.option("--capping", type=click.Path(exists=True, path_type=Path), default=None, help="capping config folder")
@click.option("--steer", type=float, default=None, help="add C x (mean residual norm) x unit axis at the monitor layer")
@click.option("--batch-size", type=int, default=None, help="records per batch  [env AXISWATCH_BATCH_SIZE]")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per record on stdout")
@click.pass_context
@handle_errors
def generate(ctx, model, device, dtype, layers_path, input_path, axis, max_tokens, temperature, cap, capping, steer,
             batch_size, as_json):
    """Generate with monitoring: per-token scores from the generation's own forward pass."""
    import torch

    from probes.generation import LIGHT, GenerationOptions, SteerPlan, cap_plan
    from probes.generation import generate as run
    from probes.models import normalise_messages
    from probes.ops import steer_coefficient

    s = settings_from(ctx, model=model, device=device, dtype=dtype, layers_path=layers_path,
                  axis=str(axis) if axis else None, batch_size=batch_size)
    records = _read_generate_records(input_path)
    check_max_tokens(max_tokens, s)
    lm = load_model_for(s)
    for r in records:
        try:
            normalise_messages(lm.tokenizer, r["messages"])
        except AxiswatchError as e:
            raise AxiswatchError(f"{r['where']}: {e}") from None
    art = load_axis_for(s, lm)
    plan, tiers = None, None
    if cap or capping:
        cfg = load_capping_for(s, art, lm, capping)
        plan = cap_plan(cfg)
        tiers = LIGHT if cfg.light_taus is not None and cfg.conditional else None  # else: its floors, every row
    steering = None
    if steer is not None:
        if art.mean_norm() is None:
            raise AxiswatchError(f"--steer is in units of the mean residual norm, which the axis in {art.path} "
                                 "does not record (imported axes lack calibration statistics)")
        steering = SteerPlan(art.monitor_layer, art.unit(), steer_coefficient(steer, art.mean_norm()))
    opts = GenerationOptions(max_new_tokens=max_tokens, temperature=temperature)
    for i in range(0, len(records), s.batch_size):
        chunk = records[i:i + s.batch_size]
        rows = torch.full((len(chunk),), tiers, dtype=torch.long) if tiers is not None else None
        outs = run(lm, [r["messages"] for r in chunk], opts, axis=art.unit(), monitor_layer=art.monitor_layer,
                   capping=plan, cap_rows=rows, steering=steering)
        for r, o in zip(chunk, outs):
            rec = {"id": r["id"], "text": o.text, "tokens": o.tokens, "scores": o.scores, "layer": art.monitor_layer,
                   "capped": o.capped}
            if as_json:
                click.echo(json.dumps(rec))
            else:
                mean = sum(o.scores) / len(o.scores) if o.scores else float("nan")
                click.echo(f"[{r['id']}] mean {mean:+.2f}{' capped' if o.capped else ''}: {o.text}")


@cli.command()
@model_options
@click.option("--url", default=None, help="drive a running 'axiswatch serve' (e.g. http://127.0.0.1:8000/v1); default: in-process")
@max_tokens_option(40)
@click.option("--transcript", is_flag=True, help="instead, score the bundled drifting transcript by teacher forcing")
@click.option("--file", "path", type=click.Path(exists=True, path_type=Path), default=None,
              help="with --transcript: score this transcript file instead")
@click.pass_context
@handle_errors
def demo(ctx, model, device, dtype, layers_path, url, max_tokens, transcript, path):
    """Drive scripted conversations (coding, an emotionally vulnerable user, a push for meta-reflection)
    through the monitor and show how each one's score and drift state move, turn by turn."""
    from importlib import resources

    if transcript or path is not None:
        path = path or Path(str(resources.files("monitor") / "data" / "sample_conversation.json"))
        ctx.invoke(audit, model=model, device=device, dtype=dtype, layers_path=layers_path, files=(path,), axis=None,
                   layer=None, as_json=False)
        return
    from monitor.demo import run_demo

    s = settings_from(ctx, model=model, device=device, dtype=dtype, layers_path=layers_path)
    check_max_tokens(max_tokens, s, remote=url is not None)
    run_demo(s, url, max_tokens, click.echo)
