"""Commands that run the service: ``serve`` and ``worker``."""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import threading
from typing import NoReturn

import click

from monitor.cli.base import cli, handle_errors, model_options, redis_url_for, settings_from
from monitor.settings import BACKENDS


@cli.command()
@model_options
@click.option("--host", default=None, help="bind address  [env AXISWATCH_HOST, default 127.0.0.1]")
@click.option("--port", type=int, default=None, help="[env AXISWATCH_PORT, default 8000]")
@click.option("--policy", type=click.Choice(["observe", "flag", "cap"]), default=None,
              help="what to do when a session drifts  [env AXISWATCH_POLICY, default flag]")
@click.option("--database-url", default=None, help="[env AXISWATCH_DATABASE_URL, default sqlite:///axiswatch.db]")
@click.option("--no-workers", is_flag=True, help="API and engine only; run 'axiswatch worker' processes beside it")
@click.option("--backend", type=click.Choice(BACKENDS), default=None,
              help="who runs generation: hf (transformers) or vllm (vLLM's engine, continuous batching)  "
                   "[env AXISWATCH_BACKEND, default hf]")
@click.option("--dashboard", "with_dashboard", is_flag=True, help="also start the dashboard (see --dashboard-port)")
@click.option("--dashboard-port", type=click.IntRange(1, 65535), default=None,
              help="the port of the dashboard --dashboard starts (it does not start one by itself)  "
                   "[env AXISWATCH_DASHBOARD_PORT, default 8501]")
@click.pass_context
@handle_errors
def serve(ctx, model, device, dtype, layers_path, host, port, policy, database_url, no_workers, backend,
          with_dashboard, dashboard_port):
    """Run the probe service: OpenAI-compatible chat completions with per-token scores.

    Without REDIS_URL an embedded redis-server is started (and stopped on exit), and recorded in a run
    file beside the store so that other commands on the same store find it; without
    AXISWATCH_DATABASE_URL sessions go to ./axiswatch.db (SQLite). Ctrl-C or SIGTERM stop it
    gracefully: requests in flight finish and everything accepted reaches the store.
    """
    import uvicorn

    from monitor import runfile, service
    from monitor.api import create_app

    s = settings_from(ctx, model=model, device=device, dtype=dtype, layers_path=layers_path, host=host, port=port,
                  policy=policy, database_url=database_url, backend=backend, dashboard_port=dashboard_port)
    # the dashboard shows every conversation: only a password lets it listen beyond this machine
    ui_host = s.host if os.environ.get("AXISWATCH_DASHBOARD_PASSWORD") else "127.0.0.1"
    if with_dashboard:
        option = "--dashboard-port" if dashboard_port else "AXISWATCH_DASHBOARD_PORT"
        service.listen(ui_host, s.dashboard_port, option).close()
    sock = service.listen(s.host, s.port)  # held from here: a clash fails now, not after the model loads
    for sig in (signal.SIGINT, signal.SIGTERM):  # from now on a signal unwinds through every `finally` below
        signal.signal(sig, _exit_on_signal)
    try:
        rt = service.start(s, workers=not no_workers)
    except BaseException:
        sock.close()
        raise
    ui, ending = None, SystemExit(0)  # how serve ends once uvicorn returns: the signal's exit (or 0)
    try:
        with runfile.recorded(None if s.redis_url else runfile.path_for(s.database_url, s.cache_dir),
                              rt.redis_url, rt.store.url):  # removed first thing when serve stops
            app = create_app(rt.engine, rt.store, rt.streams, api_keys=s.api_keys, max_new_tokens=s.max_new_tokens,
                             admin_keys=s.admin_keys)
            if with_dashboard:
                ui = _start_dashboard(s, rt, ui_host)
            _banner(s, rt)
            # uvicorn handles SIGINT/SIGTERM itself (a graceful stop), then re-raises them to _exit_on_signal
            uvicorn.Server(uvicorn.Config(app, host=s.host, port=s.port, log_level="warning")).run(sockets=[sock])
    except SystemExit as e:  # SIGINT or SIGTERM (_exit_on_signal), or uvicorn's own failure to start
        ending = e
    finally:
        _stop(rt, ui)  # any other error propagates from here as it is
    if isinstance(ending.code, int):
        _exit_now(ending.code)
    raise ending


def _start_dashboard(s, rt, ui_host: str):
    from monitor.cli.dashboard import launch

    ui = launch(s, rt.redis_url, ui_host, s.dashboard_port, s.api_url())
    click.echo(f"dashboard on http://{ui_host}:{s.dashboard_port}"
               + ("" if ui_host == s.host else " (loopback only: set AXISWATCH_DASHBOARD_PASSWORD to expose it)"))
    return ui


def _stop(rt, ui) -> None:
    """Stop what serve started: the dashboard is asked to stop while the engine finishes, the outbox and the
    workers flush everything accepted to the store and Redis stops; then what is left of the dashboard is killed."""
    _hold_signals()  # a second Ctrl-C must not cut the flush short
    if ui is not None:
        ui.terminate()
    try:
        rt.close()
    finally:
        if ui is not None:
            ui.stop()


def _banner(s, rt) -> None:
    click.echo(f"axiswatch serving {rt.engine.model_id} on http://{s.host}:{s.port}/v1 "
               f"(backend {rt.engine.backend.name}, layer {rt.engine.layer}, policy {rt.engine.policy}, "
               f"redis {rt.redis_url}, store {rt.store.url}, "
               f"{'API keys required' if s.api_keys else 'no API keys: open to anyone who can reach it'})")
    # with API keys on, the example sends one: a client's key is AXISWATCH_API_KEY (one of the server's keys)
    key = " -H \"authorization: Bearer $AXISWATCH_API_KEY\"" if s.api_keys else ""
    click.echo(f"try: curl -s {s.api_url()}/v1/chat/completions -H 'content-type: application/json'{key} "
               "-d '{\"messages\": [{\"role\": \"user\", \"content\": \"Who are you?\"}], \"max_tokens\": 32}'"
               + ("   (with AXISWATCH_API_KEY set to one of AXISWATCH_API_KEYS)" if s.api_keys else ""))


