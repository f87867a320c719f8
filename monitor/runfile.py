"""The run file: where a running ``axiswatch serve`` says which embedded Redis it started.

Without ``REDIS_URL``, ``serve`` starts a redis-server of its own on a free port. Other commands on
the same store (``worker``, ``shadow``, ``dashboard``, ``alerts replay``) find it through a small
JSON file, ``{"pid", "started", "redis_url", "store"}``: next to a SQLite database
(``axiswatch.db`` -> ``axiswatch.db.serve.json``), else in the axiswatch cache folder under a name
made from the database's address. ``serve`` removes it when it stops; a file whose process is gone
(``serve`` was killed) or is another process by now (its pid reused) is ignored.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from probes import cache as probes_cache

log = logging.getLogger(__name__)

SUFFIX = ".serve.json"


def path_for(database_url: str, cache_dir: str | None = None) -> Path | None:
    """The run file of a deployment on ``database_url``; None for an in-memory or unreadable URL."""
    try:
        u = make_url(database_url)
    except ArgumentError:
        return None
    if u.get_backend_name() == "sqlite":
        if u.database in (None, "", ":memory:") or u.database.startswith("file:"):
            return None
        db = Path(u.database).expanduser().resolve()
        return db.with_name(db.name + SUFFIX)
    # a database server: the same store whatever the driver or password, so only where it is counts
    where = f"{u.get_backend_name()}://{u.host or ''}:{u.port or ''}/{u.database or ''}"
    return probes_cache.cache_dir(cache_dir) / "run" / f"serve-{hashlib.sha256(where.encode()).hexdigest()[:16]}.json"


def _started(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, /proc/PID/stat field 22), or None off Linux."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[19] if fields[0] != "Z" else "zombie"


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # somebody else's process: alive
        pass
    now = _started(pid)
    return now != "zombie" and (started is None or now is None or now == started)


def read(path: Path | None) -> dict | None:
    """The record of the ``serve`` running on this store, or None (no file, unreadable, or its process is gone)."""
    if path is None:
        return None
    try:
        rec = json.loads(path.read_text())
        pid = int(rec["pid"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("ignoring the unreadable run file %s (%s)", path, e)
        return None
    return rec if _alive(pid, rec.get("started")) else None


@contextlib.contextmanager
def recorded(path: Path | None, redis_url: str, store: str) -> Iterator[Path | None]:
    """Record this process's embedded ``redis_url`` in ``path`` while the block runs; yield the file written
    (None when there is none to write, another live ``serve`` holds it, or its folder is not writable)."""
    written = _write(path, redis_url, store) if path is not None else None
    try:
        yield written
    finally:
        if written is not None:
            remove(written)


def _write(path: Path, redis_url: str, store: str) -> Path | None:
    other = read(path)
    if other is not None and int(other["pid"]) != os.getpid():
        log.warning("another axiswatch serve (pid %s) already recorded its Redis %s in %s: other commands on "
                    "this store will use that one", other["pid"], other.get("redis_url"), path)
        return None
    rec = {"pid": os.getpid(), "started": _started(os.getpid()), "redis_url": redis_url, "store": store}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(rec) + "\n")
        os.replace(tmp, path)  # readers see the whole file or none
    except OSError as e:
        log.warning("cannot write the run file %s (%s): other commands on this store need REDIS_URL=%s",
                    path, e, redis_url)
        with contextlib.suppress(OSError):
            tmp.unlink()
        return None
    return path


def remove(path: Path) -> None:
    """Remove ``path`` if it is still this process's record (a later serve may have taken it over)."""
    try:
        if int(json.loads(path.read_text())["pid"]) == os.getpid():
            path.unlink()
    except (OSError, ValueError, KeyError, TypeError):
        pass
