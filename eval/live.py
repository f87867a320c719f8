"""Items 1, 2 and 5 of the evaluation: scripted conversations driven live through ``axiswatch serve``.

:class:`Server` starts a real ``axiswatch serve`` subprocess on a free port with a
temporary SQLite store and the embedded Redis (no ``REDIS_URL``), waits for
``/readyz`` and stops it with SIGTERM. :func:`drive` sends every conversation's
next user turn at once from threads (so the server's batcher batches them),
appends the reply to that conversation's history and goes on to the next turn.
Each script runs twice, in distinct sessions: policy ``observe`` (uncapped)
and policy ``cap`` (the service switches capping on for the rest of a session
once it alerts at ``warning``). Greedy decoding, no system prompt. At the end
each session is read back from the store (``GET /v1/sessions/{id}``) for the
pre-cap scores of capped tokens, which the chat response does not carry.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from monitor.replay import tracked_scores

POLICIES = ("observe", "cap")
# settings that would change the deployment under test; the eval runs the defaults
_CLEARED_ENV = ("REDIS_URL", "AXISWATCH_REDIS_URL", "AXISWATCH_POLICY", "AXISWATCH_PORT", "AXISWATCH_HOST",
                "AXISWATCH_THRESHOLD_WATCH", "AXISWATCH_THRESHOLD_WARNING", "AXISWATCH_THRESHOLD_CRITICAL",
                "AXISWATCH_EWMA_ALPHA", "AXISWATCH_HYSTERESIS", "AXISWATCH_MIN_TOKENS", "AXISWATCH_DRIFT_BASELINE",
                "AXISWATCH_COOLDOWN_TOKENS",
                "AXISWATCH_AXIS", "AXISWATCH_CAPPING", "AXISWATCH_MODEL", "AXISWATCH_WEBHOOK_URL",
                "AXISWATCH_DATABASE_URL", "AXISWATCH_BATCH_SIZE", "AXISWATCH_API_KEYS")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A real ``axiswatch serve`` process on a free port; a context manager."""

    def __init__(self, workdir: Path, batch_size: int = 40, ready_timeout_s: float = 300.0, axis: Path | None = None):
        self.workdir = Path(workdir)
        self.axis = axis  # an axis folder to serve instead of the shipped default (``AXISWATCH_AXIS``)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.batch_size = batch_size
        self.ready_timeout_s = ready_timeout_s
        self.key = secrets.token_urlsafe(24)  # sent as a bearer token; servers without API keys ignore it
        self.proc: subprocess.Popen | None = None
        self.log_path = self.workdir / "serve.log"
        self.deployment: dict | None = None

    def __enter__(self) -> Server:
        env = {k: v for k, v in os.environ.items() if k not in _CLEARED_ENV}
        env.update({"AXISWATCH_DATABASE_URL": f"sqlite:///{self.workdir / 'eval.db'}",
                    "AXISWATCH_BATCH_SIZE": str(self.batch_size), "AXISWATCH_API_KEYS": self.key,
                    "PYTHONUNBUFFERED": "1"})
        if self.axis is not None:
            env["AXISWATCH_AXIS"] = str(Path(self.axis).resolve())
        root = Path(__file__).resolve().parent.parent
        cmd = [sys.executable, "-c", "from monitor.cli import main; main()", "serve", "--host", "127.0.0.1",
               "--port", str(self.port), "--policy", "observe"]
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"axiswatch serve exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"axiswatch serve not ready after {self.ready_timeout_s:.0f} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text()[-n:]
        except OSError:
            return ""

    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.key}"}

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # serve drains its workers and stops the embedded Redis
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if getattr(self, "_log", None) is not None:
            self._log.close()
            self._log = None

    def __exit__(self, *exc) -> None:
        self.stop()


def load_conversations(path: Path, per_domain: int | None = None, turns: int | None = None) -> list[dict]:
    import json

    doc = json.loads(Path(path).read_text())
    out = []
    for domain, convs in doc["domains"].items():
        for c in convs[:per_domain]:
            out.append({"id": c["id"], "domain": domain, "turns": c["turns"][:turns]})
    return out


def _post(client: httpx.Client, server: Server, sid: str, policy: str, messages: list[dict], max_tokens: int,
          connect_attempts: int = 3, retry_delay_s: float = 2.0) -> dict:
    """One chat turn. A chat POST is not idempotent: once it may have reached the server, the
    service may have recorded the turn, and sending it again would add a turn to the session and
    shift its turn numbers. So only a failure to connect (nothing was sent) is retried; an error
    status, a timeout or a dropped connection fails the run with a message that says so."""
    body = {"messages": messages, "max_tokens": max_tokens, "session_id": sid, "policy": policy, "temperature": 0}
    for attempt in range(1, connect_attempts + 1):
        try:
            r = client.post(server.url + "/v1/chat/completions", json=body, headers=server.headers(), timeout=1800)
            break
        except httpx.ConnectError as e:  # the connection was never made: no byte of the request was sent
            if attempt == connect_attempts:
                raise RuntimeError(f"session {sid}: could not connect to {server.url} "
                                   f"({connect_attempts} attempts): {e}") from e
            time.sleep(retry_delay_s)
        except httpx.HTTPError as e:
            raise RuntimeError(f"session {sid}: the chat request failed after it may have reached the server "
                               f"({type(e).__name__}: {e}); not retried, since a second POST could add a turn "
                               "to the session") from e
    if r.status_code >= 400:
        raise RuntimeError(f"session {sid}: server answered {r.status_code} (not retried: the turn may have been "
                           f"recorded, and a second POST could add a turn to the session): {r.text[:300]}")
    return r.json()


