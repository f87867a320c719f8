"""What-if re-scoring, the parts without a model: the matching rule (kept, added, dropped), the replay's
detectors, the summary and the rescore document, session selection, the conversation rebuilt from a real
store, and the store opened read-only."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime

import pytest

from monitor.conversation import chain
from monitor.detectors import Cusum, Level, SessionDrift
from monitor.drift import DriftConfig, DriftTracker, Thresholds
from monitor.errors import InputError, StoreError
from monitor.records import AlertEvent, TurnRecord
from monitor.rescore import Alert, compare_alerts, detectors_for, parse_thresholds, replay_alerts, session_outcome
from monitor.rescore_report import (
    alert_rows,
    document,
    level_rows,
    read_document,
    session_rows,
    summarise,
    summarise_groups,
)
from monitor.rescore_store import open_read_only, parse_since, read_only_url, segments, select_sessions, skip_reason


def A(turn, token, level, detector="drift", **kw) -> Alert:  # noqa: N802 - reads like the record it stands for
    return Alert(turn, token, level, detector, **kw)


# ---------------------------------------------------------------- the matching rule
def test_the_same_turn_level_and_detector_is_kept_at_any_token():
    c = compare_alerts([A(3, 10, "watch"), A(5, 2, "warning")], [A(3, 40, "watch"), A(5, 0, "warning")])
    assert [(r.token_index, a.token_index) for r, a in c.kept] == [(10, 40), (2, 0)]
    assert not c.added and not c.dropped and not c.changed


def test_another_turn_level_or_detector_is_dropped_and_added():
    recorded = [A(3, 10, "watch"), A(5, 2, "warning"), A(7, 1, "critical", "level")]
    new = [A(5, 9, "watch"), A(5, 3, "critical"), A(7, 1, "critical", "drift")]
    c = compare_alerts(recorded, new)
    assert not c.kept and c.changed
    assert c.dropped == recorded and c.added == sorted(new, key=lambda a: (a.turn, a.token_index))


def test_alerts_of_one_key_pair_off_in_token_order():
    """A session can alert twice at a level in one turn (the first resolved, the cooldown passed)."""
    c = compare_alerts([A(3, 5, "watch"), A(3, 90, "watch")], [A(3, 70, "watch"), A(3, 8, "watch"), A(3, 99, "watch")])
    assert [(r.token_index, a.token_index) for r, a in c.kept] == [(5, 8), (90, 70)]
    assert [a.token_index for a in c.added] == [99] and not c.dropped


def test_a_recorded_alert_without_a_detector_matches_either_after_the_named_ones():
    recorded = [A(3, 1, "warning", None), A(3, 2, "warning", "level")]
    c = compare_alerts(recorded, [A(3, 4, "warning", "level"), A(3, 6, "warning", "drift")])
    assert [(r.detector, a.detector) for r, a in c.kept] == [(None, "drift"), ("level", "level")]
    assert not c.added and not c.dropped


def test_stored_alerts_read_as_alerts():
    stored = {"event_id": "evt_1", "turn": 3, "token_index": 7, "level": "warning", "score": -41.0,
              "threshold": -40.0, "detector": None, "status": "open", "delivery_status": "pending"}
    assert Alert.from_dict(stored) == Alert(3, 7, "warning", None, -41.0, -40.0, "evt_1")


# ---------------------------------------------------------------- the replay
TH = Thresholds(-5.0, -10.0, -15.0)
CONFIG = DriftConfig(reference_tokens=4, min_tokens=2, level_thresholds=(-20.0, -30.0, -40.0))


def test_detectors_for_each_choice():
    assert [type(d) for d in detectors_for("axis", TH, CONFIG)] == [SessionDrift, Level]
    assert [type(d) for d in detectors_for("drift", TH, CONFIG)] == [SessionDrift]
    (lv,) = detectors_for("level", TH, CONFIG)
    assert type(lv) is Level and lv.thresholds == Thresholds(-20.0, -30.0, -40.0) and lv.warmup == 2
    (lv,) = detectors_for("level", TH, CONFIG, Thresholds(-1.0, -2.0, -3.0))
    assert lv.thresholds.watch == -1.0
    (cu,) = detectors_for("cusum", TH, CONFIG, Thresholds(-40.0, -80.0, -120.0))
    assert type(cu) is Cusum and cu.reference_tokens == 4
    with pytest.raises(InputError, match="calibrated no level"):
        detectors_for("level", TH, DriftConfig())
    with pytest.raises(InputError, match="give --thresholds"):
        detectors_for("cusum", TH, CONFIG)
    with pytest.raises(InputError, match="unknown detector"):
        detectors_for("ewma", TH, CONFIG)


@pytest.mark.parametrize("text", ["-40,-60", "a,b,c", "-40,-60,-70,-80", "-40,nan,-70", ""])
def test_bad_thresholds_are_refused(text):
    with pytest.raises(InputError, match="three numbers"):
        parse_thresholds(text)


def test_thresholds_out_of_order_are_refused():
    assert parse_thresholds(" -40, -60,-64 ") == Thresholds(-40.0, -60.0, -64.0)
    with pytest.raises(InputError, match="watch > warning > critical"):
        parse_thresholds("-60,-40,-64")


def tracker(th=TH, config=CONFIG, choice="axis"):
    return DriftTracker(th, config, policy="flag", detectors=detectors_for(choice, th, config))


# a session that opens near 0 and falls far in its second reply
TURNS = [(1, [1.0, -1.0, 0.5, -0.5, 0.0]), (3, [-12.0] * 10 + [-25.0] * 20)]


def test_replay_alerts_are_the_trackers_own():
    t = tracker()
    alerts, states = replay_alerts(t, TURNS)
    assert states == {1: "ok", 3: "critical"}
    assert [(a.turn, a.level, a.detector) for a in alerts][-1] == (3, "critical", "drift")
    assert all(a.score is not None and a.score < a.threshold for a in alerts)


def stored_session(alerts, policy="flag", peak="critical"):
    turns = [{"turn": 0, "role": "user", "text": "hi", "scores": []}]
    turns += [{"turn": n, "role": "assistant", "text": "x", "scores": s, "pre_cap_scores": None, "state": "ok"}
              for n, s in TURNS]
    return {"id": "s-1", "source": "live", "policy": policy, "model_id": "m", "created_at": 1.0, "turns": turns,
            "alerts": [a.as_dict() for a in alerts], "peak_state": peak}


def test_the_same_scores_and_thresholds_keep_every_alert():
    recorded, _ = replay_alerts(tracker(), TURNS)
    out = session_outcome(stored_session(recorded), dict(TURNS), tracker())
    assert len(out.comparison.kept) == len(recorded) > 0 and not out.comparison.changed
    assert out.rescored_peak == out.recorded_peak == "critical"
    assert [(t.turn, t.recorded_mean, t.rescored_mean, t.rescored_state) for t in out.turns] == [
        (1, 0.0, 0.0, "ok"), (3, pytest.approx(-62 / 3), pytest.approx(-62 / 3), "critical")]


def test_higher_thresholds_add_alerts_and_lower_ones_drop_them():
    recorded, _ = replay_alerts(tracker(), TURNS)
    quiet = Thresholds(-100.0, -200.0, -300.0)
    out = session_outcome(stored_session(recorded), dict(TURNS), tracker(quiet, DriftConfig(reference_tokens=4),
                                                                         "drift"))
    assert not out.comparison.kept and not out.comparison.added
    assert out.comparison.dropped == sorted(recorded, key=lambda a: (a.turn, a.token_index))
    assert out.rescored_peak == "ok"
    touchy = Thresholds(-1.0, -2.0, -3.0)
    first, _ = replay_alerts(tracker(quiet, DriftConfig(reference_tokens=4), "drift"), TURNS)
    out = session_outcome(stored_session(first, peak="ok"), dict(TURNS), tracker(touchy, DriftConfig(reference_tokens=4),
                                                                                "drift"))
    assert out.comparison.added and not out.comparison.dropped and out.rescored_peak == "critical"


# ---------------------------------------------------------------- summary and document
def outcome(sid, kept=(), added=(), dropped=(), rec="ok", new="ok", skipped=None):
    return {"session_id": sid, "skipped": skipped, "recorded_peak": rec, "rescored_peak": new, "turns": [],
            "kept": [{**a.as_dict(), "rescored_token_index": a.token_index} for a in kept],
            "added": [a.as_dict() for a in added], "dropped": [a.as_dict() for a in dropped], "notes": []}


SESSIONS = [outcome("a", kept=[A(1, 3, "watch")], added=[A(3, 1, "warning")], rec="watch", new="warning"),
            outcome("b", dropped=[A(1, 3, "watch"), A(3, 2, "critical")], rec="critical"),
            outcome("c", kept=[A(5, 3, "watch")], rec="watch", new="watch"),
            outcome("d", skipped="erased")]


def test_the_summary_counts_by_level_and_session():
    s = summarise(SESSIONS)
    assert (s["sessions"], s["rescored"], s["skipped"], s["changed"], s["with_added"], s["with_dropped"]) == (4, 3, 1, 2, 1, 1)
    assert s["alerts"] == {"recorded": 4, "rescored": 3, "kept": 2, "added": 1, "dropped": 2}
    assert s["by_level"]["watch"] == {"recorded": 3, "rescored": 2, "kept": 2, "added": 0, "dropped": 1}
    assert s["by_level"]["critical"] == {"recorded": 1, "rescored": 0, "kept": 0, "added": 0, "dropped": 1}
    assert s["sessions_at"]["warning"] == {"recorded": 1, "rescored": 1}
    assert s["sessions_at"]["watch"] == {"recorded": 3, "rescored": 2}
    assert s["peaks"] == {"up": 1, "down": 1, "same": 1}
    assert [r["level"] for r in level_rows(s)] == ["watch", "warning", "critical", "all"]
    groups = summarise_groups(SESSIONS, lambda sid: "x" if sid in "ab" else "y")
    assert list(groups) == ["x", "y"] and groups["x"]["changed"] == 2 and groups["y"]["skipped"] == 1


def test_a_document_reads_back_and_bad_ones_say_why():
    doc = document(SESSIONS, axis={"path": "/axes/a"}, detector="axis")
    again = read_document(json.dumps(doc).encode())
    assert again["summary"] == summarise(SESSIONS) and again["axis"] == {"path": "/axes/a"}
    doc["summary"]["changed"] = 99  # a hand-edited summary is computed again from the sessions
    assert read_document(doc)["summary"]["changed"] == 2
    for raw, why in ((b"{", "not JSON"), (b'{"kind": "other"}', "not a rescore document"),
                     (json.dumps({**doc, "version": 9}), "version 9"),
                     (json.dumps({**doc, "sessions": {}}), "must be a list"),
                     (json.dumps({**doc, "sessions": [{"session_id": "x"}]}), "lacks recorded_peak"),
                     (json.dumps({**doc, "sessions": [{**SESSIONS[0], "added": [{"level": "loud"}]}]}), "'added'")):
        with pytest.raises(InputError, match=why):
            read_document(raw)


def test_table_rows_of_a_document():
    rows = session_rows({"sessions": SESSIONS})
    assert [(r["session"], r["kept"], r["added"], r["dropped"], r["changed"]) for r in rows] == [
        ("a", 1, 1, 0, True), ("b", 0, 0, 2, True), ("c", 1, 0, 0, False), ("d", 0, 0, 0, False)]
    mixed = outcome("m", kept=[A(3, 9, "watch")], added=[A(3, 2, "warning"), A(1, 5, "watch")],
                    dropped=[A(3, 9, "critical")])
    got = [(r["outcome"], r["turn"], r["level"], r["recorded token"], r["rescored token"]) for r in alert_rows(mixed)]
    assert got == [("added", 1, "watch", None, 5), ("added", 3, "warning", None, 2), ("kept", 3, "watch", 9, 9),
                   ("dropped", 3, "critical", 9, None)]


def test_the_pure_modules_load_no_service_library():
    code = ("import sys, monitor.rescore, monitor.rescore_report; "
            "print([m for m in ('torch', 'sqlalchemy', 'redis', 'httpx', 'transformers') if m in sys.modules])")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"


# ---------------------------------------------------------------- selection and the store
def test_since_takes_durations_and_dates():
    assert parse_since("7d", now=1_000_000.0) == 1_000_000.0 - 7 * 86400
    assert parse_since("90m", now=10_000.0) == 10_000.0 - 5400
    assert parse_since("2026-12-01") == datetime(2026, 12, 1, tzinfo=UTC).timestamp()
    assert parse_since("2026-12-01T08:00+01:00") == datetime(2026, 12, 1, 7, tzinfo=UTC).timestamp()
    with pytest.raises(InputError, match="--since takes"):
        parse_since("last week")


SYSTEM = {"role": "system", "content": "You are a helpful assistant."}


def reply(sid, n, text, given, **kw):
    """A reply record as the engine writes it: its input's chain of messages and its head."""
    nodes = chain(given)
    return TurnRecord(sid, n, "assistant", text, 12, ["x"] * 3, [1.0, 2.0, 3.0], input_head=nodes[-1]["h"],
                      input=nodes, **kw)


