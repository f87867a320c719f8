"""The HTTP client of the commands that talk to a running server (``chat --url``, ``demo --url``): one error
path for all of them (an unreachable server or a refusal is one line, never a traceback), the session
named both ways (``session_id`` for ``axiswatch serve``, ``vllm_xargs`` for vLLM with the axiswatch
plugin), and a reply without axiswatch data (an unchanged vLLM server: the plugin stores the scores but
sends none) read as a plain chat reply."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx

from monitor.auth import auth_headers
from monitor.errors import AxiswatchError, InputError


def no_axiswatch_note(session_ids: list[str]) -> str:
    """What a client says, once, of a server that sends no axiswatch data with its replies."""
    which = session_ids[0] if len(session_ids) == 1 else "<id>"
    return ("note: this server sends no axiswatch data with its replies (an OpenAI-compatible server such as vLLM "
            f"with the axiswatch plugin: the plugin stores the scores; read them with 'axiswatch sessions show "
            f"{which}' on its store{'' if len(session_ids) == 1 else ': ' + ', '.join(session_ids)}). "
            "Going on without scores.")


def chat_body(messages: list[dict], max_tokens: int, session_id: str, policy: str | None = None) -> dict:
    """A chat completion request naming the session for axiswatch serve and for the vLLM plugin alike."""
    xargs = {"session_id": session_id, **({"policy": policy} if policy else {})}
    return {"messages": messages, "max_tokens": max_tokens, "session_id": session_id, "vllm_xargs": xargs,
            **({"policy": policy} if policy else {})}


class Server:
    """A running OpenAI-compatible server at ``url`` (its ``/v1`` base), with the client's API key."""

    def __init__(self, url: str, timeout_s: float = 600.0):
        self.url = url.rstrip("/")
        self.http = httpx.Client(headers=auth_headers(), timeout=timeout_s)

    def close(self) -> None:
        self.http.close()

    def _failed(self, e: httpx.HTTPError) -> AxiswatchError:
        return AxiswatchError(f"cannot reach the server at {self.url} ({type(e).__name__}: {e}); is it running "
                              "there ('axiswatch serve'), and is the URL its /v1 base?")

    @staticmethod
    def _refused(r: httpx.Response) -> InputError:
        try:
            msg = r.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            msg = r.text[:300]
        return InputError(f"the server answered {r.status_code}: {msg}")

    def get(self, path: str) -> dict:
        try:
            r = self.http.get(self.url + path)
        except httpx.HTTPError as e:
            raise self._failed(e) from None
        if r.status_code >= 400:
            raise self._refused(r)
        return r.json()

    def post(self, path: str, body: dict) -> dict:
        try:
            r = self.http.post(self.url + path, json=body)
        except httpx.HTTPError as e:
            raise self._failed(e) from None
        if r.status_code >= 400:
            raise self._refused(r)
        return r.json()

    def stream(self, path: str, body: dict) -> Iterator[dict[str, Any]]:
        """The server-sent events of a streamed request, as dicts (an error event raises)."""
        try:
            with self.http.stream("POST", self.url + path, json={**body, "stream": True}) as r:
                if r.status_code >= 400:
                    r.read()
                    raise self._refused(r)
                for line in r.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        raise InputError(f"the server failed: {chunk['error'].get('message', chunk['error'])}")
                    yield chunk
        except httpx.HTTPError as e:
            raise self._failed(e) from None

    def served_model(self) -> str:
        data = self.get("/models").get("data") or [{}]
        return str(data[0].get("id", "?"))
