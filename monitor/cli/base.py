"""The ``axiswatch`` command group and what its commands share: settings from the environment,
model options, the deployment's Redis, loading the model, axis and capping config, and errors as
one line and exit 1.

Command modules (``monitor.cli.*``) import this and register their commands on :data:`cli`;
:mod:`monitor.cli` imports them all: the group is built here, in one place, with no cycle.
Imports of ``probes`` stay inside the loaders so ``axiswatch --help`` does not load torch.
"""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path

import click

from monitor.errors import ArtifactError, AxiswatchError, InputError
from monitor.settings import Settings


def handle_errors(fn):
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
        click.option("--model", default=None,
                     help="'default' (bundled SmolLM2-135M-Instruct), a hub id, a folder or a .gguf file  [env AXISWATCH_MODEL]"),
        click.option("--device", default=None, help="cpu, cuda, cuda:N, mps or auto  [env AXISWATCH_DEVICE]"),
        click.option("--dtype", default=None, type=click.Choice(["float32", "bfloat16", "float16"]), help="[env AXISWATCH_DTYPE]"),
        click.option("--layers-path", default=None,
                     help="dotted path of the decoder-layer list, for unknown architectures  [env AXISWATCH_LAYERS_PATH]"),
    ]):
        fn = opt(fn)
    return fn


class OldSpelling(click.Option):
    """An option that still takes its old spelling (its second name) but shows only its first in ``--help``."""

    def get_help_record(self, ctx):
        names, self.opts = self.opts, self.opts[:1]
        try:
            return super().get_help_record(ctx)
        finally:
            self.opts = names


def max_tokens_option(default: int, what: str = "tokens to generate per reply"):
    """``--max-tokens``: one name on every command that generates (``--max-new-tokens`` still works)."""
    return click.option("--max-tokens", "--max-new-tokens", "max_tokens", cls=OldSpelling, type=click.IntRange(min=1),
                        default=default, show_default=True, help=what)


def check_max_tokens(n: int, s: Settings, remote: bool = False) -> None:
    """Refuse a reply length the server would refuse, before a model loads: at least 1, and in-process at
    most ``AXISWATCH_MAX_NEW_TOKENS`` (a remote server applies its own limit and says so)."""
    if n < 1:
        raise InputError(f"--max-tokens must be at least 1, not {n}")
    if not remote and n > s.max_new_tokens:
        raise InputError(f"--max-tokens {n} is over this deployment's limit of {s.max_new_tokens} tokens a reply "
                         "(AXISWATCH_MAX_NEW_TOKENS)")


def settings_from(ctx, **kw) -> Settings:
    return ctx.obj.with_(**kw)


def redis_url_for(s: Settings) -> str | None:
    """The deployment's Redis: ``REDIS_URL`` when set, else the embedded one of the ``axiswatch serve``
    running on the same store (its run file, :mod:`monitor.runfile`), else None."""
    if s.redis_url:
        return s.redis_url
    from monitor import runfile

    rec = runfile.read(runfile.path_for(s.database_url, s.cache_dir))
    return str(rec["redis_url"]) if rec and rec.get("redis_url") else None


def load_model_for(s: Settings):
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


def load_axis_for(s: Settings, lm=None):
    """The axis artifact in use, checked against the model when one is loaded."""
    from probes.artifacts import load_axis

    art = load_axis(s.axis_dir())
    if lm is not None:
        art.check(lm.model_id, lm.hidden_size, lm.n_layers)
    return art


def load_capping_for(s: Settings, art, lm, path: Path | None = None):
    from probes.artifacts import load_capping

    folder = Path(path) if path else s.capping_folder()
    if not (folder / "capping.json").exists() and not folder.is_file():
        raise ArtifactError(f"no capping config in {folder}: run 'axiswatch calibrate-capping' or pass --capping")
    cfg = load_capping(folder)
    cfg.check(lm.hidden_size, lm.n_layers)
    made_for = cfg.provenance.get("axis_fingerprint")
    if made_for and made_for != art.fingerprint():
        raise ArtifactError(f"capping config {cfg.id!r} in {folder} was calibrated on another axis "
                            f"({made_for} != {art.fingerprint()}); rerun calibrate-capping")
    return cfg
