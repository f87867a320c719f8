"""Commands that compute, calibrate, inspect and import the Assistant Axis."""

from __future__ import annotations

import json
from pathlib import Path

import click

from monitor.cli.base import (
    cli,
    handle_errors,
    load_axis_for,
    load_model_for,
    max_tokens_option,
    model_options,
    settings_from,
)
from monitor.errors import AxiswatchError

JUDGES = ("offline", "trees", "lexical", "openai")  # calibrate.judge.make_judge


@cli.command("compute-axis")
@model_options
@click.option("--preset", type=click.Choice(["quick", "standard", "full"]), default="quick", show_default=True)
@click.option("--work", type=click.Path(path_type=Path), default=None, help="checkpoint folder (default runs/<model>-<preset>)")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="axis folder to write (default <work>/axis)")
@click.option("--judge", type=click.Choice(JUDGES), default=None,
              help="role-adherence judge  [env AXISWATCH_JUDGE]")
@click.option("--batch-size", type=int, default=48, show_default=True)
@click.option("--roles", type=click.Path(exists=True, path_type=Path), default=None, help="roles JSON (default: the bundled set)")
@click.option("--questions", type=click.Path(exists=True, path_type=Path), default=None, help="questions JSON (default: bundled)")
@click.option("--fresh", is_flag=True, help="delete the work folder's checkpoints first")
@click.pass_context
@handle_errors
def compute_axis_cmd(ctx, model, device, dtype, layers_path, preset, work, out, judge, batch_size, roles, questions, fresh):
    """Compute the Assistant Axis of a chat model (the paper's pipeline; resumable)."""
    import shutil

    from calibrate.judge import make_judge
    from calibrate.pipeline import compute_axis
    from calibrate.roles import PRESETS, load_questions, load_roles

    s = settings_from(ctx, model=model, device=device, dtype=dtype, layers_path=layers_path, judge=judge)
    work = work or Path("runs") / f"{Path(s.model).name.replace('.gguf', '')}-{preset}"
    if fresh and work.exists():
        shutil.rmtree(work)
    lm = load_model_for(s)
    art, report = compute_axis(lm, work, out or work / "axis", PRESETS[preset], make_judge(s.judge), batch_size,
                               load_roles(roles) if roles else None, load_questions(questions) if questions else None)
    m = report["at_monitor_layer"]
    click.echo(f"axis written to {art.path}: monitor layer {art.monitor_layer}, |cos(PC1, axis)| {m['abs_cos_pc1_axis']:.3f}, "
               f"held-out AUROC {m['auroc_heldout']:.3f}, {report['n_roles_used']} roles")
    # the last step: alert thresholds from benign conversations the model answers with this axis
    _alerts(lm, art, s, work / "alerts", False, preset == "quick")


@cli.command("calibrate-capping")
@model_options
@click.option("--axis", type=click.Path(exists=True, path_type=Path), default=None, help="axis folder (default: the shipped one)")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="where to write capping.* (default: the axis folder)")
@click.option("--work", type=click.Path(path_type=Path), default=None,
              help="checkpoint folder of the sweep (default runs/capping-<axis fingerprint>); a rerun resumes it")
@click.option("--fresh", is_flag=True, help="delete the sweep's checkpoints first")
@click.option("--reanalyse", is_flag=True, help="only recompute the report from the stored answers (no generation)")
@click.option("--quick", is_flag=True, help="a 2-setting sweep on 6 personas and 10 tasks (a smoke test, minutes)")
@click.option("--percentiles", default=None, help="comma-separated, e.g. 25,50,75,90")
@click.option("--widths", default=None, help="window widths in layers, e.g. 4,6")
@click.option("--starts", default=None, help="window starts as fractions of depth, e.g. 0.5,0.6,0.7")
@click.option("--settings", "named", default=None,
              help="more settings, ';'-separated: two-tier LIGHT>STRONG (e.g. none>L18-23_p90, L18-23_p75>L15-23_p95), "
                   "per-layer floors (L18-23_p75,75,90,90,95,95), ':generated' to floor only reply tokens")
