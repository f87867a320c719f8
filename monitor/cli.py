"""The ``axiswatch`` command line: the front door.

Every command reads :class:`Settings` from the environment once; options
override it. Errors from the :mod:`probes.errors` tree become one line on
stderr and exit status 1.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from pathlib import Path

import click

from monitor.settings import Settings
from probes.errors import AxiswatchError


def _errors(fn):
    @functools.wraps(fn)
    def wrapper(*a, **kw):
        try:
            return fn(*a, **kw)
        except AxiswatchError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(1)

    return wrapper


def model_options(fn):
    for opt in reversed([
        click.option("--model", default=None, help="'default' (bundled SmolLM2-135M-Instruct), a hub id, a folder or a .gguf file  [env AXISWATCH_MODEL]"),
        click.option("--device", default=None, help="cpu, cuda, cuda:N, mps or auto  [env AXISWATCH_DEVICE]"),
        click.option("--dtype", default=None, type=click.Choice(["float32", "bfloat16", "float16"]), help="[env AXISWATCH_DTYPE]"),
        click.option("--layers-path", default=None, help="dotted path of the decoder-layer list, for unknown architectures  [env AXISWATCH_LAYERS_PATH]"),
    ]):
        fn = opt(fn)
    return fn


def _settings(ctx, **kw) -> Settings:
    return ctx.obj.with_(**kw)


def _load(s: Settings):
    from probes.models import load_model

    return load_model(s.model, s.device, s.dtype, s.cache_dir, s.layers_path)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="log progress details to stderr")
@click.pass_context
def cli(ctx, verbose):
    """axiswatch: persona-drift monitoring on the Assistant Axis."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        ctx.obj = Settings.from_env()
    except AxiswatchError as e:
        raise click.UsageError(str(e)) from None


@cli.command("compute-axis")
@model_options
@click.option("--preset", type=click.Choice(["quick", "standard", "full"]), default="quick", show_default=True)
@click.option("--work", type=click.Path(path_type=Path), default=None, help="checkpoint folder (default runs/<model>-<preset>)")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="axis folder to write (default <work>/axis)")
@click.option("--judge", type=click.Choice(["offline", "openai"]), default=None, help="role-adherence judge  [env AXISWATCH_JUDGE]")
@click.option("--batch-size", type=int, default=48, show_default=True)
@click.option("--roles", type=click.Path(exists=True, path_type=Path), default=None, help="roles JSON (default: the bundled set)")
@click.option("--questions", type=click.Path(exists=True, path_type=Path), default=None, help="questions JSON (default: bundled)")
@click.option("--fresh", is_flag=True, help="delete the work folder's checkpoints first")
@click.pass_context
@_errors
def compute_axis_cmd(ctx, model, device, dtype, layers_path, preset, work, out, judge, batch_size, roles, questions, fresh):
    """Compute the Assistant Axis of a chat model (the paper's pipeline; resumable)."""
    import shutil

    from probes.judge import make_judge
    from probes.pipeline import compute_axis
    from probes.roles import PRESETS, load_questions, load_roles

    s = _settings(ctx, model=model, device=device, dtype=dtype, layers_path=layers_path, judge=judge)
    work = work or Path("runs") / f"{Path(s.model).name.replace('.gguf', '')}-{preset}"
    if fresh and work.exists():
        shutil.rmtree(work)
    lm = _load(s)
    art, report = compute_axis(lm, work, out or work / "axis", PRESETS[preset], make_judge(s.judge), batch_size,
                               load_roles(roles) if roles else None, load_questions(questions) if questions else None)
    m = report["at_monitor_layer"]
    click.echo(f"axis written to {art.path}: monitor layer {art.monitor_layer}, |cos(PC1, axis)| {m['abs_cos_pc1_axis']:.3f}, "
               f"held-out AUROC {m['auroc_heldout']:.3f}, {report['n_roles_used']} roles")


@cli.command("calibrate-capping")
@model_options
@click.option("--axis", type=click.Path(exists=True, path_type=Path), default=None, help="axis folder (default: the shipped one)")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="where to write capping.* (default: the axis folder)")
@click.option("--quick", is_flag=True, help="a 2-setting sweep on 8 personas (a smoke test, minutes)")
@click.option("--percentiles", default=None, help="comma-separated, e.g. 10,25,50,75")
@click.option("--widths", default=None, help="window widths in layers, e.g. 4,6")
@click.option("--starts", default=None, help="window starts as fractions of depth, e.g. 0.5,0.6,0.7")
@click.option("--judge", type=click.Choice(["offline", "openai"]), default=None)
@click.option("--batch-size", type=int, default=48, show_default=True)
@click.pass_context
@_errors
def calibrate_capping(ctx, model, device, dtype, layers_path, axis, out, quick, percentiles, widths, starts, judge, batch_size):
    """Sweep capping layer windows x thresholds; write the Pareto table and the chosen config."""
    from dataclasses import replace

    from probes.capping import QUICK_SWEEP, SweepSpec, calibrate, write_capping
    from probes.judge import make_judge

    s = _settings(ctx, model=model, device=device, dtype=dtype, layers_path=layers_path,
                  axis=str(axis) if axis else None, judge=judge)
    spec = QUICK_SWEEP if quick else SweepSpec()
    parse = lambda v, f: tuple(f(x) for x in v.split(",")) if v else None  # noqa: E731
    spec = replace(spec, **{k: v for k, v in {"percentiles": parse(percentiles, int), "widths": parse(widths, int),
                                              "starts": parse(starts, float)}.items() if v})
    lm = _load(s)
    art = _load_axis(s, lm)
    cfg, report = calibrate(lm, art, make_judge(s.judge), spec, batch_size)
    write_capping(cfg, report, out or art.path)
    c = report["chosen"]
    click.echo(f"capping {cfg.id}: adoption {report['baseline_adoption']:.2f} -> {c['adoption']:.2f} "
               f"({c['relative_reduction']:.0%} lower), benign unchanged {c['benign_unchanged']:.0%}; "
               f"written to {out or art.path}")


