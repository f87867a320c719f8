"""A publisher for an in-process engine that writes each record straight into the store (what the
persistence worker does), so a test has stored sessions without Redis."""

from __future__ import annotations

from monitor.streams.client import KIND_OF
from monitor.workers.persist import ARG


class StoreWriter:
    def __init__(self, store):
        self.store = store

    def publish(self, record) -> None:
        self.store.write(**{ARG[KIND_OF[type(record)]]: [record]})

    def publish_live_many(self, items) -> None:
        pass
