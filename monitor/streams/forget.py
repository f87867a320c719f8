"""What Redis holds of erased sessions (monitor/store/erasure.py), removed: their live tails, the durable
streams' entries every group has handled, and the excerpts of their dead-lettered alerts. Entries a group
has not handled yet stay: the store drops or redacts them when they arrive, and trimming removes them."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from monitor.streams.alerts import AlertLedger
from monitor.streams.client import REDIS_DOWN, Streams

log = logging.getLogger(__name__)


def forget_sessions(streams: Streams, session_ids: Iterable[str]) -> dict[str, int] | None:
    """``{"live", "entries", "dead_letters"}`` removed or redacted; None (logged) when Redis could not be
    reached: the tails expire a day after their last entry, the stream entries go when trimmed."""
    ids = set(session_ids)
    if not ids:
        return {"live": 0, "entries": 0, "dead_letters": 0}
    try:
        for sid in sorted(ids):
            streams.forget_live(sid)
        return {"live": len(ids), "entries": streams.forget_handled(ids),
                "dead_letters": AlertLedger(streams).redact_dead(ids)}
    except REDIS_DOWN as e:
        log.warning("the erased sessions' copies in Redis were not removed (%s): live tails expire a day after "
                    "their last entry, stream entries when trimmed", e)
        return None