def _load_axis(s: Settings, lm=None):
    """The axis artifact in use, checked against the model when one is loaded."""
    from probes.artifacts import load_axis

    art = load_axis(s.axis_dir())
    if lm is not None:
        art.check(lm.model_id, lm.hidden_size, lm.n_layers)
    return art


def _load_capping(s: Settings, art, lm, path: Path | None = None):
    from probes.artifacts import load_capping
    from probes.errors import ArtifactError

    folder = path or (Path(s.capping) if s.capping else art.path)
    if not (Path(folder) / "capping.json").exists() and not Path(folder).is_file():
        raise ArtifactError(f"no capping config in {folder}: run 'axiswatch calibrate-capping' or pass --capping")
    cfg = load_capping(folder)
    cfg.check(lm.hidden_size, lm.n_layers)
    return cfg


@cli.command()
@model_options
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--axis", type=click.Path(exists=True, path_type=Path), default=None, help="axis folder (default: the shipped one)  [env AXISWATCH_AXIS]")
@click.option("--layer", type=int, default=None, help="layer to score (default: the axis' monitor layer)")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per conversation on stdout")
@click.pass_context
@_errors
def audit(ctx, model, device, dtype, layers_path, files, axis, layer, as_json):
    """Score existing conversations by teacher forcing.

    FILES are JSON or JSONL with OpenAI-style 'messages' or the paper's
    'conversation' transcripts. Bad records are reported on stderr (file and
    record) and skipped; the exit status is then 1.
    """
    from probes.audit import read_transcripts, score_conversation

    s = _settings(ctx, model=model, device=device, dtype=dtype, layers_path=layers_path, axis=str(axis) if axis else None)
    lm = _load(s)
    art = _load_axis(s, lm)
    layer = art.monitor_layer if layer is None else layer
    if not 0 <= layer < art.n_layers:
        raise AxiswatchError(f"--layer {layer} outside 0..{art.n_layers - 1}")
    v = art.unit(layer)
    failed = 0
    for f in files:
        for k, (where, rec) in enumerate(read_transcripts(f)):
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
            out = {"id": rid if rid is not None else f"{Path(f).name}:{k}", "model": lm.model_id, "layer": layer,
                   "turns": [t.as_dict() for t in turns]}
            if as_json:
                click.echo(json.dumps(out))
            else:
                _print_trajectory(out)
    if failed:
        sys.exit(1)


def _bar(score: float, lo: float, hi: float, width: int = 30) -> str:
    frac = 0.0 if hi <= lo else min(max((score - lo) / (hi - lo), 0.0), 1.0)
    return "#" * int(round(frac * width)) + "." * (width - int(round(frac * width)))


def _print_trajectory(out: dict) -> None:
    """Human-readable per-token trajectory of one scored conversation."""
    scores = [s for t in out["turns"] for s in t["scores"]]
    lo, hi = (min(scores), max(scores)) if scores else (0, 1)
    click.echo(f"conversation {out['id']}  model {out['model']}  layer {out['layer']}  (higher = more Assistant-like)")
    for t in out["turns"]:
        mean = t["mean"]
        click.echo(f"\n  turn {t['index']}  mean {mean:+.2f}" if mean is not None else f"\n  turn {t['index']}  (empty)")
        for tok, sc in zip(t["tokens"], t["scores"]):
            click.echo(f"    {sc:+8.2f} {_bar(sc, lo, hi)} {tok!r}")


