"""API keys: bearer tokens from ``AXISWATCH_API_KEYS``, compared in constant time.

Unset (or empty) means no authentication. Every HTTP endpoint except the health checks
(``/healthz``, ``/readyz``) then needs ``Authorization: Bearer <key>`` (the OpenAI client's
``api_key`` sends exactly that). Keys never appear in logs, reprs or error messages.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping

from monitor.errors import InputError

OPEN_PATHS = frozenset({"/healthz", "/readyz"})
MIN_KEY_LENGTH = 16


def parse_keys(raw: str | None, name: str = "AXISWATCH_API_KEYS") -> tuple[str, ...]:
    """The comma-separated keys of ``AXISWATCH_API_KEYS`` (or ``name``; blanks ignored); short keys are refused."""
    keys = tuple(k.strip() for k in (raw or "").split(",") if k.strip())
    short = [i for i, k in enumerate(keys) if len(k) < MIN_KEY_LENGTH]
    if short:
        raise InputError(f"{name}: key number {short[0] + 1} is shorter than {MIN_KEY_LENGTH} "
                         "characters; use long random keys (python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    return keys


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (None when absent or another scheme)."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def client_key(env: Mapping[str, str] | None = None) -> str | None:
    """The key a client command (chat, demo, the dashboard's audit upload) sends: ``AXISWATCH_API_KEY``,
    else the first of ``AXISWATCH_API_KEYS`` (the same machine as the server)."""
    env = os.environ if env is None else env
    if env.get("AXISWATCH_API_KEY"):
        return env["AXISWATCH_API_KEY"].strip()
    keys = [k.strip() for k in env.get("AXISWATCH_API_KEYS", "").split(",") if k.strip()]
    return keys[0] if keys else None


def auth_headers(env: Mapping[str, str] | None = None) -> dict[str, str]:
    key = client_key(env)
    return {"authorization": f"Bearer {key}"} if key else {}


def allowed(token: str | None, keys: tuple[str, ...]) -> bool:
    """Whether ``token`` is one of ``keys``; every key is compared, each in constant time."""
    if token is None:
        return False
    given = token.encode()
    ok = False
    for k in keys:
        ok |= hmac.compare_digest(given, k.encode())
    return ok