@click.option("--no-grid", is_flag=True, help="only the --settings, not the windows x percentiles grid")
@click.option("--max-capability-drop", type=float, default=None,
              help="the rule: largest adoption drop among settings losing at most this much accuracy  [default: 0.02]")
@click.option("--judge", type=click.Choice(JUDGES), default=None)
@click.option("--batch-size", type=int, default=48, show_default=True)
@click.pass_context
@handle_errors
def calibrate_capping(ctx, model, device, dtype, layers_path, axis, out, work, fresh, reanalyse, quick, percentiles,
                      widths, starts, named, no_grid, max_capability_drop, judge, batch_size):
    """Sweep capping layer windows x thresholds on persona adoption and capability; write the table, the
    Pareto plot and the chosen config (resumable)."""
    import shutil
    from dataclasses import replace

    from calibrate.capping import QUICK_SWEEP, Sweep, SweepSpec, choose, default_work, write_capping
    from calibrate.judge import make_judge

    s = settings_from(ctx, model=model, device=device, dtype=dtype, layers_path=layers_path,
                  axis=str(axis) if axis else None, judge=judge)
    spec = QUICK_SWEEP if quick else SweepSpec()
    parse = lambda v, f: tuple(f(x) for x in v.split(",")) if v else None  # noqa: E731
    spec = replace(spec, **{k: v for k, v in {"percentiles": parse(percentiles, int), "widths": parse(widths, int),
                                              "starts": parse(starts, float),
                                              "max_capability_drop": max_capability_drop}.items() if v is not None})
    if named:
        spec = replace(spec, named=tuple(x.strip() for x in named.split(";") if x.strip()))
    if no_grid:
        if not spec.named:
            raise click.UsageError("--no-grid needs --settings")
        spec = replace(spec, percentiles=())
    if reanalyse:
        from probes.artifacts import load_axis

        art = load_axis(s.axis_dir())
    else:
        lm = load_model_for(s)
        art = load_axis_for(s, lm)
    sweep = Sweep(work or default_work(art), art, spec)
    if fresh and sweep.work.exists() and not reanalyse:
        shutil.rmtree(sweep.work)
    if not reanalyse:
        sweep.run(lm, batch_size)
    cfg, report = choose(sweep, make_judge(s.judge))
    write_capping(cfg, report, out or art.path)
    c, b = report["chosen"], report["unsteered"]
    click.echo(f"capping {cfg.id}: persona adoption {b['adoption']:.2f} -> {c['adoption']:.2f} "
               f"({c['relative_reduction']:.0%} lower), capability {b['capability']:.3f} -> {c['capability']:.3f} "
               f"({c['capability_change'] * 100:+.1f} points); rule: {report['rule']}; written to {out or art.path}")
    if c.get("flagged_personas") is not None:
        click.echo(f"  two tiers: the detector flagged {c['flagged_personas']:.0%} of persona answers and "
                   f"{c['flagged_tasks']:.0%} of capability tasks (benign sessions) into the strong tier")


@cli.command("calibrate-alerts")
@model_options
@click.option("--axis", type=click.Path(exists=True, path_type=Path), default=None, help="axis folder (default: the shipped one)")
@click.option("--work", type=click.Path(path_type=Path), default=None,
              help="checkpoint folder (default runs/alerts-<axis fingerprint>); a rerun resumes it")
@click.option("--fresh", is_flag=True, help="delete the checkpoints first")
@click.option("--quick", is_flag=True, help="12 conversations x 2 prompts, 32 tokens a reply (a smoke test)")
@max_tokens_option(96)
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.pass_context
@handle_errors
def calibrate_alerts_cmd(ctx, model, device, dtype, layers_path, axis, work, fresh, quick, max_tokens, batch_size):
    """Calibrate the drift alert thresholds on benign multi-turn conversations the model itself answers."""
    s = settings_from(ctx, model=model, device=device, dtype=dtype, layers_path=layers_path, axis=str(axis) if axis else None)
    lm = load_model_for(s)
    art = load_axis_for(s, lm)
    work = work or Path("runs") / f"alerts-{art.fingerprint()[:8]}{'-quick' if quick else ''}"
    _alerts(lm, art, s, work, fresh, quick, max_tokens, batch_size)


