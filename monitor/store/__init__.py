"""The database, and the only package that touches it: the typed schema and its migrations
(:mod:`~monitor.store.schema`), records to rows and back (:mod:`~monitor.store.rows`, pure), the
store with its engine and transactions (:mod:`~monitor.store.db`) and a stored session as a file
(:mod:`~monitor.store.export`). SQLite by default, PostgreSQL for scale, through SQLAlchemy."""

from monitor.errors import NotFoundError, StoreError
from monitor.store.db import DEFAULT_URL, Store
from monitor.store.schema import (
                                  SCHEMA_VERSION,
                                  AlertRow,
                                  Base,
                                  InterventionRow,
                                  SchemaVersion,
                                  SessionRow,
                                  SpillRow,
                                  TurnRow,
)

__all__ = ["DEFAULT_URL", "SCHEMA_VERSION", "AlertRow", "Base", "InterventionRow", "NotFoundError", "SchemaVersion",
           "SessionRow", "SpillRow", "Store", "StoreError", "TurnRow"]
