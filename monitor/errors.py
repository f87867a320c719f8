"""The exception tree of the service: the shared tree of :mod:`probes.errors` (re-exported here, so
``monitor`` and ``dashboard`` code imports its errors from one place) plus the service's own."""

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

__all__ = ["ArtifactError", "ArtifactMismatchError", "AxiswatchError", "InputError", "JudgeError",
           "LayerNotFoundError", "ModelLoadError", "NotFoundError", "RedisUnavailable", "StoreError"]


class StoreError(AxiswatchError):
    """The database is unreachable, at an unknown schema version, or refused a write."""

    http_status = 503


class NotFoundError(StoreError):
    """No row with that key (an alert's event id...)."""

    http_status = 404


class RedisUnavailable(AxiswatchError):
    """Redis could not be started or reached."""

    http_status = 503
