"""`axiswatch serve` and its child processes as real processes: they all end when serve ends (Ctrl-C,
SIGTERM, SIGKILL), an idle serve stops quickly, and other commands find serve's embedded Redis. A running
serve loads the default model (those tests are ``smollm``)."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from polling import wait_until
from serving import free_port, wait_http

from monitor.cli.base import redis_url_for
from monitor.settings import Settings

AXISWATCH = str(Path(sys.executable).parent / "axiswatch")


class Serve:
    """A real ``axiswatch serve`` on the embedded defaults (no REDIS_URL) and a store in ``tmp``, in a process group
    of its own (as a terminal's foreground job is), its output in files (its children inherit them)."""

    def __init__(self, tmp: Path, *args: str, dashboard: bool = False):
        self.db, self.port = tmp / "aw.db", free_port()
        self.db_url = f"sqlite:///{self.db}"
        self.run_file = tmp / "aw.db.serve.json"
        self.dport = free_port() if dashboard else None
        self.out, self.err = tmp / "serve.out", tmp / "serve.err"
        self.env = {**os.environ, "AXISWATCH_DATABASE_URL": self.db_url, "AXISWATCH_PORT": str(self.port),
                    "REDIS_URL": ""}
        extra = ["--dashboard", "--dashboard-port", str(self.dport)] if dashboard else []
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen([AXISWATCH, "serve", *extra, *args], env=self.env, stdout=out, stderr=err,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_http(f"http://127.0.0.1:{self.port}/healthz", self.proc)
            if self.dport:
                wait_http(f"http://127.0.0.1:{self.dport}/_stcore/health", self.proc)
        except AssertionError as e:
            self.kill()
            raise AssertionError(f"{e}\n{self.err.read_text()[-3000:]}") from None

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def chat(self, session_id: str, max_tokens: int = 4) -> dict:
        return httpx.post(f"{self.api}/v1/chat/completions", timeout=120,
                          json={"messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": max_tokens,
                                "session_id": session_id}).json()

    def stop(self, sig: int, timeout_s: float = 30.0) -> float:
        """Signal serve (SIGINT to its whole group, like Ctrl-C at a terminal) and return how long it took to exit."""
        t0 = time.monotonic()
        if sig == signal.SIGINT:
            os.killpg(self.proc.pid, sig)
        else:
            self.proc.send_signal(sig)
        self.proc.wait(timeout_s)
        return time.monotonic() - t0

    def kill(self) -> None:
        for pid in [*descendants(self.proc.pid), self.proc.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(10)


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def alive(pid: int) -> bool:
    st = _stat(pid)
    return st is not None and st[0] != "Z"  # a zombie holds no port and runs nothing: whoever adopted it reaps it


def descendants(root: int) -> dict[int, str]:
    """Every live process below ``root`` (walking /proc), with its command line."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit() and (st := _stat(int(d))) is not None:
            children.setdefault(int(st[1]), []).append(int(d))
    found, todo = {}, list(children.get(root, []))
    while todo:
        pid = todo.pop()
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if alive(pid):
            found[pid] = cmd
        todo += children.get(pid, [])
    return found


def port_free(port: int) -> bool:
    """Nothing listens on 127.0.0.1:``port`` (connections refused, and a server could bind it)."""
    with socket.socket() as c:
        c.settimeout(1)
        if c.connect_ex(("127.0.0.1", port)) == 0:
            return False
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _rows(db: Path, sql: str):
    try:
        with sqlite3.connect(db) as c:
            return c.execute(sql).fetchall()
    except sqlite3.OperationalError:
        return []


def _redis_port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


@pytest.mark.smollm  # serve on the embedded defaults: the default model
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["SIGINT", "SIGTERM", "SIGKILL"])
def test_every_child_ends_with_serve(tmp_path, sig):
    srv, kids = Serve(tmp_path, dashboard=True), {}
    try:
        kids = descendants(srv.proc.pid)
        assert any("redis-server" in c for c in kids.values()), kids
        assert any("streamlit" in c for c in kids.values()), kids
        redis_url = json.loads(srv.run_file.read_text())["redis_url"]
        assert f"127.0.0.1:{_redis_port(redis_url)}" in next(c for c in kids.values() if "redis-server" in c)
        graceful = sig != signal.SIGKILL
        if graceful:  # a reply served just before the signal still reaches the store
            n = len(srv.chat("last-words")["axiswatch"]["scores"])
        took = srv.stop(sig)
        assert srv.proc.returncode == (128 + sig if graceful else -sig)
        try:
            wait_until(lambda: not any(alive(p) for p in kids), timeout_s=5, what="every child of serve ending")
        except TimeoutError:
            raise AssertionError(f"still running: {({p: c for p, c in kids.items() if alive(p)})}") from None
        for port in (srv.port, srv.dport, _redis_port(redis_url)):
            assert port_free(port), port
    finally:
        if srv.proc.poll() is None or any(alive(p) for p in kids):
            srv.kill()
    if graceful:
        assert took < 5, took
        assert _rows(srv.db, "select n_tokens from sessions where id='last-words'") == [(n,)]
        assert not srv.run_file.exists()
    else:  # left behind by a killed serve, and ignored: its process is gone
        assert srv.run_file.exists()
        assert redis_url_for(Settings(database_url=srv.db_url)) is None


@pytest.mark.smollm
def test_an_idle_serve_stops_on_sigterm_within_5_s(tmp_path):
    srv = Serve(tmp_path, dashboard=True)  # what `make run` starts
    try:
        time.sleep(1)
        took = srv.stop(signal.SIGTERM)
    finally:
        if srv.proc.poll() is None:
            srv.kill()
    assert srv.proc.returncode == 128 + signal.SIGTERM
    assert took < 5, f"serve took {took:.1f} s to stop"
    assert "still stopping" not in srv.err.read_text()


@pytest.mark.smollm
def test_commands_find_the_embedded_redis_of_a_running_serve(tmp_path):
    from monitor.streams import Streams

    srv = Serve(tmp_path, "--no-workers")
    wrk = None
    try:
        rec = json.loads(srv.run_file.read_text())
        assert rec["pid"] == srv.proc.pid and rec["redis_url"] in srv.out.read_text()  # the banner's Redis
        url = redis_url_for(Settings.from_env({"AXISWATCH_DATABASE_URL": srv.db_url}))
        assert url == rec["redis_url"]
        assert Streams.from_url(url).deployment()["api"] == srv.api  # this serve's own Redis
        n = len(srv.chat("found-1")["axiswatch"]["scores"])
        time.sleep(1)
        assert _rows(srv.db, "select count(*) from turns") == [(0,)]  # no workers: nobody persists yet
        with open(tmp_path / "worker.out", "w") as out:  # no REDIS_URL: it finds serve's Redis on the same store
            wrk = subprocess.Popen([AXISWATCH, "worker"], env=srv.env, stdout=out, stderr=subprocess.STDOUT)
        assert wait_until(lambda: _rows(srv.db, "select n_tokens from sessions where id='found-1'") == [(n,)],
                          timeout_s=60, what="the worker persisting serve's turn")
        assert url in (tmp_path / "worker.out").read_text()
    finally:
        for p in (wrk, srv.proc):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(30)
    assert wrk.returncode == 0 and srv.proc.returncode == 128 + signal.SIGTERM
    assert not srv.run_file.exists()
    assert redis_url_for(Settings(database_url=srv.db_url)) is None
    r = subprocess.run([AXISWATCH, "worker"], env=srv.env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stderr.count("\n") == 1
    assert r.stderr.startswith("error: a separate worker needs the deployment's Redis: set REDIS_URL, or run "
                               f"'axiswatch serve' on this store ({srv.db_url})")


def test_the_run_file_is_ignored_unless_its_serve_runs(tmp_path):
    from monitor import runfile

    db = f"sqlite:///{tmp_path / 'x.db'}"
    path = runfile.path_for(db)
    assert path == tmp_path / "x.db.serve.json"
    assert runfile.path_for("sqlite://") is None and runfile.path_for("sqlite:///:memory:") is None
    pg = runfile.path_for("postgresql://u:secret@db.example:5432/aw", cache_dir=str(tmp_path / "cache"))
    assert pg is not None and pg.parent == tmp_path / "cache" / "run" and "secret" not in str(pg)
    assert pg == runfile.path_for("postgresql+psycopg://other@db.example:5432/aw", cache_dir=str(tmp_path / "cache"))
    s = Settings(database_url=db)
    assert redis_url_for(s) is None  # no file
    assert redis_url_for(s.with_(redis_url="redis://elsewhere:6379/0")) == "redis://elsewhere:6379/0"
    with runfile.recorded(path, "redis://127.0.0.1:1/0", db) as written:
        assert written == path and redis_url_for(s) == "redis://127.0.0.1:1/0"
    assert not path.exists()
    dead = subprocess.Popen(["true"])
    dead.wait()
    path.write_text(json.dumps({"pid": dead.pid, "redis_url": "redis://127.0.0.1:2/0"}))
    assert redis_url_for(s) is None  # its process is gone
    path.write_text(json.dumps({"pid": os.getpid(), "started": "1", "redis_url": "redis://127.0.0.1:3/0"}))
    assert redis_url_for(s) is None  # a live pid, but another process than the one that wrote it
    path.write_text("{not json")
    assert redis_url_for(s) is None


def test_the_dashboard_port_option(tmp_path):
    """--dashboard-port sets the port (a clash names the option) and needs --dashboard to start one."""
    env = {**os.environ, "AXISWATCH_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}", "REDIS_URL": "",
           "AXISWATCH_PORT": str(free_port())}
    r = subprocess.run([AXISWATCH, "serve", "--help"], capture_output=True, text=True, timeout=60)
    assert "--dashboard-port" in r.stdout and "does not start one by itself" in " ".join(r.stdout.split())
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        r = subprocess.run([AXISWATCH, "serve", "--dashboard", "--dashboard-port", str(busy)], capture_output=True,
                           text=True, timeout=60, env=env)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr == (f"error: cannot listen on 127.0.0.1:{busy}: Address already in use "
                        "(is another axiswatch running there? choose another --dashboard-port)\n")


def test_a_dashboard_deaf_to_sigterm_is_killed_with_its_whole_group(tmp_path):
    """What serve does with a Streamlit whose graceful stop hangs: SIGTERM to its process group, then SIGKILL
    after the grace period, its own children included (a stand-in that ignores SIGTERM and has a child)."""
    from monitor.cli.dashboard import DashboardProcess

    deaf = ("import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "subprocess.Popen([sys.executable, '-c', 'import signal, time; "
            "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)']); time.sleep(60)")
    ui = DashboardProcess([sys.executable, "-c", deaf], dict(os.environ), grace_s=1.0)
    kids = wait_until(lambda: descendants(ui.pid), timeout_s=10, what="the stand-in's child")
    assert os.getpgid(ui.pid) == ui.pid != os.getpgid(0)  # a group (and session) of its own
    t0 = time.monotonic()
    assert ui.stop() == -signal.SIGKILL
    assert time.monotonic() - t0 < 3
    wait_until(lambda: not any(alive(p) for p in kids), timeout_s=5, what="the stand-in's child ending")
