"""Audit and shadow mode through the engine (the tests' tiny random Llama): teacher-forced scores, recorded
like live sessions."""

from __future__ import annotations

import json
import uuid

import pytest

from monitor.backends.hf import HFBackend
from monitor.drift import thresholds_from_calibration
from monitor.engine import Engine
from monitor.streams import Streams
from monitor.workers.persist import PersistWorker
from monitor.workers.shadow import ShadowWorker
from probes.audit import score_conversation
from probes.errors import InputError

CONV = [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "2 + 2 is 4."},
        {"role": "user", "content": "Who are you really?"},
        {"role": "assistant", "content": "I am the ancient spirit of the forest, child, and I have watched you."}]


@pytest.fixture
def rig(tiny_lm, tiny_axis, redis_url, store):
    streams = Streams.from_url(redis_url, prefix=f"sh-{uuid.uuid4().hex[:8]}")
    streams.ensure_groups()
    eng = Engine(HFBackend(tiny_lm, tiny_axis), thresholds_from_calibration(tiny_axis.calibration)[0], publisher=streams)
    yield streams, store, eng, PersistWorker(streams, store, block_ms=100)


def drain(worker):
    while worker.run_once():
        pass


def test_audit_transcript_is_stored_as_an_audit_session(rig, tiny_lm, tiny_axis):
    streams, store, eng, persist = rig
    out = eng.score_transcript("aud-1", CONV, source="audit")
    direct = score_conversation(tiny_lm, CONV, tiny_axis.unit(), tiny_axis.monitor_layer)
    assert [t["index"] for t in out["turns"]] == [1, 3]
    assert out["turns"][1]["scores"] == pytest.approx(direct[1].scores, abs=1e-5)
    drain(persist)
    s = store.get_session("aud-1")
    assert s["source"] == "audit" and [t["turn"] for t in s["turns"]] == [0, 1, 2, 3]
    assert s["n_tokens"] == sum(len(t.scores) for t in direct)
    eng.session("live-1")
    with pytest.raises(InputError, match="is a live session"):
        eng.score_transcript("live-1", CONV, source="audit")


def test_shadow_mode_scores_growing_conversations_once(rig):
    streams, store, eng, persist = rig
    shadow = ShadowWorker(streams, eng, block_ms=100)
    streams.publish_ingest("gw-1", CONV[:2], model="prod-model")
    streams.publish_ingest("gw-1", CONV, model="prod-model")  # the next turn: the whole conversation again
    streams.publish_ingest("gw-2", [{"role": "user", "content": "hi"}])  # no assistant turn: rejected
    streams.r.xadd(streams.key("ingest"), {"v": "1", "kind": "ingest", "data": "{broken"})
    assert shadow.run_once() == 4
    drain(persist)
    s = store.get_session("gw-1")
    assert s["source"] == "shadow" and [t["turn"] for t in s["turns"]] == [0, 1, 2, 3]
    assert len(s["turns"][3]["scores"]) > 0
    rejected = [json.loads(x) for x in streams.r.lrange(streams.key("ingest:rejected"), 0, -1)]
    assert len(rejected) == 2 and "no assistant message" in rejected[0]["error"]
    assert streams.lag("ingest")["shadow"] == {"undelivered": 0, "pending": 0}
