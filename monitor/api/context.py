"""What every route of the HTTP API shares: the engine, the store, Redis, the metrics and the request
limits (:class:`ApiContext`, held in ``app.state``), and the JSON error shape."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import JSONResponse

from monitor.auth import allowed, bearer
from monitor.errors import AxiswatchError, ForbiddenError

if TYPE_CHECKING:
    from monitor.api.metrics import Metrics
    from monitor.engine import Engine


@dataclass(frozen=True)
class ApiContext:
    engine: Engine
    store: Any  # monitor.store.Store, or None: a replica without a store answers 4xx on its routes
    streams: Any  # monitor.streams.Streams, or None
    metrics: Metrics
    max_new_tokens: int  # the most tokens one request may ask for (AXISWATCH_MAX_NEW_TOKENS)
    started: int = field(default_factory=lambda: int(time.time()))  # the model's "created" in /v1/models
    admin_keys: tuple[str, ...] = field(default=(), repr=False)  # AXISWATCH_ADMIN_API_KEYS: who may erase

    def need_admin(self, authorization: str | None) -> None:
        """With admin keys set, only they may erase or purge sessions (403 for any other key)."""
        if self.admin_keys and not allowed(bearer(authorization), self.admin_keys):
            raise ForbiddenError("erasing sessions needs an admin key (one of AXISWATCH_ADMIN_API_KEYS on the "
                                 "server): send 'Authorization: Bearer <admin key>'")

    @property
    def model_id(self) -> str:
        return self.engine.model_id

    def need_store(self) -> Any:
        if self.store is None:
            raise AxiswatchError("this replica has no store configured")
        return self.store


def context(request: Request) -> ApiContext:
    """The app's :class:`ApiContext` (a FastAPI dependency)."""
    return request.app.state.axiswatch


Ctx = Annotated[ApiContext, Depends(context)]  # a route's parameter: the app's context


def error(e: AxiswatchError, status: int | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    """The JSON answer to an error: ``{"error": {"message", "type"}}``, ``type`` the name of its class in
    :mod:`monitor.errors`, the status its ``http_status`` unless given."""
    return JSONResponse({"error": {"message": str(e), "type": type(e).__name__}},
                        status_code=status or e.http_status, headers=headers)
