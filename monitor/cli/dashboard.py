"""``axiswatch dashboard``: the Streamlit dashboard as a child process (also started by ``serve --dashboard``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click

from monitor.cli.base import cli, handle_errors, settings_from
from monitor.errors import InputError
from monitor.settings import MAX_AUDIT_BYTES

APP = Path(__file__).resolve().parents[2] / "dashboard" / "app.py"


def dashboard_command(host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "streamlit", "run", str(APP), "--server.address", host, "--server.port", str(port),
            "--server.headless", "true", "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
            "--theme.base", "light", "--client.toolbarMode", "viewer", "--server.maxUploadSize", str(max(1, MAX_AUDIT_BYTES >> 20))]


def launch(settings, redis_url: str | None, host: str, port: int, api_url: str | None = None) -> subprocess.Popen:
    """Start the dashboard on ``host:port`` reading ``settings``' store and ``redis_url``."""
    env = dict(os.environ, AXISWATCH_DATABASE_URL=settings.database_url)
    if redis_url:
        env["REDIS_URL"] = redis_url
    if api_url:
        env["AXISWATCH_API_URL"] = api_url
    from monitor.streams.embedded import die_with_parent

    return subprocess.Popen(dashboard_command(host, port), env=env, preexec_fn=die_with_parent)  # dies with serve


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="bind address")
@click.option("--port", type=int, default=None, help="[env AXISWATCH_DASHBOARD_PORT, default 8501]")
@click.option("--database-url", default=None, help="[env AXISWATCH_DATABASE_URL, default sqlite:///axiswatch.db]")
@click.pass_context
@handle_errors
def dashboard(ctx, host, port, database_url):
    """The Streamlit dashboard: sessions, trajectories, token heatmaps, alerts, audits and the axis.

    Reads the store and REDIS_URL (the live tail; without it, history only). It never loads the model.
    """
    from monitor.service import listen
    from monitor.store import Store

    s = settings_from(ctx, database_url=database_url)
    port = port or s.dashboard_port
    if not 0 < port < 65536:
        raise InputError(f"--port must be a port number, not {port}")
    Store(s.database_url, must_exist=True).close()  # not an empty database in the wrong directory
    listen(host, port).close()
    click.echo(f"axiswatch dashboard on http://{host}:{port} (store {s.database_url}, "
               f"redis {s.redis_url or 'none: history only'})")
    env = dict(os.environ, AXISWATCH_DATABASE_URL=s.database_url)
    cmd = dashboard_command(host, port)
    os.execve(cmd[0], cmd, env)  # streamlit takes over this process: signals reach it directly
