"""``axiswatch dashboard``: the Streamlit dashboard as a child process (also started by ``serve --dashboard``)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click

from monitor.cli.base import cli, handle_errors, redis_url_for, settings_from
from monitor.errors import InputError
from monitor.settings import MAX_AUDIT_BYTES

APP = Path(__file__).resolve().parents[2] / "dashboard" / "app.py"


def dashboard_command(host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "streamlit", "run", str(APP), "--server.address", host, "--server.port", str(port),
            "--server.headless", "true", "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
            "--theme.base", "light", "--client.toolbarMode", "viewer", "--server.maxUploadSize", str(max(1, MAX_AUDIT_BYTES >> 20))]


class DashboardProcess:
    """The dashboard child of ``serve --dashboard``: Streamlit in a process group of its own, ended by group.

    Its own session keeps a terminal's Ctrl-C (and its job control) away from it: ``serve`` stops it. The
    kernel kills it if ``serve`` dies without stopping it (even by SIGKILL). It holds no data, so a stop
    asks with SIGTERM and, after ``grace_s``, kills the whole group with SIGKILL.
    """

    def __init__(self, cmd: list[str], env: dict[str, str], grace_s: float = 3.0):
        from monitor.streams.embedded import die_with_parent

        self.grace_s = grace_s
        self._deadline: float | None = None
        self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, start_new_session=True,
                                     preexec_fn=die_with_parent(signal.SIGKILL))
        self.pid = self.proc.pid  # also the id of its process group

    def terminate(self) -> None:
        """Ask it to stop (SIGTERM to its group) without waiting; :meth:`stop` waits."""
        if self._deadline is None:
            self._deadline = time.monotonic() + self.grace_s
            self._signal(signal.SIGTERM)

    def stop(self) -> int:
        """Stop it within ``grace_s`` of :meth:`terminate`: what is left of its group then gets SIGKILL."""
        self.terminate()
        assert self._deadline is not None
        while not self._exited() and time.monotonic() < self._deadline:
            time.sleep(0.05)
        self._signal(signal.SIGKILL)  # before reaping it: its id cannot name another group yet
        return self.proc.wait()

    def _exited(self) -> bool:
        """Whether the leader has exited, without reaping it."""
        if self.proc.returncode is not None:
            return True
        try:
            return os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            return True

    def _signal(self, sig: int) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, sig)


def launch(settings, redis_url: str | None, host: str, port: int, api_url: str | None = None) -> DashboardProcess:
    """Start the dashboard on ``host:port`` reading ``settings``' store and ``redis_url``."""
    env = dict(os.environ, AXISWATCH_DATABASE_URL=settings.database_url)
    if redis_url:
        env["REDIS_URL"] = redis_url
    if api_url:
        env["AXISWATCH_API_URL"] = api_url
    return DashboardProcess(dashboard_command(host, port), env)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="bind address")
@click.option("--port", type=int, default=None, help="[env AXISWATCH_DASHBOARD_PORT, default 8501]")
@click.option("--database-url", default=None, help="[env AXISWATCH_DATABASE_URL, default sqlite:///axiswatch.db]")
@click.pass_context
@handle_errors
def dashboard(ctx, host, port, database_url):
    """The Streamlit dashboard: sessions, trajectories, token heatmaps, alerts, audits and the axis.

    Reads the store and REDIS_URL (the live tail; without it, the embedded Redis of an 'axiswatch serve'
    running on the same store, else history only). It never loads the model.
    """
    from monitor.service import listen
    from monitor.store import Store

    s = settings_from(ctx, database_url=database_url)
    redis_url = redis_url_for(s)
    port = port or s.dashboard_port
    if not 0 < port < 65536:
        raise InputError(f"--port must be a port number, not {port}")
    Store(s.database_url, must_exist=True).close()  # not an empty database in the wrong directory
    listen(host, port).close()
    click.echo(f"axiswatch dashboard on http://{host}:{port} (store {s.database_url}, "
               f"redis {redis_url or 'none: history only'})")
    env = dict(os.environ, AXISWATCH_DATABASE_URL=s.database_url, **({"REDIS_URL": redis_url} if redis_url else {}))
    cmd = dashboard_command(host, port)
    os.execve(cmd[0], cmd, env)  # streamlit takes over this process: signals reach it directly
