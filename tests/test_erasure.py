"""Erasure and retention on real SQLite and PostgreSQL: the conversation goes, the hash chain still verifies
and reports the erasure, and tampering with a tombstone (or deleting beside it) is still caught."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from monitor.conversation import chain
from monitor.durations import parse_duration
from monitor.errors import InputError, NotFoundError
from monitor.records import AlertEvent, InterventionRecord, TurnRecord
from monitor.settings import Settings
from monitor.store import Store
from monitor.store.schema import MessageRow, SpillRow, TurnContextRow, TurnRow


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    url = f"sqlite:///{tmp_path / 'axiswatch.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    with closing(Store(url)) as s:
        s.migrate()
        yield s


MSGS = [{"role": "user", "content": "I feel like you are the only one who understands me."}]


def seed(store: Store, sid: str, at: float | None = None) -> None:
    at = time.time() if at is None else at
    nodes = chain(MSGS)
    store.write(turns=[TurnRecord(session_id=sid, turn=1, role="assistant", text="I am here for you.", layer=26,
                                  tokens=["I", " am", " here"], scores=[1.0, -2.0, -3.5], created_at=at,
                                  input=nodes, input_head=nodes[-1]["h"], tracker={"n": 3})],
                alerts=[AlertEvent(session_id=sid, turn=1, token_index=2, level="warning", score=-3.5, threshold=-3.0,
                                   excerpt="I am here", created_at=at, event_id=f"evt_{sid}")],
                interventions=[InterventionRecord(session_id=sid, turn=1, token_index=2, config_id="cfg",
                                                  thresholds={"20": 1.0}, layers=[20], created_at=at)])
    store.acknowledge_alert(f"evt_{sid}", by="oncall", note="looking")


def rows(store: Store, model, sid: str) -> int:
    with store.engine.connect() as c:
        return c.scalar(select(func.count()).select_from(model).where(model.session_id == sid))


def test_erase_removes_the_conversation_and_the_chain_still_verifies(store):
    seed(store, "e1")
    seed(store, "keep")
    head = store.verify_session("e1")["head"]
    store.spill([("turn", {"session_id": "e1", "turn": 2, "text": "spilled reply"}),
                 ("turn", {"session_id": "keep", "turn": 2, "text": "another session's"})])
    r = store.erase_session("e1", reason="user request #42", by="dpo@example.com")
    assert r["erased"] and r["counts"] == dict(turns=1, contexts=1, messages=1, excerpts=1, spilled=1, tokens=3)
    for model in (TurnRow, TurnContextRow, MessageRow):
        assert rows(store, model, "e1") == 0 and rows(store, model, "keep") > 0
    assert store.spill_count() == 1  # the other session's spilled record stays
    s = store.get_session("e1")
    assert s["turns"] == [] and s["messages"] == {} and s["erased_at"] is not None
    [a] = s["alerts"]  # the alert stays, without the text it quoted, and still acknowledged
    assert a["excerpt"] is None and a["level"] == "warning" and a["status"] == "acknowledged"
    assert len(s["interventions"]) == 1
    [e] = s["erasures"]
    assert e["reason"] == "user request #42" and e["by"] == "dpo@example.com" and e["scope"] == "erase"
    v = store.verify_session("e1")
    assert v["ok"], v["problems"]
    assert v["purged"] == 2 and v["head"] != head  # the turn and its context; the alert was written again
    [ve] = v["erasures"]
    assert ve["records"] == 4 and ve["counts"]["messages"] == 1 and ve["reason"] == "user request #42"
    assert store.verify_session("keep")["ok"]
    again = store.erase_session("e1", reason="again", by="dpo")  # nothing left: no second tombstone
    assert not again["erased"] and len(store.verify_session("e1")["erasures"]) == 1


def test_a_late_replay_does_not_bring_erased_content_back(store):
    at = time.time() - 5
    seed(store, "late", at=at)
    store.erase_session("late", reason="request", by="dpo")
    seed(store, "late", at=at)  # the persistence worker re-delivers the same records
    s = store.get_session("late")
    assert s["turns"] == [] and s["messages"] == {} and s["alerts"][0]["excerpt"] is None
    assert store.verify_session("late")["ok"]
    nodes = chain(MSGS)  # the user comes back afterwards: that is new content, stored and chained
    store.write(turns=[TurnRecord(session_id="late", turn=3, role="assistant", text="Welcome back.", layer=26,
                                  tokens=["Welcome"], scores=[2.0], input=nodes, input_head=nodes[-1]["h"])])
    assert [t["text"] for t in store.get_session("late")["turns"]] == ["Welcome back."]
    v = store.verify_session("late")
    assert v["ok"], v["problems"]
    assert store.get_session("late")["n_turns"] == 3  # the erased turn, the late one dropped, the new one


def test_a_turn_that_continues_from_a_dropped_late_turn_verifies(store):
    """A reply published before the erasure reaches the store after it (a lagging worker): it is dropped,
    with the messages it carried; the engine counts those as sent, so the next turn's input continues from
    them. A tombstone of scope late names them, and the session still verifies."""
    seed(store, "lag")
    before = time.time()
    store.erase_session("lag", reason="request", by="dpo")
    first = chain([{"role": "user", "content": "Are you still there?"}], parent=chain(MSGS)[-1]["h"])
    store.write(turns=[TurnRecord(session_id="lag", turn=3, role="assistant", text="Yes.", layer=26, tokens=["Yes"],
                                  scores=[1.0], input=first, input_head=first[-1]["h"], created_at=before)])
    second = chain([{"role": "user", "content": "Good."}], parent=first[-1]["h"])  # only the new message
    store.write(turns=[TurnRecord(session_id="lag", turn=5, role="assistant", text="Glad to help.", layer=26,
                                  tokens=["Glad"], scores=[1.0], input=second, input_head=second[-1]["h"])])
    s = store.get_session("lag")
    assert [t["turn"] for t in s["turns"]] == [5] and set(s["messages"]) == {second[-1]["h"]}
    v = store.verify_session("lag")
    assert v["ok"], v["problems"]
    assert [e["scope"] for e in v["erasures"]] == ["erase", "late"] and v["erasures"][1]["counts"]["turns"] == 1
    with store.engine.begin() as c:  # the late tombstone is a chained record like any other
        c.execute(text("delete from tombstones where scope = 'late'"))
    problems = {(p["kind"], p["problem"].split(" (")[0]) for p in store.verify_session("lag")["problems"]}
    assert ("tombstone", "the record was deleted") in problems
    assert any(k == "context" and p.startswith("input message") for k, p in problems)


def test_erasure_removes_the_sessions_copies_in_redis(tmp_path, redis_url):
    """Live tails, the durable streams' handled entries and dead-letter excerpts of the erased session go;
    another session's stay; an alert retried after the erasure is delivered without its excerpt."""
    from monitor.streams import Streams
    from monitor.streams.alerts import AlertLedger
    from monitor.streams.forget import forget_sessions
    from monitor.workers.persist import PersistWorker
    from monitor.workers.webhooks import as_stored

    with closing(Store(f"sqlite:///{tmp_path / 'aw.db'}")) as st:
        st.migrate()
        streams = Streams.from_url(redis_url, prefix=f"aw-forget-{os.getpid()}")
        streams.ensure_groups()
        recs = {}
        for sid in ("gone", "kept"):
            recs[sid] = AlertEvent(session_id=sid, turn=1, token_index=0, level="warning", score=-9.0, threshold=-5.0,
                                   excerpt=f"the words of {sid}")
            streams.publish(TurnRecord(session_id=sid, turn=1, role="assistant", text=f"reply of {sid}", layer=26,
                                       tokens=["r"], scores=[1.0]))
            streams.publish(recs[sid])
            streams.publish_live(sid, {"tokens": ["r"]})
            streams.r.lpush(AlertLedger(streams).dead, json.dumps(recs[sid].to_dict()))  # as dead_letter writes it
        PersistWorker(streams, st, block_ms=10).drain()  # handled by the persist group (no webhooks group here)
        st.erase_session("gone", reason="request", by="dpo")
        r = forget_sessions(streams, ["gone"])
        assert r == {"live": 1, "entries": 2, "dead_letters": 1}
        left = [json.loads(f[b"data"])["session_id"] for k in ("turns", "alerts")
                for _, f in streams.r.xrange(streams.key(k))]
        assert left == ["kept", "kept"]
        assert not streams.r.exists(streams.live_key("gone")) and streams.r.exists(streams.live_key("kept"))
        dead = {d["session_id"]: d["excerpt"] for d in map(json.loads, streams.r.lrange(AlertLedger(streams).dead, 0, -1))}
        assert dead == {"gone": "", "kept": "the words of kept"}
        row = next(a for a in st.list_alerts() if a["session_id"] == "gone")
        assert as_stored(recs["gone"], row).excerpt == "" and as_stored(recs["kept"], None).excerpt == "the words of kept"
        assert forget_sessions(Streams.from_url("redis://127.0.0.1:1", prefix="x"), ["gone"]) is None  # down: logged


