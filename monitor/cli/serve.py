"""Commands that run the service: ``serve`` and ``worker``."""

from __future__ import annotations

import os
import signal
import threading

import click

from monitor.cli.base import cli, handle_errors, model_options, settings_from


@cli.command()
@model_options
@click.option("--host", default=None, help="bind address  [env AXISWATCH_HOST, default 127.0.0.1]")
@click.option("--port", type=int, default=None, help="[env AXISWATCH_PORT, default 8000]")
@click.option("--policy", type=click.Choice(["observe", "flag", "cap"]), default=None,
              help="what to do when a session drifts  [env AXISWATCH_POLICY, default flag]")
@click.option("--database-url", default=None, help="[env AXISWATCH_DATABASE_URL, default sqlite:///axiswatch.db]")
@click.option("--no-workers", is_flag=True, help="API and engine only; run 'axiswatch worker' processes beside it")
@click.option("--backend", type=click.Choice(["hf", "vllm"]), default=None,
              help="who runs generation: hf (transformers) or vllm (vLLM's engine, continuous batching)  "
                   "[env AXISWATCH_BACKEND, default hf]")
@click.option("--dashboard", "with_dashboard", is_flag=True,
              help="also start the dashboard (on AXISWATCH_DASHBOARD_PORT, default 8501)")
@click.pass_context
@handle_errors
def serve(ctx, model, device, dtype, layers_path, host, port, policy, database_url, no_workers, backend,
          with_dashboard):
    """Run the probe service: OpenAI-compatible chat completions with per-token scores.

    Without REDIS_URL an embedded redis-server is started (and stopped on exit);
    without AXISWATCH_DATABASE_URL sessions go to ./axiswatch.db (SQLite).
    """
    import uvicorn

    from monitor import service
    from monitor.api import create_app

    s = settings_from(ctx, model=model, device=device, dtype=dtype, layers_path=layers_path, host=host, port=port,
                  policy=policy, database_url=database_url, backend=backend)
    # the dashboard shows every conversation: only a password lets it listen beyond this machine
    ui_host = s.host if os.environ.get("AXISWATCH_DASHBOARD_PASSWORD") else "127.0.0.1"
    if with_dashboard:
        service.listen(ui_host, s.dashboard_port, "AXISWATCH_DASHBOARD_PORT").close()
    sock = service.listen(s.host, s.port)  # held from here: a clash fails now, not after the model loads
    try:
        rt = service.start(s, workers=not no_workers)
    except BaseException:
        sock.close()
        raise
    ui = None
    try:
        app = create_app(rt.engine, rt.store, rt.streams, api_keys=s.api_keys,
                         max_new_tokens=s.max_new_tokens)
        if with_dashboard:
            from monitor.cli.dashboard import launch
            from monitor.service import local_host

            ui = launch(s, rt.redis_url, ui_host, s.dashboard_port, f"http://{local_host(s.host)}:{s.port}")
            click.echo(f"dashboard on http://{ui_host}:{s.dashboard_port}"
                       + ("" if ui_host == s.host else " (loopback only: set AXISWATCH_DASHBOARD_PASSWORD to expose it)"))
        click.echo(f"axiswatch serving {rt.engine.model_id} on http://{s.host}:{s.port}/v1 "
                   f"(backend {rt.engine.backend.name}, layer {rt.engine.layer}, policy {rt.engine.policy}, "
                   f"redis {rt.redis_url}, store {rt.store.url}, "
                   f"{'API keys required' if s.api_keys else 'no API keys: open to anyone who can reach it'})")
        click.echo(f"try: curl -s http://{s.host}:{s.port}/v1/chat/completions -H 'content-type: application/json' "
                   "-d '{\"messages\": [{\"role\": \"user\", \"content\": \"Who are you?\"}], \"max_tokens\": 32}'")
        # uvicorn re-raises SIGTERM after its graceful shutdown; turn it into an exit that runs `finally`
        signal.signal(signal.SIGTERM, _exit_on_signal)
        uvicorn.Server(uvicorn.Config(app, host=s.host, port=s.port, log_level="warning")).run(sockets=[sock])
    finally:
        if ui is not None:
            ui.terminate()
            ui.wait(10)
        rt.close()


def _exit_on_signal(signum, _frame):
    raise SystemExit(128 + signum)


@cli.command()
@click.option("--database-url", default=None, help="[env AXISWATCH_DATABASE_URL]")
@click.pass_context
@handle_errors
def worker(ctx, database_url):
    """Persist scored turns, alerts and interventions from Redis to the store (needs REDIS_URL)."""
    from monitor import service
    from monitor.errors import InputError

    s = settings_from(ctx, database_url=database_url)
    if not s.redis_url:
        raise InputError("a separate worker needs the deployment's Redis: set REDIS_URL (an embedded Redis "
                         "started by 'axiswatch serve' is printed at its start)")
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
    """Score turns another inference server publishes to the Redis stream axiswatch:ingest (needs REDIS_URL).

    Each entry's data is {"session_id", "messages", "model"}: the conversation so far, ending with
    the assistant's reply. Sessions are recorded and alerted like live ones (source 'shadow').
    """
    from monitor import service
    from monitor.errors import InputError
    from monitor.workers.shadow import ShadowWorker

    s = settings_from(ctx, model=model, device=device, dtype=dtype, layers_path=layers_path, policy=policy,
                  database_url=database_url)
    if not s.redis_url:
        raise InputError("shadow mode reads the gateway's Redis: set REDIS_URL")
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
    from pathlib import Path

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
    if (Path(s.capping) if s.capping else s.axis_dir()).joinpath("capping.json").exists():
        args.append("--no-enable-prefix-caching")  # a capped session never reuses an uncapped one's KV cache
    click.echo(shlex.join(args))
