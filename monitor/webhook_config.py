"""Where and how alert webhooks are delivered: :class:`WebhookConfig`, read from ``AXISWATCH_WEBHOOK_*``
with the settings, and its Standard Webhooks signer. The URL is checked with httpx's own parser (what
delivers it), so a URL the worker could never send to is refused at start; the alert worker
(:mod:`monitor.workers.webhooks`, :mod:`monitor.workers.alerts`) delivers."""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote

import httpx
from standardwebhooks import Webhook

from monitor.errors import InputError


@dataclass(frozen=True, repr=False)
class WebhookConfig:
    """Where and how to deliver alerts. The secret is never shown by repr/str or in errors."""

    url: str
    secret: str  # Standard Webhooks form: "whsec_" + base64 of the key bytes
    max_attempts: int = 8
    base_delay_s: float = 1.0
    max_delay_s: float = 300.0
    timeout_s: float = 10.0
    dashboard_url: str | None = None  # AXISWATCH_DASHBOARD_URL: each payload links to its session there
    _signer: Webhook = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            u = httpx.URL(self.url)
            host = u.host
        except Exception:  # noqa: BLE001 - InvalidURL, or idna's error for a host it cannot encode
            raise InputError("AXISWATCH_WEBHOOK_URL is not a valid URL") from None
        if u.scheme not in ("http", "https") or not host:
            raise InputError(f"AXISWATCH_WEBHOOK_URL must be an http:// or https:// URL (scheme {u.scheme!r})")
        if not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise InputError(f"webhook max_attempts must be a positive integer, not {self.max_attempts!r}")
        for name in ("base_delay_s", "max_delay_s", "timeout_s"):
            if not isinstance(getattr(self, name), (int, float)) or getattr(self, name) < 0:
                raise InputError(f"webhook {name} must be a non-negative number, not {getattr(self, name)!r}")
        object.__setattr__(self, "_signer", _signer(self.secret))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WebhookConfig | None:
        """From AXISWATCH_WEBHOOK_URL, AXISWATCH_WEBHOOK_SECRET, AXISWATCH_WEBHOOK_MAX_ATTEMPTS; None without a URL."""
        env = os.environ if env is None else env
        url = (env.get("AXISWATCH_WEBHOOK_URL") or "").strip()
        if not url:
            return None
        secret = (env.get("AXISWATCH_WEBHOOK_SECRET") or "").strip()
        if not secret:
            raise InputError("AXISWATCH_WEBHOOK_URL is set but AXISWATCH_WEBHOOK_SECRET is not (a whsec_... secret)")
        n = (env.get("AXISWATCH_WEBHOOK_MAX_ATTEMPTS") or "8").strip()
        if not n.isdigit() or int(n) < 1:
            raise InputError(f"AXISWATCH_WEBHOOK_MAX_ATTEMPTS must be a positive integer, not {n!r}")
        dash = (env.get("AXISWATCH_DASHBOARD_URL") or "").strip().rstrip("/") or None
        if dash and not dash.startswith(("http://", "https://")):
            raise InputError(f"AXISWATCH_DASHBOARD_URL must be an http:// or https:// URL, not {dash!r}")
        return cls(url=url, secret=secret, max_attempts=int(n), dashboard_url=dash)

    @property
    def target(self) -> str:
        """The receiver without path, query or credentials (paths often carry tokens): safe to log."""
        u = httpx.URL(self.url)
        host = f"[{u.host}]" if ":" in u.host else u.host
        return f"{u.scheme}://{host}" + (f":{u.port}" if u.port else "")

    def __repr__(self) -> str:
        return (f"WebhookConfig(url={self.target + '/...'!r}, secret='whsec_***', max_attempts={self.max_attempts}, "
                f"base_delay_s={self.base_delay_s}, max_delay_s={self.max_delay_s}, timeout_s={self.timeout_s})")

    def link(self, session_id: str) -> str | None:
        """The session's page on the dashboard (None without AXISWATCH_DASHBOARD_URL)."""
        return f"{self.dashboard_url}/session?id={quote(session_id, safe='')}" if self.dashboard_url else None

    def signature(self, msg_id: str, at: datetime, body: str) -> str:
        """The ``webhook-signature`` header of one message (Standard Webhooks: ``v1,`` + HMAC-SHA256)."""
        return self._signer.sign(msg_id, at, body)


def _signer(secret: Any) -> Webhook:
    bad = InputError("AXISWATCH_WEBHOOK_SECRET must be a Standard Webhooks secret: whsec_ followed by base64")
    if not isinstance(secret, str) or not secret.startswith("whsec_") or len(secret) <= len("whsec_"):
        raise bad
    body = secret[len("whsec_"):]
    try:
        base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
        return Webhook(secret)
    except Exception:  # noqa: BLE001 - whatever went wrong, never echo (or chain) the secret
        raise bad from None