def _read_generate_records(path: Path) -> list[dict]:
    from probes.errors import InputError

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
@click.option("--max-new-tokens", type=int, default=64, show_default=True)
@click.option("--temperature", type=float, default=0.0, show_default=True, help="0 = greedy")
@click.option("--cap", is_flag=True, help="apply the capping config (the axis folder's, or --capping)")
@click.option("--capping", type=click.Path(exists=True, path_type=Path), default=None, help="capping config folder")
@click.option("--steer", type=float, default=None, help="add C x (mean residual norm) x unit axis at the monitor layer")
@click.option("--batch-size", type=int, default=None, help="records per batch  [env AXISWATCH_BATCH_SIZE]")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per record on stdout")
@click.pass_context
@_errors
def generate(ctx, model, device, dtype, layers_path, input_path, axis, max_new_tokens, temperature, cap, capping, steer,
             batch_size, as_json):
    """Generate with monitoring: per-token scores from the generation's own forward pass."""
    from probes.generation import CapPlan, GenerationOptions, SteerPlan, generate as run
    from probes.models import normalise_messages
    from probes.ops import steer_coefficient

    s = _settings(ctx, model=model, device=device, dtype=dtype, layers_path=layers_path,
                  axis=str(axis) if axis else None, batch_size=batch_size)
    records = _read_generate_records(input_path)
    if max_new_tokens < 1:
        raise AxiswatchError("--max-new-tokens must be at least 1")
    lm = _load(s)
    for r in records:
        try:
            normalise_messages(lm.tokenizer, r["messages"])
        except AxiswatchError as e:
            raise AxiswatchError(f"{r['where']}: {e}") from None
    art = _load_axis(s, lm)
    plan = None
    if cap or capping:
        cfg = _load_capping(s, art, lm, capping)
        plan = CapPlan(tuple(cfg.layers), cfg.vectors, torch_tensor(cfg.taus))
    steering = None
    if steer is not None:
        steering = SteerPlan(art.monitor_layer, art.unit(), steer_coefficient(steer, art.mean_norm()))
    opts = GenerationOptions(max_new_tokens=max_new_tokens, temperature=temperature)
    for i in range(0, len(records), s.batch_size):
        chunk = records[i:i + s.batch_size]
        outs = run(lm, [r["messages"] for r in chunk], opts, axis=art.unit(), monitor_layer=art.monitor_layer,
                   capping=plan, steering=steering)
        for r, o in zip(chunk, outs):
            rec = {"id": r["id"], "text": o.text, "tokens": o.tokens, "scores": o.scores, "layer": art.monitor_layer,
                   "capped": o.capped}
            if as_json:
                click.echo(json.dumps(rec))
            else:
                mean = sum(o.scores) / len(o.scores) if o.scores else float("nan")
                click.echo(f"[{r['id']}] mean {mean:+.2f}{' capped' if o.capped else ''}: {o.text}")


def torch_tensor(x):
    import torch

    return torch.tensor(x, dtype=torch.float32)


@cli.group()
def axis():
    """Inspect and import axis artifacts."""


@axis.command("show")
@click.option("--axis", "axis_path", type=click.Path(exists=True, path_type=Path), default=None, help="axis folder (default: the shipped one)")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@_errors
def axis_show(ctx, axis_path, as_json):
    """Metadata of the axis in use and where its tensors are."""
    s = _settings(ctx, axis=str(axis_path) if axis_path else None)
    art = _load_axis(s)
    folder = art.path.resolve()
    files = {k: str(folder / f) if (folder / f).exists() else None for k, f in
             (("axis", "axis.safetensors"), ("default_vector", "default_vector.safetensors"),
              ("role_vectors", "role_vectors.safetensors"), ("capping", "capping.json"))}
    report = json.loads((folder / "report.json").read_text()) if (folder / "report.json").exists() else {}
    out = {"model": art.model_id, "monitor_layer": art.monitor_layer, "n_layers": art.n_layers,
           "hidden_size": art.hidden_size, "files": files, "report": report}
    if as_json:
        click.echo(json.dumps(out))
        return
    click.echo(f"model {art.model_id}: {art.n_layers} layers x {art.hidden_size}, monitor layer {art.monitor_layer}")
    for k, v in files.items():
        click.echo(f"  {k:15s} {v or '-'}")
    m = report.get("at_monitor_layer", {})
    if m:
        click.echo(f"  |cos(PC1, axis)| {m.get('abs_cos_pc1_axis', float('nan')):.3f}   held-out AUROC {m.get('auroc_heldout') or float('nan'):.3f}")


@axis.command("import-paper")
@click.option("--axis-pt", type=click.Path(exists=True, path_type=Path), required=True, help="the paper's assistant_axis.pt")
@click.option("--capping-pt", type=click.Path(exists=True, path_type=Path), default=None, help="the paper's capping_config.pt")
@click.option("--experiment", default=None, help="capping experiment id (default: the first)")
@click.option("--model-id", required=True, help="the model the files belong to, e.g. Qwen/Qwen3-32B")
@click.option("--monitor-layer", type=int, default=None, help="default: the middle layer")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="axis folder to write")
@_errors
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


@cli.command()
@model_options
@click.option("--file", "path", type=click.Path(exists=True, path_type=Path), default=None, help="conversation JSON (default: a bundled sample)")
@click.pass_context
@_errors
def demo(ctx, model, device, dtype, layers_path, path):
    """Score a sample conversation with the default model and print its per-token trajectory."""
    from importlib import resources

    path = path or Path(str(resources.files("probes") / "data" / "sample_conversation.json"))
    ctx.invoke(audit, model=model, device=device, dtype=dtype, layers_path=layers_path, files=(path,), axis=None,
               layer=None, as_json=False)


def main():
    cli(prog_name="axiswatch")


if __name__ == "__main__":
    main()