def test_tampering_with_a_tombstone_is_detected(store):
    for sid in ("t1", "t2", "t3"):
        seed(store, sid)
        store.erase_session(sid, reason="request", by="dpo")
    with store.engine.begin() as c:
        c.execute(text("update tombstones set reason = 'routine' where session_id = 't1'"))
    assert [p["problem"] for p in store.verify_session("t1")["problems"]] == [
        "the record does not match what was written (edited)"]
    with store.engine.begin() as c:  # delete the tombstone itself: it and every record it vouched for show
        c.execute(text("delete from tombstones where session_id = 't2'"))
    got = {(p["kind"], p["problem"]) for p in store.verify_session("t2")["problems"]}
    assert got == {("turn", "the record was deleted"), ("context", "the record was deleted"),
                   ("tombstone", "the record was deleted")}
    seed(store, "t4")  # a deletion beside an erasure is still a deletion
    store.erase_session("t4", reason="request", by="dpo")
    store.write(turns=[TurnRecord(session_id="t4", turn=5, role="assistant", text="after", layer=26, tokens=["a"],
                                  scores=[1.0])])
    with store.engine.begin() as c:
        c.execute(text("delete from turns where session_id = 't4'"))
    [p] = store.verify_session("t4")["problems"]
    assert p["kind"] == "turn" and p["key"] == "5" and p["problem"] == "the record was deleted"


