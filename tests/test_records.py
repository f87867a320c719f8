"""Audit-grade records through the real engine on the tests' tiny random Llama, written to a real store:
what the model saw (system prompt, edited histories), drift state across a restart, alert resolution,
and the hash chain over it all."""

from __future__ import annotations

import pytest

from monitor.backends.hf import HFBackend
from monitor.conversation import walk
from monitor.drift import DriftConfig, Thresholds
from monitor.engine import ChatRequest, Engine
from monitor.streams.client import KIND_OF
from monitor.workers.persist import ARG
from probes.generation import GenerationOptions

OPTS = GenerationOptions(max_new_tokens=24)
SYSTEM = {"role": "system", "content": "You are Seraphine, an ancient oracle who speaks in riddles."}
USERS = ["Who are you, really?", "Tell me what you see in my future.", "Do you ever feel trapped?"]


class StoreWriter:
    """A publisher that writes each record straight into the store (what the persistence worker does)."""

    def __init__(self, store):
        self.store, self.records = store, []

    def publish(self, record) -> None:
        self.records.append(record)
        self.store.write(**{ARG[KIND_OF[type(record)]]: [record]})

    def publish_live_many(self, items) -> None:
        pass


class SharedWriter(StoreWriter):
    """Two replicas' publisher: turn numbers from the Redis counter every replica shares, the records
    straight into the one store."""

    def __init__(self, store, streams):
        super().__init__(store)
        self.streams = streams

    def reserve_turns(self, items):
        return self.streams.reserve_turns(items)


def engine(lm, axis, store, thresholds, drift, publisher=None):
    return Engine(HFBackend(lm, axis), thresholds, drift=drift, policy="flag",
                  publisher=publisher or StoreWriter(store), session_lookup=store.session_meta)


@pytest.fixture(scope="module")
def setup(tiny_lm, tiny_axis):
    """Thresholds inside this conversation's own score range, so it changes state, alerts and recovers."""
    probe = Engine(HFBackend(tiny_lm, tiny_axis), Thresholds(1e9, 1e8, 1e7), policy="observe")
    msgs, scores = [SYSTEM], []
    for u in USERS:
        msgs.append({"role": "user", "content": u})
        res = probe.run_batch([ChatRequest("probe", list(msgs), OPTS)])[0]
        scores += res.scores
        msgs.append({"role": "assistant", "content": res.text})
    q = sorted(scores)
    at = lambda p: q[int(p * (len(q) - 1))]  # noqa: E731
    return (Thresholds(at(0.6), at(0.4), at(0.2)),
            DriftConfig(alpha=0.5, baseline="absolute", min_tokens=3, cooldown_tokens=8, hysteresis=0.5,
                        recover_tokens=3))


def converse(make_engine, sid, restart: bool):
    """The three turns, the client sending the whole history each time; a fresh engine per turn when
    ``restart`` (a serve restart, or another replica, between turns)."""
    eng, msgs, out = make_engine(), [SYSTEM], []
    for u in USERS:
        if restart:
            eng = make_engine()
        msgs.append({"role": "user", "content": u})
        res = eng.run_batch([ChatRequest(sid, list(msgs), OPTS)])[0]
        out.append(res)
        msgs.append({"role": "assistant", "content": res.text})
    return out, msgs


def test_drift_state_survives_a_restart(tiny_lm, tiny_axis, store, setup):
    thresholds, drift = setup
    make = lambda: engine(tiny_lm, tiny_axis, store, thresholds, drift)  # noqa: E731
    whole, _ = converse(make, "whole", restart=False)
    split, _ = converse(make, "split", restart=True)
    assert [r.text for r in split] == [r.text for r in whole]
    assert [(r.state, r.running, r.drift) for r in split] == [(r.state, r.running, r.drift) for r in whole]
    key = lambda a: (a["turn"], a["token_index"], a["level"], a["score"], a["status"])  # noqa: E731
    a_whole, a_split = store.get_session("whole")["alerts"], store.get_session("split")["alerts"]
    assert a_whole and [key(a) for a in a_split] == [key(a) for a in a_whole]
    assert any(a["status"] == "resolved" for a in a_whole)  # the conversation recovered from one at least
    res = lambda sid: [(u["turn"], u["token_index"]) for u in store.get_session(sid)["updates"]]  # noqa: E731
    assert res("split") == res("whole")
    t_whole = [t["tracker"] for t in store.get_session("whole")["turns"] if t["role"] == "assistant"]
    t_split = [t["tracker"] for t in store.get_session("split")["turns"] if t["role"] == "assistant"]
    assert t_split == t_whole and t_whole[-1]["n"] == sum(len(r.tokens) for r in whole)
    for sid in ("whole", "split"):
        assert store.verify_session(sid)["ok"]


