"""The exception tree of the service: the shared tree of :mod:`probes.errors` (re-exported here, so
``monitor`` and ``dashboard`` code imports its errors from one place) plus the service's own. The HTTP
API answers every error as ``{"error": {"message", "type"}}`` with ``type`` the name of its class here
and the class's ``http_status``."""

from __future__ import annotations

from probes.errors import (
    ArtifactError,
    ArtifactMismatchError,
    AxiswatchError,
    InputError,
    JudgeError,
    LayerNotFoundError,
    ModelLoadError,
)

__all__ = ["ArtifactError", "ArtifactMismatchError", "AuthenticationError", "AxiswatchError", "ConflictError",
           "InputError", "JudgeError", "LayerNotFoundError", "ModelLoadError", "NotFoundError", "RedisUnavailable",
           "ServerError", "StoreError", "TooLargeError"]


class StoreError(AxiswatchError):
    """The database is unreachable, at an unknown schema version, or refused a write."""

    http_status = 503


class NotFoundError(StoreError):
    """No row with that key (an alert's event id...)."""

    http_status = 404


class RedisUnavailable(AxiswatchError):
    """Redis could not be started or reached."""

    http_status = 503


class ConflictError(AxiswatchError):
    """The request contradicts what is stored (an audit id that holds another conversation)."""

    http_status = 409


class AuthenticationError(AxiswatchError):
    """No API key, or not one of the server's."""

    http_status = 401


class ForbiddenError(AxiswatchError):
    """A valid API key that may not do this (erasing sessions needs an admin key, AXISWATCH_ADMIN_API_KEYS)."""

    http_status = 403


class TooLargeError(InputError):
    """A request body over the size limit."""

    http_status = 413


class ServerError(AxiswatchError):
    """Something failed on the server's side; the server's log says what."""

    http_status = 500