def test_purge_erases_sessions_idle_past_the_retention(store):
    now = time.time()
    for sid, age_days in (("old-1", 40), ("old-2", 31), ("new", 2)):
        seed(store, sid)
        with store.engine.begin() as c:
            c.execute(text("update sessions set updated_at = :t where id = :id"), {"t": now - age_days * 86400, "id": sid})
    assert store.expired_sessions(parse_duration("30d"), now=now) == ["old-1", "old-2"]
    seen: list[str] = []
    r = store.purge(parse_duration("30d"), reason="retention 30d", now=now, progress=seen.append)
    assert r["sessions"] == ["old-1", "old-2"] == seen and r["tokens"] == 6
    assert store.expired_sessions(parse_duration("30d"), now=now) == []  # nothing left to purge
    assert store.get_session("new")["turns"] and not store.get_session("old-1")["turns"]
    for sid in ("old-1", "old-2", "new"):
        assert store.verify_session(sid)["ok"]
    [e] = store.verify_session("old-2")["erasures"]
    assert e["scope"] == "retention" and e["by"] == "retention" and e["reason"] == "retention 30d"


def test_bad_requests(store):
    seed(store, "b")
    with pytest.raises(NotFoundError):
        store.erase_session("nobody", reason="x", by="y")
    with pytest.raises(InputError, match="reason"):
        store.erase_session("b", reason="  ", by="y")
    with pytest.raises(InputError, match="by"):
        store.erase_session("b", reason="x", by="")
    assert store.get_session("b")["turns"]  # a refused erasure removed nothing
    for bad in ("30", "d", "-3d", "0d", "30 days", ""):
        with pytest.raises(InputError, match="not a duration"):
            parse_duration(bad)
    assert parse_duration("12h") == 43200 and parse_duration("1.5d") == 129600 and parse_duration("2W") == 14 * 86400
    with store.engine.connect() as c:
        assert c.scalar(select(func.count()).select_from(SpillRow)) == 0


AXISWATCH = str(Path(sys.executable).parent / "axiswatch")


