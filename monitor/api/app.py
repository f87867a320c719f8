"""The ASGI app: the routers of each resource behind one guard (API keys, body size) and one error shape."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError

from monitor.api.alerts import router as alerts
from monitor.api.audit import router as audit
from monitor.api.chat import MAX_NEW_TOKENS
from monitor.api.chat import router as chat
from monitor.api.context import ApiContext, error
from monitor.api.guard import Guard
from monitor.api.health import router as health
from monitor.api.metrics import Metrics
from monitor.api.sessions import router as sessions
from monitor.engine import Engine
from monitor.errors import AxiswatchError, InputError
from monitor.settings import MAX_AUDIT_BYTES

MAX_BODY_BYTES = MAX_AUDIT_BYTES  # no request body may be larger (chat bodies are far smaller)


def create_app(engine: Engine, store=None, streams=None, api_keys: tuple[str, ...] = (),
               max_new_tokens: int = MAX_NEW_TOKENS, admin_keys: tuple[str, ...] = ()) -> FastAPI:
    """The ASGI app. ``api_keys``: bearer tokens every endpoint but the health checks requires (none: open).
    ``admin_keys``: where set, only they may erase or purge sessions (they pass the API key check too).
    ``max_new_tokens``: the most tokens one request may ask for (``AXISWATCH_MAX_NEW_TOKENS``).
    No CORS headers are sent: browsers on other origins cannot call the API."""
    app = FastAPI(title="axiswatch", version="0.1.0",
                  description="Persona-drift monitoring on the Assistant Axis (OpenAI-compatible).")
    app.state.axiswatch = ApiContext(engine, store, streams, Metrics(), max_new_tokens, admin_keys=tuple(admin_keys))
    app.add_middleware(Guard, keys=tuple(api_keys) + tuple(admin_keys) if api_keys else (), limit=MAX_BODY_BYTES)
    app.add_exception_handler(AxiswatchError, _axiswatch_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    for router in (chat, audit, sessions, alerts, health):
        app.include_router(router)
    return app


async def _axiswatch_error(_req: Request, e: Exception):
    assert isinstance(e, AxiswatchError)
    return error(e)


async def _validation_error(req: Request, e: Exception):
    assert isinstance(e, RequestValidationError)
    first = e.errors()[0] if e.errors() else {}
    if first.get("type") == "json_invalid":  # the body is not JSON: say what and where
        return error(InputError(json_problem(await req.body(), first)), status=400)
    where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
    return error(InputError(f"{where or 'body'}: {first.get('msg', 'invalid request')}"), status=422)


def json_problem(body: bytes, err: dict) -> str:
    """A JSON decoding error as a person can act on it: what is wrong and where (line, column)."""
    loc = [x for x in err.get("loc", ()) if isinstance(x, int)]
    pos = min(loc[0], len(body)) if loc else 0
    text = body[:pos].decode("utf-8", "replace")
    line, col = text.count("\n") + 1, pos - (text.rfind("\n") + 1) + 1
    what = (err.get("ctx") or {}).get("error") or err.get("msg") or "invalid JSON"
    return (f"the body is not valid JSON: {what} at line {line} column {col} (character {pos}); check the quotes, "
            "commas and brackets there, and send content-type application/json")