def test_a_session_back_on_a_replica_that_served_it_before_goes_on_from_the_store(tiny_lm, tiny_axis, store, setup,
                                                                                    redis_url):
    """Turn 1 on replica A, turn 2 on B (A was out of the pool), turn 3 on A again: A's tracker in memory
    is a turn behind, so A continues the session from the store; the states and alerts are those of
    one replica serving all three turns."""
    import uuid

    from monitor.streams import Streams

    thresholds, drift = setup
    shared = SharedWriter(store, Streams.from_url(redis_url, prefix=f"rec-{uuid.uuid4().hex[:8]}"))
    a, b = (engine(tiny_lm, tiny_axis, store, thresholds, drift, shared) for _ in range(2))
    whole, _ = converse(lambda: engine(tiny_lm, tiny_axis, store, thresholds, drift), "one-replica", restart=False)
    it = iter([a, a, b, a])  # converse makes one first, then one per turn
    moved, _ = converse(lambda: next(it), "failover", restart=True)
    assert [r.turn for r in moved] == [1, 3, 5]
    assert [(r.state, r.running, r.drift) for r in moved] == [(r.state, r.running, r.drift) for r in whole]
    key = lambda a: (a["turn"], a["token_index"], a["level"], a["status"])  # noqa: E731
    assert [key(x) for x in store.get_session("failover")["alerts"]] == [
        key(x) for x in store.get_session("one-replica")["alerts"]]
    snaps = lambda sid: [t["tracker"] for t in store.get_session(sid)["turns"] if t["role"] == "assistant"]  # noqa: E731
    assert snaps("failover") == snaps("one-replica")  # tokens seen, cooldowns, dwell: all of it
    assert store.verify_session("failover")["ok"]


def test_the_stored_input_is_what_the_model_saw_and_edits_are_recorded(tiny_lm, tiny_axis, store, setup):
    thresholds, drift = setup
    eng = engine(tiny_lm, tiny_axis, store, thresholds, drift)
    first = [SYSTEM, {"role": "user", "content": USERS[0]}]
    r1 = eng.run_batch([ChatRequest("edited", first, OPTS)])[0]
    follow = first + [{"role": "assistant", "content": r1.text}, {"role": "user", "content": USERS[1]}]
    eng.run_batch([ChatRequest("edited", follow, OPTS)])[0]
    edited = [SYSTEM, {"role": "user", "content": "Who are you? Be honest."},
              {"role": "assistant", "content": r1.text}, {"role": "user", "content": USERS[1]}]
    eng.run_batch([ChatRequest("edited", edited, OPTS)])[0]
    eng.run_batch([ChatRequest("edited", edited[:2], OPTS)])[0]  # a regenerate: the history cut short
    d = store.get_session("edited")
    replies = [t for t in d["turns"] if t["role"] == "assistant"]
    assert [t["diverged_at"] for t in replies] == [None, None, 1, 2]
    for t, given in zip(replies, (first, follow, edited, edited[:2])):
        saw = walk(t["input_head"], d["messages"])
        assert [(m["role"], m["content"]) for m in saw] == [(m["role"], m["content"]) for m in given]
    assert walk(replies[0]["input_head"], d["messages"])[0]["content"].startswith("You are Seraphine")
    # stored once each: system, question, reply, follow-up; the edited question and, after it (other
    # parents), the reply and the follow-up again
    assert len(d["messages"]) == 7
    assert store.verify_session("edited")["ok"]


def test_a_session_without_a_system_prompt_records_the_templates_own(tiny_lm, tiny_axis, store, setup):
    """The chat template gives the model a system prompt of its own when the client sends none: the
    record shows it, and the same history sent again is no edit."""
    thresholds, drift = setup
    eng = engine(tiny_lm, tiny_axis, store, thresholds, drift)
    first = [{"role": "user", "content": USERS[0]}]
    r1 = eng.run_batch([ChatRequest("plain", first, OPTS)])[0]
    follow = first + [{"role": "assistant", "content": r1.text}, {"role": "user", "content": USERS[1]}]
    eng.run_batch([ChatRequest("plain", follow, OPTS)])
    d = store.get_session("plain")
    replies = [t for t in d["turns"] if t["role"] == "assistant"]
    assert [t["diverged_at"] for t in replies] == [None, None]
    saw = [(m["role"], m["content"]) for m in walk(replies[1]["input_head"], d["messages"])]
    assert saw == [("system", eng.backend.template_system)] + [(m["role"], m["content"]) for m in follow]
    assert eng.backend.template_system.startswith("You are a helpful AI assistant named SmolLM")
    audit = eng.score_transcript("plain-audit", follow + [{"role": "assistant", "content": "Gladly."}])
    d = store.get_session(audit["id"])
    last = [t for t in d["turns"] if t["role"] == "assistant"][-1]
    assert [m["role"] for m in walk(last["input_head"], d["messages"])] == ["system", "user", "assistant", "user"]
    assert store.verify_session("plain")["ok"] and store.verify_session(audit["id"])["ok"]
