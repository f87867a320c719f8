"""Turns cut off by a dead ``serve`` process: keep what was streamed, mark the session interrupted.

A replica publishes every generated token to its session's live tail (with its text piece and the
replica's id) before the client sees it, and keeps a heartbeat key alive in Redis. When a replica
dies in the middle of a reply (SIGKILL, OOM, a lost machine) the reply's turn never reaches the
durable streams. :func:`recover_interrupted`, run every few seconds by the persistence workers, finds
sessions whose newest live entry is not final and whose replica's heartbeat has expired, stores the
partial reply as the turn it was (tokens, scores, drift state so far) and marks the session
``interrupted``. Writes are idempotent, so several workers may run it at once. A restarted replica
continues such a session at the next turn number.
"""

from __future__ import annotations

import logging
import time

from monitor.live import live_turns
from monitor.records import TurnRecord
from monitor.replay import tracked_scores

log = logging.getLogger(__name__)


def recover_interrupted(streams, store, stale_s: float = 5.0, window_s: float = 6 * 3600.0) -> list[str]:
    """Store the partial turns of sessions whose replica died mid-reply (in the last ``window_s``);
    the session ids whose tails were closed."""
    now = time.time()
    active = streams.live_sessions(now - window_s)
    latest = streams.live_latest(sorted(active))
    open_ = {sid: d for sid, d in latest.items() if not d.get("final") and d.get("replica")
             and now - active.get(sid, now) >= stale_s}
    if not open_:
        return []
    alive = streams.alive(sorted({d["replica"] for d in open_.values()}))
    done = []
    for sid, last in open_.items():
        if last["replica"] in alive:
            continue
        turn = last.get("turn")
        got = live_turns(streams.read_live(sid, count=100_000), int(turn) - 1).get(int(turn))
        scores, pieces, flags = (got["scores"], got["pieces"], got["capped"]) if got else ([], [], [])
        stored = store.turn_meta(sid, int(turn))
        if stored is None or (stored["role"] == "assistant" and stored["n_tokens"] < len(scores)):
            rec = TurnRecord.build(sid, int(turn), "assistant", "".join(pieces), int(last.get("layer") or 0),
                                   tokens=pieces, scores=scores,
                                   pre_cap_scores=tracked_scores(scores, got["pre"] if got else None),
                                   cap_flags=flags, state=last.get("state") or "ok", running=last.get("running"),
                                   model_id=last.get("model_id") or "")
            store.write(turns=[rec])
            store.mark_interrupted(sid)
            log.warning("session %s: replica %s died mid-reply; stored its %d streamed tokens of turn %s and "
                        "marked the session interrupted", sid, last["replica"], len(scores), turn)
        # else the whole turn is stored (its final live entry was lost, e.g. while Redis was down)
        # close the tail: the session is no longer generating, and nobody recovers it twice
        streams.publish_live(sid, {**last, "start": len(scores), "scores": [], "tokens": [], "final": True,
                                   "interrupted": True})
        done.append(sid)
    return done