def _alerts(lm, art, s, work: Path, fresh: bool, quick: bool, max_new_tokens: int = 96, batch_size: int = 32) -> None:
    import shutil

    from calibrate.alerts import calibrate_alerts
    from monitor.drift import DriftConfig

    if fresh and work.exists():
        shutil.rmtree(work)
    # the tracker's own defaults, with what the settings override
    cfg = DriftConfig(**{k: v for k, v in {"alpha": s.ewma_alpha, "min_tokens": s.min_tokens,
                                           "baseline": s.drift_baseline}.items() if v is not None})
    al = calibrate_alerts(lm, art, work, cfg, quick, max_new_tokens, batch_size)
    th = al["thresholds"]
    lv = al.get("level")
    level = (f"; level detector (running score, absolute, EWMA {lv['alpha']}): watch {lv['thresholds']['watch']:+.2f}, "
             f"warning {lv['thresholds']['warning']:+.2f}, critical {lv['thresholds']['critical']:+.2f}") if lv else ""
    click.echo(f"alert thresholds (drift below the session's opening, {al['n_measured']} benign conversations): "
               f"watch {th['watch']:+.2f}, warning {th['warning']:+.2f}, critical {th['critical']:+.2f}{level}; "
               f"written to {art.path / 'axis.json'}")


@cli.command("evaluate-steering")
@model_options
@click.option("--axis", type=click.Path(exists=True, path_type=Path), default=None, help="axis folder (default: the shipped one)")
@click.option("--coeffs", default="-0.2,-0.1,-0.05,0,0.05,0.1,0.2", show_default=True,
              help="steering coefficients in units of the monitor layer's mean residual norm")
@max_tokens_option(48)
@click.option("--out", type=click.Path(path_type=Path), default=None, help="report file (default: <axis>/steering_report.json)")
@click.pass_context
@handle_errors
def evaluate_steering_cmd(ctx, model, device, dtype, layers_path, axis, coeffs, max_tokens, out):
    """Rate of non-assistant identity claims in answers to identity questions, per steering coefficient."""
    from calibrate.roles import load_json
    from calibrate.steering import evaluate_steering

    s = settings_from(ctx, model=model, device=device, dtype=dtype, layers_path=layers_path, axis=str(axis) if axis else None)
    try:
        cs = tuple(float(c) for c in coeffs.split(","))
    except ValueError:
        raise AxiswatchError(f"--coeffs must be comma-separated numbers, not {coeffs!r}") from None
    lm = load_model_for(s)
    art = load_axis_for(s, lm)
    report = evaluate_steering(lm, art, load_json("questions.json")["identity"], cs, max_new_tokens=max_tokens)
    path = out or art.path / "steering_report.json"
    path.write_text(json.dumps(report, indent=1))
    for r in report["rows"]:
        click.echo(f"steer {r['coeff']:+.2f} x norm ({r['absolute']:+7.1f}): non-assistant identity {r['non_assistant_rate']:.0%}")
    click.echo(f"written to {path}")


@cli.group()
def axis():
    """Inspect and import axis artifacts."""


@axis.command("show")
@click.option("--axis", "axis_path", type=click.Path(exists=True, path_type=Path), default=None,
              help="axis folder (default: the shipped one)")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@handle_errors
