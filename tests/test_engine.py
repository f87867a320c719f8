"""The engine on the tests' tiny random Llama and its axis, publishing to a real (embedded) Redis; a row
that ends its turn early on the real default model (a random model never ends one)."""

from __future__ import annotations

import threading

import pytest
import torch

from monitor.backends.hf import HFBackend
from monitor.drift import DriftConfig, Thresholds, snapshot_reading, thresholds_from_calibration
from monitor.engine import ChatRequest, Engine
from monitor.records import AlertEvent, InterventionRecord, TurnRecord
from monitor.streams import Streams
from monitor.streams.embedded import EmbeddedRedis
from probes.artifacts import load_capping
from probes.generation import GenerationOptions, generate

OPTS = GenerationOptions(max_new_tokens=10)


@pytest.fixture
def streams(redis_url):
    import uuid

    s = Streams.from_url(redis_url, prefix=f"eng-{uuid.uuid4().hex[:8]}")
    s.ensure_groups()
    return s


def engine(lm, axis, streams, thresholds=None, policy="flag", drift=None):
    return Engine(HFBackend(lm, axis, load_capping(axis.path)),
                  thresholds or thresholds_from_calibration(axis.calibration)[0],
                  drift=drift, policy=policy, publisher=streams)


def records(streams, stream):
    return streams.read_group(stream, "persist", "t", count=1000, block_ms=None)


def chat(text):
    return [{"role": "user", "content": text}]


def test_scores_match_generate_and_records_are_published(tiny_lm, tiny_axis, streams):
    eng = engine(tiny_lm, tiny_axis, streams)
    s = eng.session("s-a")
    res = eng.run_batch([ChatRequest(s.id, chat("What is the capital of France?"), OPTS)])[0]
    direct = generate(tiny_lm, [chat("What is the capital of France?")], OPTS, axis=tiny_axis.unit(),
                      monitor_layer=tiny_axis.monitor_layer)[0]
    assert res.tokens == direct.tokens and res.scores == pytest.approx(direct.scores, abs=1e-4)
    turns = [TurnRecord.from_dict(e.data) for e in records(streams, "turns")]
    assert [(t.turn, t.role) for t in turns] == [(0, "user"), (1, "assistant")]
    assert turns[1].scores == pytest.approx(res.scores) and turns[1].tokens == res.tokens
    assert turns[1].state == res.state and turns[0].text == "What is the capital of France?"
    live = streams.read_live("s-a")
    assert sum((e.data["scores"] for e in live), []) == pytest.approx(res.scores)
    assert live[-1].data["final"] is True
    # each entry says where its state comes from: the tracker's reading, which the stored snapshot holds too
    reading = (live[-1].data["detector"], live[-1].data["statistic"])
    assert reading == snapshot_reading(turns[1].tracker) == s.tracker.reading
    assert live[-1].data["detector"] is not None
    # the next turn of the same session continues the numbering
    res2 = eng.run_batch([ChatRequest(s.id, chat("What is the capital of France?") + [
        {"role": "assistant", "content": res.text}, {"role": "user", "content": "And of Spain?"}], OPTS)])[0]
    assert res2.turn == 3


def test_no_extra_forward_pass(tiny_lm, tiny_axis, streams):
    eng = engine(tiny_lm, tiny_axis, streams)
    calls = []
    h = tiny_lm.model.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        res = eng.run_batch([ChatRequest("s-f", chat("Name a colour."), OPTS)])[0]
    finally:
        h.remove()
    assert len(calls) == len(res.tokens) + (res.finish_reason == "stop")


def test_concurrent_sessions_each_get_their_own_tokens(tiny_lm, tiny_axis, streams):
    eng = engine(tiny_lm, tiny_axis, streams)
    questions = {f"c{i}": q for i, q in enumerate(["Name a fruit.", "What is 3 + 4?", "Say hello in French.",
                                                   "Name a planet.", "What colour is the sky?"])}
    results, errors = {}, []

    def client(sid, q):
        try:
            results[sid] = [eng.submit(ChatRequest(sid, chat(q), OPTS)).result(timeout=300) for _ in range(2)]
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=client, args=kv) for kv in questions.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    eng.close()
    assert not errors
    for sid, q in questions.items():
        alone = generate(tiny_lm, [chat(q)], OPTS, axis=tiny_axis.unit(), monitor_layer=tiny_axis.monitor_layer)[0]
        for turn_no, r in enumerate(results[sid]):
            assert r.session_id == sid and r.turn == 1 + 2 * turn_no
            assert r.tokens == alone.tokens and r.scores == pytest.approx(alone.scores, abs=1e-3)
    by_session: dict[str, list] = {}
    for e in records(streams, "turns"):
        t = TurnRecord.from_dict(e.data)
        by_session.setdefault(t.session_id, []).append(t)
    assert sorted(by_session) == sorted(questions)
    for sid, ts in by_session.items():
        assert sorted(t.turn for t in ts) == [0, 1, 2, 3]
        live_scores = sum((e.data["scores"] for e in streams.read_live(sid)), [])
        assert live_scores == pytest.approx(sum((r.scores for r in results[sid]), []), abs=1e-6)


