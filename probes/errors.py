"""The axiswatch exception tree, shared by ``probes`` (model side), ``monitor`` and ``dashboard``.

It lives here, with no imports, at the bottom of the dependency graph: the model side
needs it and imports nothing from the service. ``monitor.errors`` re-exports it and adds
the service's own errors (``probes`` loads its modules lazily, so importing this one
never loads torch; the dashboard can use it).

Every error a user can cause derives from :class:`AxiswatchError`; the CLI
turns it into a one-line message and a non-zero exit, the HTTP API into a
JSON error with the status in ``http_status``.
"""

from __future__ import annotations


class AxiswatchError(Exception):
    """Base class: a problem the user can act on (bad input, wrong artifact...)."""

    http_status = 400


class ModelLoadError(AxiswatchError):
    """A model or tokenizer could not be loaded."""


class LayerNotFoundError(AxiswatchError):
    """The decoder-layer list of a model could not be located."""


class ArtifactError(AxiswatchError):
    """An axis or capping artifact is missing, corrupted or malformed."""


class ArtifactMismatchError(ArtifactError):
    """An artifact was made for a different model (hidden size, layers...)."""

    http_status = 409


class InputError(AxiswatchError):
    """Malformed user input (transcripts, generation records, options)."""

    http_status = 422


class JudgeError(AxiswatchError):
    """The role-adherence judge failed (network, bad reply)."""

    http_status = 502