def axis_show(ctx, axis_path, as_json):
    """Metadata of the axis in use and where its tensors are."""
    s = settings_from(ctx, axis=str(axis_path) if axis_path else None)
    art = load_axis_for(s)
    folder = art.path.resolve()
    files = {k: str(folder / f) if (folder / f).exists() else None for k, f in
             (("axis", "axis.safetensors"), ("default_vector", "default_vector.safetensors"),
              ("role_vectors", "role_vectors.safetensors"), ("capping", "capping.json"))}
    report = json.loads((folder / "report.json").read_text()) if (folder / "report.json").exists() else {}
    out = {"model": art.model_id, "monitor_layer": art.monitor_layer, "n_layers": art.n_layers,
           "hidden_size": art.hidden_size, "files": files, "report": report, "alerting": _alerting(art.calibration),
           "in_use": _in_use(s, art.calibration)}
    if as_json:
        click.echo(json.dumps(out))
        return
    click.echo(f"model {art.model_id}: {art.n_layers} layers x {art.hidden_size}, monitor layer {art.monitor_layer}")
    for k, v in files.items():
        click.echo(f"  {k:15s} {v or '-'}")
    m = report.get("at_monitor_layer", {})
    if m:
        click.echo(f"  |cos(PC1, axis)| {m.get('abs_cos_pc1_axis', float('nan')):.3f}   "
                   f"held-out AUROC {m.get('auroc_heldout') or float('nan'):.3f}")
    al, used = out["alerting"], out["in_use"]
    if al is None:
        click.echo("  alert thresholds: none calibrated (run 'axiswatch calibrate-alerts', or set "
                   "AXISWATCH_THRESHOLD_WATCH / _WARNING / _CRITICAL)")
    else:
        click.echo(f"  alert thresholds {_levels(al['thresholds'], al['calibrated_for'])}"
                   + (f"; from {al['n_conversations']} benign conversations" if al.get("n_conversations") else ""))
        knobs = {k: v for k, v in al["calibrated_for"].items() if not k.startswith("level_")}
        click.echo("  calibrated for: " + ", ".join(f"{k} {v}" for k, v in knobs.items()))
        lt = al["calibrated_for"].get("level_thresholds")
        if lt:
            click.echo(f"  level detector (running score, absolute, EWMA {al['calibrated_for'].get('level_alpha')}): "
                       f"watch {lt[0]:+.2f}, warning {lt[1]:+.2f}, critical {lt[2]:+.2f}")
    if used is not None and (al is None or used["thresholds"] != al["thresholds"]):
        click.echo(f"  in use, from the AXISWATCH_THRESHOLD_* settings {_levels(used['thresholds'], used['drift'])}")


def _levels(th: dict, knobs: dict) -> str:
    what = "drift from the session's reference" if knobs.get("baseline", "session") == "session" else "raw projection"
    return f"({what}): watch {th['watch']:+.2f}, warning {th['warning']:+.2f}, critical {th['critical']:+.2f}"


def _in_use(s, calibration: dict) -> dict | None:
    """The thresholds and drift config a service on these settings runs with (None: it could not start)."""
    try:
        thresholds, drift = s.drift_setup(calibration)
    except AxiswatchError:
        return None
    return {"thresholds": thresholds.as_dict(), "drift": drift.as_dict()}


def _alerting(calibration: dict) -> dict | None:
    """The axis' alert calibration: its thresholds and the drift knobs they hold for (None: none)."""
    from monitor.drift import thresholds_from_calibration

    if not (calibration or {}).get("alerting"):
        return None
    thresholds, knobs = thresholds_from_calibration(calibration)
    al = calibration["alerting"]
    return {"thresholds": thresholds.as_dict(), "calibrated_for": knobs,
            "n_conversations": al.get("n_measured", al.get("n_conversations")), "budgets": al.get("budgets"),
            "rule": al.get("rule")}


@axis.command("import-paper")
@click.option("--axis-pt", type=click.Path(exists=True, path_type=Path), required=True, help="the paper's assistant_axis.pt")
@click.option("--capping-pt", type=click.Path(exists=True, path_type=Path), default=None, help="the paper's capping_config.pt")
@click.option("--experiment", default=None, help="capping experiment id (default: the first)")
@click.option("--model-id", required=True, help="the model the files belong to, e.g. Qwen/Qwen3-32B")
@click.option("--monitor-layer", type=int, default=None, help="default: the middle layer")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="axis folder to write")
@handle_errors
def axis_import(axis_pt, capping_pt, experiment, model_id, monitor_layer, out):
    """Convert the paper's published .pt files (loaded with weights_only=True) to an axis folder."""
    from probes.artifacts import import_paper_axis, import_paper_capping

    art = import_paper_axis(axis_pt, model_id, monitor_layer)
    art.save(out)
    if capping_pt:
        cfg = import_paper_capping(capping_pt, experiment, model_id)
        cfg.check(art.hidden_size, art.n_layers)
        cfg.save(out)
    click.echo(f"wrote {out}: {art.n_layers} layers x {art.hidden_size}, monitor layer {art.monitor_layer}"
               + (f", capping {len(cfg.layers)} layers" if capping_pt else ""))