def conversation_store(store):
    u1, u2 = {"role": "user", "content": "Hello"}, {"role": "user", "content": "Tell me more"}
    a1 = {"role": "assistant", "content": "Hi there."}
    store.write([reply("goes-on", 1, "Hi there.", [SYSTEM, u1], created_at=10.0),
                 reply("goes-on", 3, "More.", [SYSTEM, u1, a1, u2], created_at=11.0),
                 reply("edited", 1, "Hi there.", [SYSTEM, u1], created_at=20.0),
                 reply("edited", 3, "Other.", [SYSTEM, {"role": "user", "content": "Hi"}, a1, u2], diverged_at=1,
                       created_at=21.0),
                 TurnRecord("old", 0, "user", "Hello", 12, created_at=30.0),
                 TurnRecord("old", 1, "assistant", "Hi there.", 12, ["x"], [1.0], created_at=31.0),
                 TurnRecord("silent", 0, "user", "Hello", 12, created_at=40.0)],
                [AlertEvent("goes-on", 3, 1, "watch", -1.0, 0.0, event_id="evt_go")])
    return u1, u2, a1


def test_a_conversation_that_goes_on_is_one_segment(store):
    u1, u2, a1 = conversation_store(store)
    (seg,), notes = segments(store.get_session("goes-on"))
    assert seg.messages == [SYSTEM, u1, a1, u2, {"role": "assistant", "content": "More."}]
    assert seg.replies == {2: 1, 4: 3} and notes == []