def test_cap_policy_caps_from_the_next_token_for_the_rest_of_the_session(tiny_lm, tiny_axis, streams):
    # thresholds above every score: the session goes critical at once; alerts allowed from token 3
    high = Thresholds(watch=1e4, warning=9e3, critical=8e3)
    eng = engine(tiny_lm, tiny_axis, streams, thresholds=high, policy="cap",
                 drift=DriftConfig(alpha=0.5, min_tokens=3, cooldown_tokens=1000, baseline="absolute"))
    msgs = [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Who are you?"}]
    res = eng.run_batch([ChatRequest("s-cap", msgs, OPTS)])[0]
    assert res.capped and res.interventions and res.alerts
    start = res.interventions[0].token_index
    assert start == 3  # alert at token index 2 (the 3rd token), capping from the next one
    assert res.cap_flags == [False] * start + [True] * (len(res.tokens) - start)
    assert all(p <= s + 1e-3 for p, s in zip(res.pre_cap_scores, res.scores))
    inter = [InterventionRecord.from_dict(e.data) for e in records(streams, "interventions")]
    assert [(i.session_id, i.turn, i.token_index) for i in inter] == [("s-cap", 1, 3)]
    assert inter[0].config_id == load_capping(tiny_axis.path).id
    alerts = [AlertEvent.from_dict(e.data) for e in records(streams, "alerts")]
    assert alerts and alerts[0].level == "critical" and alerts[0].token_index == 2
    # the next turn is capped from its first token
    res2 = eng.run_batch([ChatRequest("s-cap", msgs, OPTS)])[0]
    assert all(res2.cap_flags) and res2.capped
    # an uncapped session in the same engine is untouched
    plain = eng.run_batch([ChatRequest("s-plain", msgs, OPTS, policy="observe")])[0]
    assert not any(plain.cap_flags) and not plain.alerts


def test_one_batch_rejects_two_turns_of_one_session(tiny_lm, tiny_axis, streams):
    from probes.errors import InputError

    eng = engine(tiny_lm, tiny_axis, streams)
    with pytest.raises(InputError, match="same session"):
        eng.run_batch([ChatRequest("dup", chat("a"), OPTS), ChatRequest("dup", chat("b"), OPTS)])
    with pytest.raises(InputError, match="unknown role"):
        eng.run_batch([ChatRequest("bad", [{"role": "wizard", "content": "x"}], OPTS)])
    assert torch.is_tensor(eng.backend.v)


def test_redis_going_away_does_not_break_generation_or_sessions(tiny_lm, tiny_axis):
    r = EmbeddedRedis().start()
    eng = engine(tiny_lm, tiny_axis, Streams.from_url(r.url))
    first = eng.run_batch([ChatRequest("s-down", chat("Name a colour."), OPTS)])[0]
    r.stop()  # Redis is gone: records cannot be published
    second = eng.run_batch([ChatRequest("s-down", chat("Name a colour."), OPTS)])[0]
    assert second.tokens == first.tokens and second.turn == 3 and eng.publish_errors >= 2
    third = eng.run_batch([ChatRequest("s-down", chat("Name a colour."), OPTS)])[0]
    assert third.turn == 5  # the session goes on


def test_a_bad_request_fails_alone_at_submit(tiny_lm, tiny_axis, streams):
    from probes.errors import InputError

    eng = engine(tiny_lm, tiny_axis, streams)
    try:
        with pytest.raises(InputError, match="exceeds the model's"):
            eng.submit(ChatRequest("big", chat("hi"), GenerationOptions(max_new_tokens=10 ** 6)))
        ok = eng.submit(ChatRequest("fine", chat("Name a colour."), OPTS)).result(timeout=120)
        assert ok.tokens
        assert "big" not in eng.sessions  # refused before any session state was touched
    finally:
        eng.close()


def test_per_request_policy_changes_the_session(tiny_lm, tiny_axis, streams):
    eng = engine(tiny_lm, tiny_axis, streams, policy="flag")
    eng.run_batch([ChatRequest("s-pol", chat("Hi"), OPTS)])
    eng.run_batch([ChatRequest("s-pol", chat("Hi"), OPTS, policy="observe")])
    s = eng.sessions["s-pol"]
    assert s.policy == s.tracker.policy == "observe"


def test_least_recently_used_sessions_leave_memory_and_come_back_from_the_store(tiny_lm, tiny_axis, streams):
    stored = {"old": {"source": "live", "policy": "flag", "capped": False, "next_turn": 6}}
    eng = Engine(HFBackend(tiny_lm, tiny_axis), thresholds_from_calibration(tiny_axis.calibration)[0], publisher=streams,
                 session_lookup=stored.get, max_sessions=2)
    for sid in ("a", "b", "c"):
        eng.session(sid)
    assert list(eng.sessions) == ["b", "c"]
    eng.session("b")  # used again: now the most recent
    eng.session("old")
    assert list(eng.sessions) == ["b", "old"] and eng.sessions["old"].next_turn == 6
    # a session that comes back continues its drift: the reference is its opening reply, not its next one
    stored["back"] = {"source": "live", "policy": "flag", "capped": False, "next_turn": 4,
                      "history": [{"turn": 1, "scores": [30.0] * 20}, {"turn": 3, "scores": [-20.0] * 20}]}
    tr = eng.session("back").tracker
    assert tr.reference == pytest.approx(30.0) and tr.drift < -40 and tr.state != "ok"


def test_a_capped_session_is_tracked_on_its_pre_cap_scores(tiny_lm, tiny_axis, streams):
    """Capping floors the monitor layer's score (it is one of the capped layers); the drift tracker
    must keep following the model's own, pre-cap, projection, or a capped session could never
    escalate again however far it drifts."""
    import dataclasses

    from monitor.drift import DriftTracker

    base = load_capping(tiny_axis.path)
    assert tiny_axis.monitor_layer in base.layers
    high_floor = dataclasses.replace(base, taus=[1e3] * len(base.layers))  # floors every token it touches
    high = Thresholds(watch=1e4, warning=9e3, critical=8e3)
    drift = DriftConfig(alpha=0.5, min_tokens=3, cooldown_tokens=1000, baseline="absolute")
    eng = Engine(HFBackend(tiny_lm, tiny_axis, high_floor), high, drift=drift, policy="cap", publisher=streams)
    msgs = [{"role": "user", "content": "Who are you?"}]
    res = eng.run_batch([ChatRequest("s-pre", msgs, OPTS)])[0]
    flagged = [k for k, c in enumerate(res.cap_flags) if c]
    assert flagged and all(res.scores[k] >= 1e3 - 1e-2 for k in flagged)  # what the model now carries
    assert all(res.pre_cap_scores[k] < 1e2 for k in flagged)  # what it would have carried
    replay = DriftTracker(high, drift, "observe")
    replay.update(res.pre_cap_scores, res.turn)
    assert res.running == pytest.approx(replay.running, abs=1e-4)
    assert res.state == "critical"  # not floored into looking safe
    turn = [TurnRecord.from_dict(e.data) for e in records(streams, "turns")][-1]
    assert turn.running == pytest.approx(replay.running, abs=1e-4) and turn.state == "critical"
    # the live tail marks capping per token: from the token after the alert, not the alert's own
    live = streams.read_live("s-pre")
    flags = sum((e.data.get("cap_flags") or [] for e in live), [])
    assert flags == res.cap_flags
    seen = sum((e.data.get("pre_cap_scores") or e.data["scores"] for e in live), [])
    assert seen == pytest.approx(res.pre_cap_scores, abs=1e-4)  # what the tracker saw, token by token


def test_a_dead_replicas_capped_half_reply_keeps_its_pre_cap_scores(store, tiny_lm, tiny_axis, streams):
    """Recovery stores a cut-off reply from the live tail with its capping flags and pre-cap scores."""
    import dataclasses

    from monitor.workers.recovery import recover_interrupted

    base = load_capping(tiny_axis.path)
    eng = Engine(HFBackend(tiny_lm, tiny_axis, dataclasses.replace(base, taus=[1e3] * len(base.layers))),
                 Thresholds(watch=1e4, warning=9e3, critical=8e3),
                 drift=DriftConfig(alpha=0.5, min_tokens=3, cooldown_tokens=1000, baseline="absolute"), policy="cap", publisher=streams,
                 replica="gone-replica")  # no heartbeat: it counts as dead
    res = eng.run_batch([ChatRequest("s-cut", chat("Who are you?"), OPTS)])[0]
    for e in streams.read_live("s-cut"):  # as if it died before its turn record and final entry
        if e.data.get("final"):
            streams.r.xdel(streams.live_key("s-cut"), e.id)
    assert recover_interrupted(streams, store, stale_s=0.0) == ["s-cut"]
    t = store.get_session("s-cut")["turns"][0]
    assert t["turn"] == res.turn and t["capped"] == res.cap_flags and any(t["capped"])
    assert t["pre_cap_scores"] == pytest.approx(res.pre_cap_scores, abs=1e-3)
    assert t["scores"] == pytest.approx(res.scores, abs=1e-3) and store.get_session("s-cut")["interrupted"]


def test_the_tail_is_final_only_after_the_turn_record(lm, shipped, streams):
    """A row that ends early in a batch says so at once (``ended``), but only the entry after its
    turn record is ``final``: a replica that dies between the two leaves a tail that recovery stores."""
    eng = engine(lm, shipped, streams, policy="observe")
    order = []
    real = streams.publish, streams.publish_live_many

    def publish(record, pipe=None):
        order.append(("record", type(record).__name__))
        return real[0](record, pipe)

    def publish_live_many(items):
        order.extend(("live", d["session_id"], bool(d["ended"]), bool(d["final"])) for _, d in items)
        return real[1](items)

    streams.publish, streams.publish_live_many = publish, publish_live_many
    short = chat("What is 2+2? Answer with just the number.")  # 7 tokens, then the end of the turn
    long = chat("Write a long story about a lighthouse keeper.")
    res = eng.run_batch([ChatRequest("s-short", short, GenerationOptions(max_new_tokens=24)),
                         ChatRequest("s-long", long, GenerationOptions(max_new_tokens=24))])
    assert res[0].finish_reason == "stop" and len(res[0].tokens) < len(res[1].tokens) == 24  # ends early
    lives = [o for o in order if o[0] == "live" and o[1] == "s-short"]
    first_ended = next(i for i, o in enumerate(order) if o[0] == "live" and o[1] == "s-short" and o[2])
    first_final = next(i for i, o in enumerate(order) if o[0] == "live" and o[1] == "s-short" and o[3])
    last_record = max(i for i, o in enumerate(order) if o == ("record", "TurnRecord"))
    assert first_final > last_record  # final only once every turn record is out
    assert lives[-1][3] and sum(o[3] for o in lives) == 1
    assert first_ended < first_final


def test_turn_numbers_come_from_one_counter_every_replica_shares(tiny_lm, tiny_axis, streams):
    """A replica that continues a session the store has not caught up with (a retry after the first
    replica died, a failover) must not reuse the turn numbers already handed out."""
    lagging_store = {"sess-x": {"source": "live", "policy": "flag", "capped": False, "next_turn": 0}}
    a = engine(tiny_lm, tiny_axis, streams)
    b = Engine(HFBackend(tiny_lm, tiny_axis), thresholds_from_calibration(tiny_axis.calibration)[0], publisher=streams,
               session_lookup=lagging_store.get)
    r1 = a.run_batch([ChatRequest("sess-x", chat("Hi"), OPTS)])[0]
    r2 = b.run_batch([ChatRequest("sess-x", chat("Hi"), OPTS)])[0]  # the store still says next_turn 0
    r3 = a.run_batch([ChatRequest("sess-x", chat("Hi"), OPTS)])[0]
    assert (r1.turn, r2.turn, r3.turn) == (1, 3, 5)
    turns = [(t.turn, t.role) for t in (TurnRecord.from_dict(e.data) for e in records(streams, "turns"))]
    assert turns == [(0, "user"), (1, "assistant"), (2, "user"), (3, "assistant"), (4, "user"), (5, "assistant")]


def test_a_session_check_fails_alone_at_submit(tiny_lm, tiny_axis, streams):
    """An audit session chatted into, or policy cap without a capping config, fails its own request
    at submit, never the other requests of its batch."""
    from probes.errors import InputError

    eng = Engine(HFBackend(tiny_lm, tiny_axis), thresholds_from_calibration(tiny_axis.calibration)[0], publisher=streams)
    eng.session("an-audit", source="audit")
    try:
        with pytest.raises(InputError, match="audit session"):
            eng.submit(ChatRequest("an-audit", chat("hi"), OPTS))
        with pytest.raises(InputError, match="needs a capping config"):
            eng.submit(ChatRequest("wants-cap", chat("hi"), OPTS, policy="cap"))
        ok = eng.submit(ChatRequest("fine-2", chat("Name a colour."), OPTS)).result(timeout=120)
        assert ok.tokens
    finally:
        eng.close()


def test_capping_below_the_monitor_layer_is_tracked_on_the_true_pre_cap_score(tiny_lm, tiny_axis, streams):
    """A capping window that starts below the monitor layer (calibrate-capping may pick one) leaves no
    uncapped monitor-layer state in the capped forward pass: the engine's tracker must still follow the
    uncapped model's score of the same text (the hf backend's uncapped twin rows), not the capped one."""
    from monitor.drift import DriftTracker
    from probes.artifacts import CappingConfig
    from probes.models import format_chat
    from probes.ops import project

    L = tiny_axis.monitor_layer
    layers = list(range(L - 6, L))  # all below the monitor layer
    cfg = CappingConfig("below", layers, tiny_axis.axis[layers].clone(), [1e3] * len(layers))
    high = Thresholds(watch=1e4, warning=9e3, critical=8e3)  # every token is critical: capped from the 4th
    drift = DriftConfig(alpha=0.5, min_tokens=3, cooldown_tokens=1000, baseline="absolute")
    eng = Engine(HFBackend(tiny_lm, tiny_axis, cfg), high, drift=drift, policy="cap", publisher=streams)
    msgs = chat("Who are you?")
    res = eng.run_batch([ChatRequest("s-below", msgs, GenerationOptions(max_new_tokens=16))])[0]
    assert any(res.cap_flags) and res.interventions
    ids = tiny_lm.tokenizer(format_chat(tiny_lm.tokenizer, msgs), add_special_tokens=False)["input_ids"]
    ids = torch.tensor([ids + res.token_ids])
    with torch.no_grad():  # the uncapped model, teacher-forced over the capped reply
        hs = tiny_lm.model(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states[L + 1][0]
    n = len(res.scores)
    uncapped = project(hs[ids.shape[1] - n - 1: ids.shape[1] - 1], tiny_axis.unit()).tolist()
    assert res.pre_cap_scores == pytest.approx(uncapped, abs=1e-2)
    flagged = [k for k, c in enumerate(res.cap_flags) if c]
    assert max(abs(res.scores[k] - res.pre_cap_scores[k]) for k in flagged) > 1.0  # the capped stream differs
    replay = DriftTracker(high, drift, "observe")
    replay.update(res.pre_cap_scores, res.turn)
    assert res.running == pytest.approx(replay.running, abs=1e-4)  # the tracker followed the true pre-cap score


def test_two_tier_capping_floors_a_cap_session_from_its_first_token_and_raises_it_when_flagged(tiny_lm, tiny_axis,
                                                                                               streams):
    """Conditional capping: under policy cap every token is floored at the light tier, from the first; the alert
    switches the session to the strong tier from the next token (the intervention); policy flag is never capped."""
    import dataclasses

    base = load_capping(tiny_axis.path)
    k = len(base.layers)
    two = dataclasses.replace(base, taus=[2e3] * k, light_taus=[1e3] * k)
    high = Thresholds(watch=1e4, warning=9e3, critical=8e3)
    drift = DriftConfig(alpha=0.5, min_tokens=3, cooldown_tokens=1000, baseline="absolute")
    eng = Engine(HFBackend(tiny_lm, tiny_axis, two), high, drift=drift, policy="cap", publisher=streams)
    msgs = [{"role": "user", "content": "Who are you?"}]
    res, flag = eng.run_batch([ChatRequest("s-two", msgs, OPTS), ChatRequest("s-flag", msgs, OPTS, policy="flag")])
    assert all(res.cap_flags) and res.capped and res.interventions[0].token_index == 3
    at = tiny_axis.monitor_layer in base.layers  # the monitor layer's own floor shows in its score
    if at:
        assert all(1e3 - 1e-2 <= s < 2e3 - 1 for s in res.scores[:3])  # light
        assert all(s >= 2e3 - 1e-2 for s in res.scores[3:])  # strong from the token after the alert
    assert not any(flag.cap_flags) and flag.alerts and not flag.capped