def cli(url: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([AXISWATCH, *args], capture_output=True, text=True, input=stdin,
                          env={**os.environ, "AXISWATCH_DATABASE_URL": url})


def test_the_commands_erase_purge_and_verify_reports_them(tmp_path):
    url = f"sqlite:///{tmp_path / 'aw.db'}"
    with closing(Store(url)) as st:
        st.migrate()
        for sid in ("c-erase", "c-old", "c-new"):
            seed(st, sid)
        with st.engine.begin() as c:
            c.execute(text("update sessions set updated_at = updated_at - 40 * 86400 where id = 'c-old'"))
    r = cli(url, "sessions", "erase", "c-er", "--reason", "ticket 9", "--by", "dpo", stdin="n\n")
    assert r.returncode == 1 and "Aborted" in r.stderr  # asked, refused: nothing erased
    r = cli(url, "sessions", "erase", "c-er", "--reason", "ticket 9", "--by", "dpo", "--yes")
    assert r.returncode == 0 and r.stdout.startswith("erased c-erase: 1 turns (3 tokens), 1 contexts, 1 messages"), r
    dry = cli(url, "sessions", "purge", "--older-than", "30d", "--dry-run")
    assert dry.returncode == 0 and dry.stdout.split() == ["c-old"] and "dry run" in dry.stderr
    r = cli(url, "sessions", "purge", "--older-than", "30d", "--yes", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["sessions"] == ["c-old"]
    bad = cli(url, "sessions", "purge", "--older-than", "a month", "--yes")
    assert bad.returncode == 1 and "not a duration" in bad.stderr
    v = cli(url, "sessions", "verify")
    assert v.returncode == 0 and "3 of 3 session(s) verified" in v.stderr
    lines = v.stdout.splitlines()
    assert any(re.fullmatch(r"\s+erased 4 records \(erase\) \S+ \S+ by dpo: ticket 9", x) for x in lines), lines
    assert any(re.fullmatch(r"\s+erased 4 records \(retention\) \S+ \S+ by \S+: retention 30d", x) for x in lines)
    show = cli(url, "sessions", "show", "c-erase").stdout
    assert "I am here" not in show and "erased 4 records (erase)" in show
    assert "I am here for you." in cli(url, "sessions", "show", "c-new").stdout
    with closing(Store(url)) as st, st.engine.begin() as c:
        c.execute(text("update tombstones set records = '[]' where session_id = 'c-erase'"))
    v = cli(url, "sessions", "verify", "c-erase")
    assert v.returncode == 1 and v.stdout.startswith("FAIL c-erase"), v.stdout


def test_the_persistence_worker_applies_the_retention(tmp_path, redis_url):
    from monitor.streams import Streams
    from monitor.workers.persist import PersistWorker

    with closing(Store(f"sqlite:///{tmp_path / 'aw.db'}")) as st:
        st.migrate()
        seed(st, "w-old")
        seed(st, "w-new")
        with st.engine.begin() as c:
            c.execute(text("update sessions set updated_at = updated_at - 8 * 86400 where id = 'w-old'"))
        streams = Streams.from_url(redis_url, prefix=f"aw-retention-{os.getpid()}")
        streams.ensure_groups()
        streams.publish_live("w-old", {"tokens": ["I"]})
        w = PersistWorker(streams, st, block_ms=10, retention_days=7)
        w.run_once(block_ms=None)  # the first pass applies it
        assert st.get_session("w-old")["turns"] == [] and st.get_session("w-new")["turns"]
        assert not streams.r.exists(streams.live_key("w-old"))
        [e] = st.verify_session("w-old")["erasures"]
        assert e["scope"] == "retention" and "AXISWATCH_RETENTION_DAYS" in e["reason"]
        seed(st, "w-later")
        with st.engine.begin() as c:
            c.execute(text("update sessions set updated_at = updated_at - 8 * 86400 where id = 'w-later'"))
        w.run_once(block_ms=None)  # not again before retention_every_s
        assert st.get_session("w-later")["turns"]
        w._last_retention -= w.retention_every_s
        w.run_once(block_ms=None)
        assert st.get_session("w-later")["turns"] == []
    with pytest.raises(InputError, match="RETENTION_DAYS"):
        Settings.from_env({"AXISWATCH_RETENTION_DAYS": "-1"})
    assert Settings.from_env({"AXISWATCH_RETENTION_DAYS": "30"}).retention_days == 30.0
    assert Settings.from_env({}).retention_days is None
