"""The ASGI middleware in front of every route: API keys, then the body size limit."""

from __future__ import annotations

from monitor.api.context import error
from monitor.auth import OPEN_PATHS, allowed, bearer
from monitor.errors import AuthenticationError, TooLargeError


class Guard:
    """With ``keys``, every path but the health checks needs ``Authorization: Bearer <key>`` (401).
    A body over ``limit`` bytes gets 413, whether it declares its length or comes chunked (a chunked
    body is read up to the limit before the route sees it)."""

    def __init__(self, app, keys: tuple[str, ...], limit: int):
        self.app, self.keys, self.limit = app, keys, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.keys and scope["path"] not in OPEN_PATHS and not allowed(bearer(headers.get("authorization")),
                                                                          self.keys):
            reply = error(AuthenticationError(
                "missing or invalid API key: send 'Authorization: Bearer <key>' with a key this server accepts "
                "(axiswatch's own clients send AXISWATCH_API_KEY; the OpenAI client sends its api_key)"),
                headers={"WWW-Authenticate": "Bearer"})
            return await reply(scope, receive, send)
        too_large = error(TooLargeError(f"request body over the limit of {self.limit} bytes"))
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit() or int(length) > self.limit:
                return await too_large(scope, receive, send)
            return await self.app(scope, receive, send)
        if "chunked" not in headers.get("transfer-encoding", "").lower():
            return await self.app(scope, receive, send)
        parts, seen, more = [], 0, True
        while more:
            msg = await receive()
            if msg["type"] != "http.request":  # the client went away
                return
            parts.append(msg.get("body") or b"")
            seen += len(parts[-1])
            if seen > self.limit:
                return await too_large(scope, receive, send)
            more = msg.get("more_body", False)
        whole = [{"type": "http.request", "body": b"".join(parts), "more_body": False}]

        async def replay():
            return whole.pop() if whole else await receive()

        return await self.app(scope, replay, send)
