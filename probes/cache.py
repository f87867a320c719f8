"""The axiswatch cache folder, resolved in one place: ``AXISWATCH_CACHE_DIR`` (or the settings' value),
else ``~/.cache/axiswatch``. It holds the bundled model converted once (``models/``) and the run files
of deployments on a database server (``run/``). No torch here: data-only commands use it too."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(override: str | Path | None = None) -> Path:
    """The cache folder: ``override`` (``Settings.cache_dir``), else ``AXISWATCH_CACHE_DIR``, else
    ``~/.cache/axiswatch``."""
    return Path(override or os.environ.get("AXISWATCH_CACHE_DIR") or Path.home() / ".cache" / "axiswatch")