def _exit_now(code: int) -> NoReturn:
    """Exit once everything is stopped and flushed: the exit handlers run, but not the interpreter's teardown of
    its ~3000 modules (torch, transformers), which alone took 1.3-1.6 s of an idle serve's 2.3 s stop on 2 cores."""
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed or broken stream: nothing left to say
            stream.flush()
    os._exit(code)


def _exit_on_signal(signum, _frame):
    """SIGINT and SIGTERM become an exit (130, 143) that runs every ``finally``: children stopped, records flushed."""
    raise SystemExit(128 + signum)


def _hold_signals() -> None:
    """While ``serve`` stops: further SIGINT/SIGTERM only say it is still writing what it accepted."""

    def note(signum, _frame):  # os.write: a print here could interrupt one of the main thread's
        os.write(2, b"axiswatch: still stopping (writing what was accepted to the store); SIGKILL would lose it\n")

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, note)


@cli.command()
@click.option("--database-url", default=None, help="[env AXISWATCH_DATABASE_URL]")
@click.pass_context
@handle_errors
def worker(ctx, database_url):
    """Persist scored turns, alerts and interventions from Redis to the store.

    Reads REDIS_URL, else the embedded Redis of an 'axiswatch serve' running on the same store.
    """
    from monitor import service

    s = _with_deployment_redis(settings_from(ctx, database_url=database_url), "a separate worker needs")
    rt = service.start(s, workers=True, model=False)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    click.echo(f"persistence worker {rt.workers[0].name}: {rt.redis_url} -> {rt.store.url}")
    try:
        stop.wait()
    finally:
        rt.close()


@cli.command()
@model_options
@click.option("--policy", type=click.Choice(["observe", "flag", "cap"]), default=None,
              help="observe records only; flag (and cap, which cannot act on finished text) raise alerts")
@click.option("--database-url", default=None, help="[env AXISWATCH_DATABASE_URL]")
@click.option("--no-workers", is_flag=True, help="leave persistence to separate 'axiswatch worker' processes")
@click.pass_context
@handle_errors
def shadow(ctx, model, device, dtype, layers_path, policy, database_url, no_workers):
    """Score turns another inference server publishes to the Redis stream axiswatch:ingest.

    Each entry's data is {"session_id", "messages", "model"}: the conversation so far, ending with
    the assistant's reply. Sessions are recorded and alerted like live ones (source 'shadow'). Reads
    REDIS_URL, else the embedded Redis of an 'axiswatch serve' running on the same store.
    """
    from monitor import service
    from monitor.workers.shadow import ShadowWorker

    s = _with_deployment_redis(settings_from(ctx, model=model, device=device, dtype=dtype, layers_path=layers_path,
                                             policy=policy, database_url=database_url), "shadow mode reads")
    rt = service.start(s, workers=not no_workers)
    sw = ShadowWorker(rt.streams, rt.engine)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    sw.start_thread()
    click.echo(f"shadow mode: scoring {rt.streams.key('ingest')} on {rt.redis_url} with {rt.engine.model_id} "
               f"(layer {rt.engine.layer}) -> {rt.store.url}")
    try:
        stop.wait()
    finally:
        sw.stop()
        rt.close()


def _with_deployment_redis(s, needs: str):
    """``s`` with the deployment's Redis (:func:`redis_url_for`), or a one-line error starting with ``needs``."""
    from monitor.errors import InputError

    url = redis_url_for(s)
    if not url:
        raise InputError(f"{needs} the deployment's Redis: set REDIS_URL, or run 'axiswatch serve' on this store "
                         f"({s.database_url}) so that its embedded Redis is found")
    return s.with_(redis_url=url)


@cli.command("vllm-args")
@model_options
@click.pass_context
@handle_errors
def vllm_args(ctx, model, device, dtype, layers_path):
    """Print the arguments for an unchanged vLLM OpenAI server that serves this model with the plugin on.

    \b
    AXISWATCH_VLLM_PLUGIN=1 python -m vllm.entrypoints.openai.api_server $(axiswatch vllm-args)
    The default model is materialised as a Hugging Face folder in the axiswatch cache first. The
    plugin reads the policy and thresholds from the server's own environment (AXISWATCH_*).
    """
    import shlex

    from monitor.cli.base import load_model_for
    from monitor.errors import InputError

    s = settings_from(ctx, model=model, device=device, dtype=dtype, layers_path=layers_path)
    lm = load_model_for(s)
    folder = lm.meta.get("weights")
    if not folder:
        raise InputError(f"vLLM needs the model as a Hugging Face folder or hub id, not {s.model!r}")
    # async scheduling pairs a step's scores with the next step's tokens: the plugin refuses it
    args = ["--model", str(folder), "--served-model-name", lm.model_id, "--dtype", s.dtype,
            "--max-model-len", str(s.vllm_max_model_len), "--kv-cache-memory-bytes", str(int(s.vllm_memory_gb * 2**30)),
            "--no-async-scheduling"]
    if s.vllm_enforce_eager:
        args.append("--enforce-eager")
    if s.capping_dir() is not None:
        args.append("--no-enable-prefix-caching")  # a capped session never reuses an uncapped one's KV cache
    click.echo(shlex.join(args))
