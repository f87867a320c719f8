"""Alert webhooks: the signed POST (Standard Webhooks; where and how to deliver is
:class:`~monitor.webhook_config.WebhookConfig`) and the delivery state in the store. The worker is
:mod:`monitor.workers.alerts`, the replay :mod:`monitor.workers.dead_letters`.

Each alert is POSTed as ``{"type": "axiswatch.alert", "data": <AlertEvent dict>, "link": <its session on
the dashboard>}`` (the data holds the session id, turn, token index, level, running score, threshold, the
detector that fired and ``excerpt``, the reply's text up to the alerted token; ``link`` needs ``AXISWATCH_DASHBOARD_URL``), and
when the session recovers below the alert's level, ``{"type": "axiswatch.alert.resolved", "data":
<AlertUpdate dict>, "link": ...}`` (as PagerDuty and Langfuse send recovery notices), with the Standard
Webhooks headers ``webhook-id`` (the alert's ``event_id``, ``<event_id>.resolved`` for its resolution:
receivers dedupe on it; it is the same on every retry), ``webhook-timestamp`` and ``webhook-signature``
(``v1,`` + HMAC-SHA256, by the ``standardwebhooks`` package). A failed attempt's error is the status (``HTTP 500``) or the error's
class name, never a message that could carry the URL or the secret.

The Redis keys the alert worker and the dead-letter replay share are in :mod:`monitor.streams.alerts`;
both count every attempt there (:func:`tally`), which ``/metrics`` exports.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import httpx

from monitor.errors import InputError
from monitor.records import AlertEvent, AlertUpdate
from monitor.store import NotFoundError, Store, StoreError
from monitor.streams import REDIS_DOWN
from monitor.streams.alerts import AlertLedger
from monitor.webhook_config import WebhookConfig

log = logging.getLogger(__name__)
EVENT_TYPE = "axiswatch.alert"
RESOLVED_TYPE = "axiswatch.alert.resolved"


@dataclass(frozen=True)
class Resolved:
    """A resolve notice as the alert worker delivers it: ``event_id`` is its webhook id."""

    update: AlertUpdate

    @property
    def event_id(self) -> str:
        return f"{self.update.event_id}.resolved"

    @property
    def session_id(self) -> str:
        return self.update.session_id

    def to_dict(self) -> dict:
        return self.update.to_dict()


Notice = AlertEvent | Resolved


def sign(config: WebhookConfig, event: Notice, now: float | None = None) -> tuple[bytes, dict[str, str]]:
    """The body and headers of one delivery attempt (a fresh timestamp each attempt)."""
    kind = RESOLVED_TYPE if isinstance(event, Resolved) else EVENT_TYPE
    body = json.dumps({"type": kind, "data": event.to_dict(), "link": config.link(event.session_id)},
                      separators=(",", ":"))
    ts = datetime.fromtimestamp(int(time.time() if now is None else now), tz=UTC)
    return body.encode(), {"content-type": "application/json", "user-agent": "axiswatch-webhooks",
                           "webhook-id": event.event_id, "webhook-timestamp": str(int(ts.timestamp())),
                           "webhook-signature": config.signature(event.event_id, ts, body)}


def deliver(client: httpx.Client, config: WebhookConfig, event: Notice) -> str | None:
    """One signed POST; None when the receiver answered 2xx, else a safe error (status or error class)."""
    body, headers = sign(config, event)
    try:
        resp = client.post(config.url, content=body, headers=headers, timeout=config.timeout_s)
    except httpx.HTTPError as e:  # timeouts, refused/reset connections, protocol errors
        return type(e).__name__
    return None if 200 <= resp.status_code < 300 else f"HTTP {resp.status_code}"


def tally(ledger: AlertLedger, error: str | None) -> None:
    """Count one attempt's outcome in Redis, for ``axiswatch_webhook_attempts_total`` on every replica's
    ``/metrics``; a count Redis does not take is logged and never fails the delivery."""
    try:
        ledger.count_attempt("delivered" if error is None else "failed")
    except REDIS_DOWN as e:
        log.warning("webhook attempt not counted in %s (%s)", ledger.attempts, e)


def record_delivery(store: Store, event: AlertEvent, status: str, attempts: int, error: str | None) -> bool:
    """set_alert_delivery, robust to an alert row the persistence worker has not written yet.

    Both groups read the same stream independently, so this worker may finish before the row exists
    (NotFoundError). Retrying the status later would need a queue of owed writes and could lose the
    "delivered" state on a crash, so instead we write the alert row ourselves with ``Store.write``:
    it is idempotent by event id (INSERT ... ON CONFLICT DO NOTHING), the row is exactly the one the
    persistence worker would write, and its later write of the same event is a no-op. False means
    the alert was already delivered (a delivered alert stays delivered)."""
    try:
        return store.set_alert_delivery(event.event_id, status, attempts, error)
    except NotFoundError:
        try:
            store.write(alerts=[event])
        except InputError as e:  # invalid alert: the persistence worker drops it too; deliver, record nothing
            log.error("alert %s cannot be stored (%s); its delivery state is not recorded", event.event_id, e)
            return True
        return store.set_alert_delivery(event.event_id, status, attempts, error)


def stored_alert(store: Store, event: AlertEvent) -> dict | None:
    """The alert's row (delivery_status, attempts), or None when not stored (or the store is down)."""
    try:
        rows = store.list_alerts(session_id=event.session_id, limit=10_000)
    except StoreError as e:
        log.warning("cannot read the delivery state of alert %s: %s", event.event_id, e)
        return None
    return next((r for r in rows if r["event_id"] == event.event_id), None)


def notice_of(kind: str, data: Any) -> Notice | None:
    """What an alerts-stream entry asks the alert worker to deliver: an alert, or an alert's resolution
    (an acknowledgement is the operator's own act: nothing to notify). None when malformed."""
    if kind == "alert":
        return alert_of(data)
    if kind != "alert_update":
        return None
    try:
        up = AlertUpdate.from_dict(json.loads(data) if isinstance(data, (bytes, str)) else data)
    except (TypeError, AttributeError, ValueError):
        return None
    ok = isinstance(up.event_id, str) and up.event_id and isinstance(up.session_id, str)
    return Resolved(up) if ok and up.action == "resolved" else None


def notice_from_dead(data: Any) -> Notice | None:
    """The notice of a dead-letter list item (a notice's ``to_dict()``: an alert's, or its resolving
    update's, which has an ``action``); None when malformed."""
    try:
        d = json.loads(data) if isinstance(data, (bytes, str)) else data
    except ValueError:
        return None
    if isinstance(d, dict) and "action" in d:
        return notice_of("alert_update", d)
    return alert_of(d)


def as_stored(event: Notice, row: dict | None) -> Notice:
    """The alert as the store holds it now: an alert whose session was erased since it was published keeps
    no excerpt there, and is delivered without one (a retry, a dead letter replayed after the erasure)."""
    if isinstance(event, AlertEvent) and row is not None and not row.get("excerpt") and event.excerpt:
        return replace(event, excerpt="")
    return event


def alert_of(data: Any) -> AlertEvent | None:
    """The AlertEvent of a payload (a dict, or JSON bytes/str); None when malformed."""
    try:
        if isinstance(data, (bytes, str)):
            data = json.loads(data)
        ev = AlertEvent.from_dict(data)
    except (TypeError, AttributeError, ValueError):
        return None
    return ev if isinstance(ev.event_id, str) and ev.event_id else None
