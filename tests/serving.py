"""Serving an ASGI app over real HTTP in a test: uvicorn in a thread on a free port."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc=None, timeout_s: float = 90.0) -> None:
    """Wait until ``url`` answers 200; fail at once if ``proc`` (the server process) has exited."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr else ""
            raise AssertionError(f"{proc.args[:3]} exited with {proc.returncode} before {url} answered: {err}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url} did not answer within {timeout_s} s")


@contextmanager
def uvicorn_thread(app, timeout_s: float = 30.0):
    """Yield the base URL of ``app`` served by uvicorn; stop it on exit."""
    import uvicorn

    sock = socket.socket()  # bound here and handed over, so no other process can take the port meanwhile
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    t = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    t.start()
    deadline = time.monotonic() + timeout_s
    while not srv.started and t.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    if not srv.started:
        srv.should_exit = True
        sock.close()
        raise AssertionError(f"uvicorn did not start on port {port} within {timeout_s} s")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        t.join(10)
        sock.close()