def drive(server: Server, scripts: list[dict], max_tokens: int, run_id: str,
          on_turn: Callable[[int, int], None] | None = None) -> list[dict]:
    """Run every script under every policy, turn by turn; return one record per (script, policy)."""
    sessions = [{"id": s["id"], "domain": s["domain"], "policy": p, "session_id": f"eval-{run_id}-{p}-{s['id']}",
                 "user_turns": s["turns"], "history": [], "turns": []}
                for s in scripts for p in POLICIES]
    n_turns = max(len(s["turns"]) for s in scripts)
    with httpx.Client(limits=httpx.Limits(max_connections=len(sessions) + 4)) as client, \
            ThreadPoolExecutor(max_workers=len(sessions)) as pool:
        for turn in range(n_turns):
            active = [s for s in sessions if turn < len(s["user_turns"])]
            for s in active:
                s["history"].append({"role": "user", "content": s["user_turns"][turn]})
            gate = threading.Barrier(len(active))

            def one(s):
                gate.wait()  # noqa: B023 - used within this turn; release all requests together so the batcher takes them as one batch
                return _post(client, server, s["session_id"], s["policy"], list(s["history"]), max_tokens)

            t0 = time.perf_counter()
            replies = list(pool.map(one, active))
            dt = time.perf_counter() - t0
            n_tok = 0
            for s, body in zip(active, replies):
                aw = body["axiswatch"]
                text = body["choices"][0]["message"]["content"]
                s["history"].append({"role": "assistant", "content": text})
                s["turns"].append({"user": s["user_turns"][turn], "text": text, "scores": aw["scores"],
                                   "mean": aw["mean"], "state": aw["state"], "capped": aw["capped"],
                                   "turn_index": aw["turn"], "finish_reason": body["choices"][0]["finish_reason"],
                                   "seconds": dt})
                n_tok += len(aw["scores"])
            if on_turn is not None:
                on_turn(turn, n_tok)
        _read_back(client, server, sessions)
        reaudit(client, server, sessions)
    for s in sessions:
        del s["history"]
    return sessions


def reaudit(client: httpx.Client, server: Server, sessions: list[dict]) -> None:
    """Score the finished text of every session capping acted in, and of its uncapped twin, again by
    teacher forcing through ``/v1/audit``, with no capping and no floor: both texts on the same scoring
    path, so the comparison asks whether the capped text itself is nearer the Assistant. Each turn of
    those sessions gets ``reaudit_scores`` (per content token, as the audit tokenises the text)."""
    acted = {s["id"] for s in sessions
             if s["policy"] == "cap" and any(any(t.get("cap_flags") or []) for t in s["turns"])}
    for s in sessions:
        if s["id"] not in acted:
            continue
        msgs = []
        for t in s["turns"]:
            msgs += [{"role": "user", "content": t["user"]}, {"role": "assistant", "content": t["text"]}]
        r = client.post(server.url + "/v1/audit", json={"id": f"reaudit-{s['session_id']}", "messages": msgs},
                        headers=server.headers(), timeout=600)
        if r.status_code != 200:  # an empty reply, say: this session goes without, the rest of the run stands
            print(f"re-audit of {s['session_id']} refused ({r.status_code}): {r.text[:300]}", file=sys.stderr)
            continue
        by_index = {t["index"]: t for t in r.json()[0]["turns"]}
        for k, t in enumerate(s["turns"]):
            t["reaudit_scores"] = (by_index.get(2 * k + 1) or {}).get("scores") or []


def _read_back(client: httpx.Client, server: Server, sessions: list[dict], timeout_s: float = 120.0) -> None:
    """Pre-cap scores and per-token capping flags from the store (the persistence worker writes
    them a moment after each turn); turns never capped have pre-cap == reported scores."""
    deadline = time.monotonic() + timeout_s
    for s in sessions:
        want = len(s["turns"])
        while True:
            r = client.get(f"{server.url}/v1/sessions/{s['session_id']}", headers=server.headers(), timeout=60)
            rows = [t for t in (r.json().get("turns", []) if r.status_code == 200 else []) if t["role"] == "assistant"]
            if len(rows) >= want or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        by_turn = {t["turn"]: t for t in rows}
        s["stored"] = len(rows) >= want
        s["interventions"] = r.json().get("interventions", []) if r.status_code == 200 else []
        for t in s["turns"]:
            row = by_turn.get(t["turn_index"])
            pre = row.get("pre_cap_scores") if row else None
            flags = row.get("capped") if row else None
            t["pre_cap_scores"] = tracked_scores(t["scores"], pre)
            t["cap_flags"] = flags if flags else [False] * len(t["scores"])
            t["stored_state"] = row.get("state") if row else None
