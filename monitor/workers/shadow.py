"""Shadow mode: score conversations that another inference server produced.

A gateway publishes each finished turn to the ``{prefix}:ingest`` stream
(``Streams.publish_ingest``: fields ``v``, ``kind=ingest``, ``data`` = JSON
``{"session_id": str, "messages": [{"role", "content"}...], "model": str}``,
the whole conversation so far, ending with the assistant's reply). The shadow
worker (consumer group ``shadow``) scores it by teacher forcing with the probe
model and records and alerts exactly like a live session (source ``shadow``).
Entries it cannot use are acknowledged and kept, with the reason, on the list
``{prefix}:ingest:rejected``.
"""

from __future__ import annotations

import logging
import threading

from monitor.engine import Engine
from monitor.errors import AxiswatchError
from monitor.streams import Streams
from monitor.workers.persist import StreamWorker, consumer_name
from probes.audit import parse_record

log = logging.getLogger(__name__)


class ShadowWorker(StreamWorker):
    def __init__(self, streams: Streams, engine: Engine, name: str | None = None, block_ms: int = 500,
                 reclaim_idle_ms: int = 60_000):
        self.streams, self.engine, self.block_ms = streams, engine, block_ms
        self.name = name or consumer_name("shadow")
        self.reclaim_idle_ms = reclaim_idle_ms
        self.scored = 0
        self._stop = threading.Event()

    def _handle(self, entry) -> None:
        data = entry.data
        try:
            sid = data.get("session_id") if isinstance(data, dict) else None
            if not isinstance(sid, str) or not sid:
                raise AxiswatchError("ingest entry without a 'session_id' string")
            _rid, msgs = parse_record(data, f"ingest entry {entry.id}")
            self.engine.score_transcript(sid, msgs, source="shadow")
            self.scored += 1
        except AxiswatchError as e:
            log.error("rejected ingest entry %s: %s", entry.id, e)
            self.streams.reject_ingest(entry.id, str(e), data)

    def run_once(self, block_ms: int | None = None) -> int:
        entries = self.streams.reclaim("ingest", "shadow", self.name, self.reclaim_idle_ms)
        entries += self.streams.read_group("ingest", "shadow", self.name, count=16, block_ms=block_ms)
        for e in entries:  # in order: a session's turns arrive in sequence
            self._handle(e)
            self.streams.ack("ingest", "shadow", [e.id])
        if entries:
            self.streams.trim("ingest")  # never below what the group still needs
        return len(entries)
