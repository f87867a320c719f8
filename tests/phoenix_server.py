"""A real Arize Phoenix server for the tracing tests: ``phoenix serve`` from its own environment (.venv-phoenix,
which ``make install`` builds: Phoenix pins its dependencies apart from ours), local storage in a temporary
folder, free ports; its OTLP/HTTP endpoint takes the spans and its REST API gives them back.

Where Phoenix is not installed the tests that need it are skipped, unless ``AXISWATCH_REQUIRE_PHOENIX=1`` (CI),
where that is an error. ``AXISWATCH_PHOENIX`` names the ``phoenix`` executable to use instead."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from serving import free_port, wait_http

ROOT = Path(__file__).resolve().parent.parent


def phoenix_executable() -> str:
    """The ``phoenix`` command, or a skip (a failure under ``AXISWATCH_REQUIRE_PHOENIX=1``) saying how to get it."""
    named = os.environ.get("AXISWATCH_PHOENIX")
    for candidate in (named, str(ROOT / ".venv-phoenix" / "bin" / "phoenix"), shutil.which("phoenix")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    why = ("Arize Phoenix is not installed: `make install` puts it in .venv-phoenix (or set AXISWATCH_PHOENIX to a "
           "phoenix executable)")
    if os.environ.get("AXISWATCH_REQUIRE_PHOENIX") == "1":
        pytest.fail(f"AXISWATCH_REQUIRE_PHOENIX=1 but {why}", pytrace=False)
    pytest.skip(why)


@contextmanager
def phoenix_server(workdir: Path, timeout_s: float = 180.0) -> Iterator[str]:
    """Yield the base URL of a Phoenix server storing into ``workdir`` (its OTLP/HTTP endpoint is
    ``{url}/v1/traces``); stopped at the end."""
    exe = phoenix_executable()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PHOENIX_"))}
    env.update(PHOENIX_WORKING_DIR=str(workdir), PHOENIX_HOST="127.0.0.1", PHOENIX_PORT=str(port),
               PHOENIX_GRPC_PORT=str(free_port()), PHOENIX_TELEMETRY_ENABLED="false")
    log = (workdir / "phoenix.log").open("w")
    proc = subprocess.Popen([exe, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_http(f"{url}/healthz", timeout_s=timeout_s, proc=proc)
        except AssertionError as e:
            raise AssertionError(f"{e}; Phoenix's log:\n{(workdir / 'phoenix.log').read_text()[-3000:]}") from None
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def project_spans(url: str, project: str, n: int, timeout_s: float = 60.0) -> list[dict]:
    """The spans Phoenix holds for ``project`` (REST: ``GET /v1/projects/{project}/spans``), oldest first, once
    there are at least ``n`` (Phoenix ingests in the background)."""
    deadline, got = time.monotonic() + timeout_s, []
    while time.monotonic() < deadline:
        r = httpx.get(f"{url}/v1/projects/{project}/spans", params={"limit": 1000}, timeout=10)
        if r.status_code == 200:
            got = r.json()["data"]
            if len(got) >= n:
                return sorted(got, key=lambda s: s["start_time"])
        elif r.status_code != 404:  # 404: no span of the project has arrived yet
            r.raise_for_status()
        time.sleep(0.3)
    raise AssertionError(f"Phoenix holds {len(got)} spans of project {project!r} after {timeout_s} s, not {n}")