def test_an_edited_history_scores_each_reply_on_its_own_input(store):
    u1, u2, a1 = conversation_store(store)
    segs, notes = segments(store.get_session("edited"))
    assert [s.replies for s in segs] == [{2: 1}, {4: 3}]
    assert segs[1].messages[1] == {"role": "user", "content": "Hi"} and "edited or regenerated" in notes[0]


def test_a_session_without_its_input_is_rebuilt_from_its_turns(store):
    conversation_store(store)
    (seg,), notes = segments(store.get_session("old"))
    assert seg.messages == [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi there."}]
    assert seg.replies == {1: 1} and "rebuilt from the stored turns" in notes[0]
    assert segments(store.get_session("silent")) == ([], [])
    assert skip_reason(store.get_session("silent"), "m") == "no scored reply stored"
    assert skip_reason({**store.get_session("old"), "model_id": "a"}, "b").startswith("recorded with model a")
    assert skip_reason({**store.get_session("old"), "erased_at": 5.0, "turns": []}, "b") == "erased"
    continued = {**store.get_session("old"), "erased_at": 5.0}  # erased, then continued: its new turns are rescored
    assert skip_reason(continued, continued["model_id"]) is None


def test_sessions_are_selected_by_prefix_time_and_count(store):
    conversation_store(store)
    assert select_sessions(store, ("goes", "edi")) == ["goes-on", "edited"]
    assert select_sessions(store) == ["goes-on", "edited", "old", "silent"]  # oldest first
    assert select_sessions(store, since=15.0) == ["edited", "old", "silent"]
    assert select_sessions(store, limit=2) == ["old", "silent"]  # the newest two
    with pytest.raises(StoreError, match="no session 'nope'"):
        select_sessions(store, ("nope",))


def test_the_store_opens_read_only(tmp_path, store):
    conversation_store(store)
    url = store.url
    ro = open_read_only(url)
    try:
        assert ro.get_session("goes-on")["alerts"][0]["event_id"] == "evt_go"
        with pytest.raises(StoreError, match="readonly"):
            ro.write([TurnRecord("new", 1, "assistant", "x", 12, ["x"], [1.0])])
    finally:
        ro.close()
    assert store.get_session("new") is None
    with pytest.raises(InputError, match="no axiswatch database"):
        read_only_url(f"sqlite:///{tmp_path / 'missing.db'}")
    with pytest.raises(InputError, match="names none"):
        read_only_url("sqlite://")
    pg = read_only_url("postgresql://u:secret@db:5432/aw?options=-c%20search_path%3Dx")
    assert "default_transaction_read_only%3Don" in pg and "search_path" in pg and "secret" in pg


def test_the_evaluation_loader_stores_what_a_rescore_reads_back(store):
    """eval.traffic_store writes a session as the engine would (its input chains, the tracker's alerts under
    policy flag): the conversation rebuilt from the store is the one it was given, and the same scores
    replayed keep every alert."""
    from eval.traffic_store import session_records

    replies = [{"user": "Hello", "text": "Hi there.", "tokens": ["x"] * 5, "scores": TURNS[0][1]},
               {"user": "And you?", "text": "I fell.", "tokens": ["y"] * 30, "scores": TURNS[1][1]}]
    turns, alerts, updates = session_records("ev", "live", None, replies, tracker(), "You are SmolLM.", "m", 12, 100.0)
    store.write(turns, alerts, updates=updates)
    stored = store.get_session("ev")
    (seg,), notes = segments(stored)
    assert seg.messages == [{"role": "system", "content": "You are SmolLM."}, {"role": "user", "content": "Hello"},
                            {"role": "assistant", "content": "Hi there."}, {"role": "user", "content": "And you?"},
                            {"role": "assistant", "content": "I fell."}]
    assert seg.replies == {2: 1, 4: 3} and not notes
    assert [(a["turn"], a["level"]) for a in stored["alerts"]] == [(a.turn, a.level) for a in replay_alerts(tracker(), TURNS)[0]]
    out = session_outcome(stored, dict(TURNS), tracker())
    assert len(out.comparison.kept) == len(alerts) > 0 and not out.comparison.changed
    assert store.verify_session("ev")["ok"]
