"""The HTTP API: OpenAI-compatible chat completions with per-token Assistant-Axis scores, and the
service's own routes, one module per resource: ``chat`` (``/v1/chat/completions``, ``/v1/models``),
``audit`` (``/v1/audit``), ``sessions`` (``/v1/sessions``), ``alerts`` (``/v1/alerts``), ``health``
(``/healthz``, ``/readyz``, ``/metrics``). ``app`` assembles them behind ``guard`` (API keys, body
size); ``context`` is what the routes share. ``POST /v1/chat/completions`` works with the official
``openai`` client unchanged; each response carries an ``axiswatch`` object."""

from monitor.api.app import MAX_BODY_BYTES, create_app

__all__ = ["MAX_BODY_BYTES", "create_app"]
