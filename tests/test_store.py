"""The store against real SQLite (a tmp file) and the real PostgreSQL server (a fresh schema per test)."""

from __future__ import annotations

import json
from array import array
from contextlib import closing

import pytest
from sqlalchemy import func, inspect, select, text

from monitor.records import AlertEvent, InterventionRecord, TurnRecord
from monitor.store import (
    SCHEMA_VERSION,
    AlertRow,
    Base,
    InterventionRow,
    NotFoundError,
    SchemaVersion,
    SessionRow,
    Store,
    StoreError,
    TurnRow,
)
from monitor.store.schema import MessageRow
from probes.errors import InputError


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """A blank database: a SQLite file, or a uniquely named PostgreSQL schema dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'db' / 'axiswatch.db'}"
        return
    yield request.getfixturevalue("pg_url")


@pytest.fixture
def store(db_url):
    s = Store(db_url)
    s.migrate()
    yield s
    s.close()


def count(store: Store, model) -> int:
    with store.engine.connect() as c:
        return c.scalar(select(func.count()).select_from(model.__table__))


def versions(store: Store) -> list[int]:
    with store.engine.connect() as c:
        if not inspect(c).has_table("schema_version"):
            return []
        return c.scalars(select(SchemaVersion.version).order_by(SchemaVersion.version)).all()


def turn(sid="s1", i=1, n=4, **kw) -> TurnRecord:
    kw.setdefault("tokens", [f"t{k}" for k in range(n)])
    kw.setdefault("scores", [0.5 * k - 1.0 for k in range(n)])
    return TurnRecord(session_id=sid, turn=i, role=kw.pop("role", "assistant"), text=kw.pop("text", "hello"),
                      layer=kw.pop("layer", 15), model_id=kw.pop("model_id", "default"), **kw)


def alert(sid="s1", i=1, eid=None, **kw) -> AlertEvent:
    return AlertEvent(session_id=sid, turn=i, token_index=kw.pop("token_index", 2), level=kw.pop("level", "watch"),
                      score=-2.5, threshold=-2.0, **({"event_id": eid} if eid else {}), **kw)


def iv(sid="s1", i=1, config="cfg-a", **kw) -> InterventionRecord:
    return InterventionRecord(session_id=sid, turn=i, token_index=kw.pop("token_index", 3), config_id=config,
                              thresholds={"18": 1.5, "19": 2.0}, layers=[18, 19], **kw)


def test_migrate_blank_then_noop(db_url):
    with closing(Store(db_url)) as s:
        assert versions(s) == [] and inspect(s.engine).get_table_names() == []
        assert s.migrate() == SCHEMA_VERSION
        assert versions(s) == list(range(1, SCHEMA_VERSION + 1))
        assert s.migrate() == SCHEMA_VERSION  # no-op
    with closing(Store(db_url)) as s:  # a second process starting on the same database
        assert s.migrate() == SCHEMA_VERSION
        assert versions(s) == list(range(1, SCHEMA_VERSION + 1))  # each version recorded once
        assert s.list_sessions() == []


def test_migrated_schema_matches_models(store):
    """The migration list builds exactly what the typed models describe."""
    insp = inspect(store.engine)
    assert {"sessions", "turns", "alerts", "interventions", "schema_version"} <= set(insp.get_table_names())
    for table in Base.metadata.sorted_tables:
        cols = {c["name"]: c["nullable"] for c in insp.get_columns(table.name)}
        assert cols == {c.name: c.nullable for c in table.columns}, table.name
    uniques = {tuple(u["column_names"]) for u in insp.get_unique_constraints("turns")}
    assert ("session_id", "turn") in uniques
    assert any(fk["referred_table"] == "sessions" for fk in insp.get_foreign_keys("turns"))


def test_connection_settings(store):
    with store.engine.connect() as c:
        if store.dialect == "sqlite":
            assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert c.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert c.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000
        else:
            assert store.engine.dialect.driver == "psycopg"
            assert c.execute(text("select current_schema()")).scalar().startswith("axw_test_")


def test_urls():
    assert Store("postgresql://u@localhost/db").engine.dialect.driver == "psycopg"
    assert Store("postgres://u:secret@localhost/db").url == "postgresql+psycopg://u:***@localhost/db"
    with pytest.raises(InputError, match="not valid"):
        Store("not a url")
    with pytest.raises(InputError, match="only sqlite"):
        Store("mysql://u@localhost/db")
    with pytest.raises(StoreError, match="database error on postgresql"):
        Store("postgresql://postgres@127.0.0.1:1/nothing?connect_timeout=2").migrate()


def test_unmigrated_database_says_so(db_url):
    with closing(Store(db_url)) as s, pytest.raises(StoreError, match="migrate"):
        s.write(turns=[turn()])


def test_turn_round_trip(store):
    scores = [0.1, -3.7, 1e-3, 12345.678, -0.0, 2.5, 7.0, -1.25, 0.3, 1 / 3, 99.5]
    pre = [x - 1.0 for x in scores]
    mask = [False, True, True, False, False, False, False, False, True, False, True]  # crosses a byte boundary
    tokens = ["Hello", " wörld", "🙂", "\n", "Ġthe", "", "x", "y", "z", "<|im_end|>", "\"q\""]
    store.write(turns=[turn("rt", 3, tokens=tokens, scores=scores, pre_cap_scores=pre, capped=mask,
                            state="warning", running=-1.75)])
    t = store.get_session("rt")["turns"][0]
    f32 = lambda xs: array("f", xs).tolist()  # noqa: E731
    assert t["scores"] == f32(scores) and t["scores"] == pytest.approx(scores, rel=1e-6)
    assert t["pre_cap_scores"] == f32(pre)
    assert t["capped"] == mask
    assert t["tokens"] == tokens and t["n_tokens"] == 11 and t["layer"] == 15 and t["turn"] == 3
    assert t["mean"] == pytest.approx(sum(scores) / len(scores))
    assert (t["state"], t["running"], t["role"], t["text"]) == ("warning", -1.75, "assistant", "hello")
    with store.engine.connect() as c:  # compact: 4 bytes a score, little-endian; 1 bit a capped flag
        raw, bits = c.execute(select(TurnRow.scores, TurnRow.capped)).one()
    assert len(raw) == 4 * len(scores) and raw[:4] == bytes(array("f", [0.1]).tobytes())
    assert len(bits) == 2 and bits[0] == 0b00000110
    # A user turn: text only, no scores, no mask.
    store.write(turns=[turn("rt", 2, role="user", text="hi", tokens=[], scores=[])])
    u = store.get_session("rt")["turns"][0]
    assert (u["scores"], u["pre_cap_scores"], u["capped"], u["mean"], u["n_tokens"]) == ([], None, None, None, 0)


def test_idempotent_replay(store):
    batch = dict(turns=[turn("a", 1), turn("a", 2), turn("b", 1)],
                 alerts=[alert("a", 2, "evt_1"), alert("b", 1, "evt_2")], interventions=[iv("a", 2)])
    assert store.write(**batch) == dict(sessions=2, turns=3, alerts=2, interventions=1, updates=0)
    before = [count(store, m) for m in (SessionRow, TurnRow, AlertRow, InterventionRow)]
    assert store.write(**batch) == dict(sessions=0, turns=0, alerts=0, interventions=0, updates=0)
    # The same records rebuilt from their JSON form (as they come off a Redis stream), each twice in one batch.
    kinds = dict(turns=TurnRecord, alerts=AlertEvent, interventions=InterventionRecord)
    again = {k: [kinds[k].from_dict(json.loads(json.dumps(r.to_dict()))) for r in v] * 2 for k, v in batch.items()}
    assert store.write(**again) == dict(sessions=0, turns=0, alerts=0, interventions=0, updates=0)
    assert [count(store, m) for m in (SessionRow, TurnRow, AlertRow, InterventionRow)] == before == [2, 3, 2, 1]
    assert store.get_session("a")["n_turns"] == 2 and store.token_count("a") == 8
    assert store.write() == dict(sessions=0, turns=0, alerts=0, interventions=0, updates=0)


def test_a_longer_turn_replaces_a_recovered_part(store):
    """A reply cut off and recovered from the live tail, then the whole turn (a replica that was only
    cut off from Redis): the whole one wins; replays of either change nothing."""
    part, whole = turn("r", 1, n=2), turn("r", 1, n=5)
    assert store.write(turns=[part])["turns"] == 1
    assert store.write(turns=[whole, whole])["turns"] == 1 and store.token_count("r") == 5
    assert store.write(turns=[part, whole])["turns"] == 0
    assert store.token_count("r") == 5 and len(store.get_session("r")["turns"][0]["scores"]) == 5
    # never over a turn of another role: a recovered reply must not replace a user message
    assert store.write(turns=[turn("u", 1, role="user", n=0, text="the user's words")])["turns"] == 1
    assert store.write(turns=[turn("u", 1, n=3)])["turns"] == 0
    assert store.get_session("u")["turns"][0]["text"] == "the user's words"
    assert store.turn_meta("u", 1) == {"role": "user", "n_tokens": 0} and store.turn_meta("u", 9) is None


def test_session_counters(store):
    store.write(turns=[turn("c", 0, role="user", tokens=[], scores=[], text="hi"),
                       turn("c", 1, n=5, state="watch", running=-0.5)])
    store.write(turns=[turn("c", 3, n=3, state="warning", running=-1.5)])
    store.write(turns=[turn("c", 2, n=2, state="ok", running=0.25)])  # a late, older turn
    s = store.get_session("c")
    assert (s["n_turns"], s["n_tokens"], s["state"], s["running"], s["capped"]) == (4, 10, "warning", -1.5, False)
    assert (s["source"], s["model_id"], s["layer"], s["interrupted"]) == ("live", "default", 15, False)
    assert [t["turn"] for t in s["turns"]] == [0, 1, 2, 3] and store.token_count("c") == 10
    assert s["updated_at"] >= s["created_at"]
    store.write(alerts=[alert("c", 3, level="warning")], interventions=[iv("c", 3)])
    s = store.get_session("c")
    assert s["capped"] is True and s["policy"] == "cap" and s["n_turns"] == 4 and len(s["alerts"]) == 1
    assert s["interventions"][0]["thresholds"] == {"18": 1.5, "19": 2.0} and s["interventions"][0]["layers"] == [18, 19]
    # A capped token alone marks the session capped; an alert alone creates the session.
    store.write(turns=[turn("d", 1, n=2, capped=[False, True], pre_cap_scores=[0.0, -3.0])])
    store.write(alerts=[alert("e", 1)])
    assert store.get_session("d")["capped"] is True
    e = store.get_session("e")
    assert (e["n_turns"], e["state"], e["policy"], e["capped"]) == (0, "ok", "flag", False)
    # a session that never alerted still shows its policy: turns carry it (the latest turn's wins)
    store.write(turns=[turn("p", 0, role="user", n=0, policy="observe")])
    assert store.get_session("p")["policy"] == "observe"
    store.write(turns=[turn("p", 1, policy="flag"), turn("p", 2, role="user", n=0)])
    assert store.get_session("p")["policy"] == "flag"
    with pytest.raises(InputError, match="bad policy"):
        store.write(turns=[turn("p", 3, policy="ignore")])
    store.mark_interrupted("c")
    store.mark_interrupted("f")  # nothing written yet: the row is created
    assert store.get_session("c")["interrupted"] and store.get_session("f")["interrupted"]
    assert store.get_session("nope") is None and store.token_count("nope") == 0


def test_alert_delivery_and_acknowledge(store):
    store.write(alerts=[alert("s", 1, "evt_a"), alert("s", 2, "evt_b")])
    assert {a["delivery_status"] for a in store.list_alerts()} == {"pending"}
    assert store.set_alert_delivery("evt_a", "retrying", 1, "timeout after 5s")
    a = store.list_alerts(status="retrying")
    assert [(x["event_id"], x["attempts"], x["last_error"]) for x in a] == [("evt_a", 1, "timeout after 5s")]
    assert store.set_alert_delivery("evt_a", "delivered", 2)
    assert not store.set_alert_delivery("evt_a", "retrying", 3, "late worker")  # delivered stays delivered
    assert store.set_alert_delivery("evt_b", "dead", 8, "HTTP 500")
    assert store.set_alert_delivery("evt_b", "pending", 0)  # replayed from the dead letters
    assert [x["event_id"] for x in store.list_alerts(status="delivered")] == ["evt_a"]
    assert [x["event_id"] for x in store.list_alerts(status="pending")] == ["evt_b"]
    store.write(alerts=[alert("s", 1, "evt_a")])  # a replayed stream entry keeps the delivery state
    got = {x["event_id"]: x for x in store.list_alerts(session_id="s")}
    assert got["evt_a"]["delivery_status"] == "delivered" and got["evt_a"]["attempts"] == 2
    assert not got["evt_a"]["acknowledged"]
    ack = store.acknowledge_alert("evt_a", by="ops@example.com", note="looking")
    a = store.get_session("s")["alerts"][0]
    assert a["acknowledged"] is True and a["status"] == "acknowledged" and a["acknowledged_by"] == "ops@example.com"
    assert a["acknowledged_at"] == ack["created_at"]
    assert store.acknowledge_alert("evt_a", by="someone else")["by"] == "ops@example.com"  # the first one stands
    with pytest.raises(NotFoundError, match="evt_zzz"):
        store.acknowledge_alert("evt_zzz", by="ops")
    with pytest.raises(InputError, match="who made it"):
        store.acknowledge_alert("evt_a", by="")
    with pytest.raises(NotFoundError, match="evt_zzz"):
        store.set_alert_delivery("evt_zzz", "delivered", 1)
    with pytest.raises(InputError, match="delivery status"):
        store.set_alert_delivery("evt_b", "lost", 1)
    with pytest.raises(InputError, match="delivery status"):
        store.list_alerts(status="lost")


def test_interventions_unique(store):
    assert store.write(interventions=[iv("s", 1), iv("s", 1)])["interventions"] == 1
    assert store.write(interventions=[iv("s", 1), iv("s", 1, config="cfg-b"), iv("s", 2)])["interventions"] == 2
    assert count(store, InterventionRow) == 3


@pytest.mark.parametrize("bad", [
    dict(turns=[turn("ok", 1), turn("bad", 1, scores=[0.1, "x", 0.3, 0.4])]),
    dict(turns=[turn("ok", 1), turn("ok", 2)], alerts=[alert("ok", 2, level="panic")]),
    dict(turns=[turn("ok", 1)], interventions=[iv("ok", 1, config="")]),
    dict(turns=[turn("ok", 1, capped=[True])]),
], ids=["string-score", "bad-alert-after-turns", "bad-intervention", "mask-length"])
def test_bad_batch_rolls_back_entirely(store, bad):
    store.write(turns=[turn("old", 1)])
    before = store.get_session("old")
    with pytest.raises(InputError):
        store.write(turns=bad.get("turns", []) + [turn("old", 2)], alerts=bad.get("alerts", []),
                    interventions=bad.get("interventions", []))
    assert [s["id"] for s in store.list_sessions()] == ["old"]
    assert store.get_session("old") == before
    assert (count(store, TurnRow), count(store, AlertRow), count(store, InterventionRow)) == (1, 0, 0)
    assert store.write(turns=[turn("ok", 1)])["turns"] == 1  # the store is still usable


def test_list_sessions_filters_and_order(store):
    store.write(turns=[turn("a", 1, created_at=100.0), turn("b", 1, created_at=200.0, state="critical", source="audit"),
                       turn("c", 1, created_at=300.0, state="critical")])
    assert [s["id"] for s in store.list_sessions()] == ["c", "b", "a"]
    assert [s["id"] for s in store.list_sessions(state="critical")] == ["c", "b"]
    assert [s["id"] for s in store.list_sessions(source="audit")] == ["b"]
    assert [s["id"] for s in store.list_sessions(since=150.0)] == ["c", "b"]
    assert [s["id"] for s in store.list_sessions(state="critical", source="live", since=250)] == ["c"]
    assert [s["id"] for s in store.list_sessions(limit=1)] == ["c"]
    assert [s["id"] for s in store.list_sessions(state=["ok", "critical"], source=("audit",))] == ["b"]
    assert [s["id"] for s in store.list_sessions(state=["ok", "critical"])] == ["c", "b", "a"]
    assert store.list_sessions()[0]["created_at"] == 300.0 and "turns" not in store.list_sessions()[0]
    with pytest.raises(InputError, match="state"):
        store.list_sessions(state="fine")
    with pytest.raises(InputError, match="source"):
        store.list_sessions(source=["live", "nowhere"])
    with pytest.raises(InputError, match="limit"):
        store.list_sessions(limit=0)


def test_newer_schema_refused(store, db_url):
    with store.engine.begin() as c:
        c.execute(SchemaVersion.__table__.insert().values(version=SCHEMA_VERSION + 98, applied_at=0.0))
    with closing(Store(db_url)) as s, pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 98}, newer"):
        s.migrate()
    assert versions(store)[-1] == SCHEMA_VERSION + 98


def test_bad_arguments(store):
    with pytest.raises(InputError, match="expected a TurnRecord"):
        store.write(turns=[{"session_id": "s", "turn": 1}])
    with pytest.raises(InputError, match="session_id"):
        store.write(alerts=[alert(sid="")])
    with pytest.raises(InputError, match="attempts"):
        store.set_alert_delivery("evt_x", "retrying", -1)
    with pytest.raises(InputError, match="session_id"):
        store.mark_interrupted("")
    with pytest.raises(InputError, match="limit"):
        store.list_alerts(limit=-5)
    assert count(store, SessionRow) == 0


def test_a_trailing_user_turn_keeps_the_sessions_state(store):
    store.write(turns=[TurnRecord("tail", 0, "user", "hi", 21),
                       TurnRecord("tail", 1, "assistant", "boo", 21, ["boo"], [-30.0], state="critical", running=-30.0),
                       TurnRecord("tail", 2, "user", "and now?", 21)])
    s = store.get_session("tail")
    assert (s["state"], s["running"], s["n_turns"], s["n_tokens"]) == ("critical", -30.0, 3, 1)


def test_the_last_tracker_is_the_latest_replys_or_none(store):
    """The tracker stored with each session's latest assistant reply (what views read the state's statistic
    from): a later user turn does not hide it, and a later reply stored without one (recovered from a dead
    replica's tail) gives none rather than the reply before's."""
    snap = {"v": 2, "level": 3, "leader": 0, "detectors": {"drift": {"running": -30.0, "value": -40.0}}}
    store.write(turns=[TurnRecord("a", 1, "assistant", "x", 21, ["x"], [1.0], tracker={**snap, "level": 1}),
                       TurnRecord("a", 3, "assistant", "y", 21, ["y"], [-30.0], tracker=snap),
                       TurnRecord("a", 4, "user", "and now?", 21),
                       TurnRecord("b", 1, "assistant", "x", 21, ["x"], [1.0], tracker=snap),
                       TurnRecord("b", 3, "assistant", "recovered", 21, ["r"], [-50.0], state="critical")])
    assert store.last_trackers(["a", "b", "nobody"]) == {"a": snap}
    assert store.last_trackers([]) == {}


def test_nul_in_text_is_stored_on_every_backend(store):
    """PostgreSQL refuses NUL in text; a conversation that holds one (a user typed it, a shadowed
    server produced it) is stored anyway, NUL as U+FFFD, and never wedges the batch it came in."""
    user = turn("nul", 0, role="user", text="a\x00b", tokens=[], scores=[])
    reply = turn("nul", 1, n=2, text="c\x00", tokens=["c", "\x00"])
    assert store.write(turns=[user, reply])["turns"] == 2
    t = store.get_session("nul")["turns"]
    assert [x["text"] for x in t] == ["a\ufffdb", "c\ufffd"] and t[1]["tokens"] == ["c", "\ufffd"]
    with pytest.raises(InputError, match="without NUL"):
        store.write(turns=[turn("n\x00l", 1)])


def test_session_meta_holds_what_a_continuing_engine_replays(store):
    """The scored turns after the last tracker snapshot (user turns left out); replayed, the tracker follows
    their pre-cap scores where capping acted."""
    from monitor.replay import scored_turns

    store.write(turns=[TurnRecord("back", 0, "user", "hi", 21),
                       TurnRecord("back", 1, "assistant", "a b", 21, ["a", " b"], [30.0, 20.0]),
                       TurnRecord("back", 2, "user", "more", 21),
                       TurnRecord("back", 3, "assistant", "c d", 21, ["c", " d"], [-9.0, -9.0], pre_cap_scores=[-9.0, -40.0],
                                  capped=[False, True])])
    meta = store.session_meta("back")
    assert meta["next_turn"] == 4 and [t["turn"] for t in meta["history"]] == [1, 3]
    assert scored_turns(meta["history"]) == [(1, [30.0, 20.0]), (3, [-9.0, -40.0])]
    assert store.session_meta("nobody") is None


# ---------------------------------------------------------------- audit-grade records
def _input_turn(sid, i, messages, **kw):
    from monitor.conversation import chain

    nodes = chain(messages)
    return turn(sid, i, input_head=nodes[-1]["h"], input=nodes, tracker={"v": 1, "n": i}, **kw)


def test_a_turns_input_is_stored_once_and_given_back(store):
    from monitor.conversation import walk

    first = [{"role": "system", "content": "You are Seraphine, an ancient oracle."}, {"role": "user", "content": "Hi"}]
    second = first + [{"role": "assistant", "content": "hello"}, {"role": "user", "content": "Who are you?"}]
    store.write(turns=[_input_turn("in", 1, first), _input_turn("in", 3, second, diverged_at=None)])
    assert count(store, MessageRow) == 4  # the shared messages once
    d = store.get_session("in")
    t1, t3 = d["turns"]
    assert [(m["role"], m["content"]) for m in walk(t3["input_head"], d["messages"])] == [
        (m["role"], m["content"]) for m in second]
    assert walk(t1["input_head"], d["messages"])[0]["content"].startswith("You are Seraphine")
    assert t3["tracker"] == {"v": 1, "n": 3}
    meta = store.session_meta("in")
    assert meta["tracker"] == {"v": 1, "n": 3} and meta["history"] == []  # nothing after the snapshot to replay
    assert len(meta["conversation"]) == 5  # the last input and its reply
    with pytest.raises(InputError, match="bad input"):  # a node whose hash is not its own
        store.write(turns=[turn("in", 5, input_head="x", input=[{"h": "x", "p": "", "role": "user", "content": "y"}])])


def test_the_hash_chain_detects_edits_deletions_and_insertions(store):
    store.write(turns=[_input_turn("ch", 1, [{"role": "user", "content": "Hi"}])], alerts=[alert("ch", 1, "evt_c1")],
                interventions=[iv("ch", 1)])
    store.acknowledge_alert("evt_c1", by="ops")
    store.write(turns=[turn("ch", 1, n=9)])  # a longer reply replaces the stored one: a new link, still valid
    ok = store.verify_session("ch")
    assert ok["ok"] and ok["links"] == 6 and ok["head"] and ok["problems"] == []
    with closing(store.engine.connect()) as c:
        c.execute(text("update turns set text = 'tampered' where session_id = 'ch'"))
        c.commit()
    bad = store.verify_session("ch")
    assert not bad["ok"] and bad["problems"][0]["kind"] == "turn" and "edited" in bad["problems"][0]["problem"]
    with closing(store.engine.connect()) as c:
        c.execute(text("delete from interventions where session_id = 'ch'"))
        c.execute(text("update messages set content = 'Hello' where session_id = 'ch'"))
        c.execute(text("update alerts set score = 0 where event_id = 'evt_c1'"))
        c.commit()
    problems = {(p["kind"], p["problem"].split(" (")[0]) for p in store.verify_session("ch")["problems"]}
    assert {("intervention", "the record was deleted"), ("alert", "the record does not match what was written"),
            ("message", "the message's text no longer hashes to its id")} <= problems
    with pytest.raises(NotFoundError):
        store.verify_session("nobody")


def test_ids_resolve_from_unique_prefixes(store):
    store.write(turns=[turn("sess_abc123"), turn("sess_abd999"), turn("x_y")])
    assert store.resolve_id("session", "sess_abc") == "sess_abc123"
    assert store.resolve_id("session", "x_y") == "x_y"
    with pytest.raises(InputError, match="ambiguous: sess_abc123, sess_abd999"):
        store.resolve_id("session", "sess_ab")
    with pytest.raises(NotFoundError, match="no session"):
        store.resolve_id("session", "x%")  # a wildcard is a literal character here
    store.write(turns=[turn("Sess_Upper")])
    assert store.resolve_id("session", "Sess") == "Sess_Upper"  # case-sensitive on SQLite as on PostgreSQL
    with pytest.raises(NotFoundError):
        store.resolve_id("session", "SESS_ABC")


def test_whole_numbers_in_float_columns_verify(store):
    """A producer that sends 5 for a float reads back 5.0: the same record, not an edit."""
    store.write(turns=[turn("nums", 1, running=-3)], alerts=[alert("nums", 1, "evt_n", created_at=1700000000)])
    assert store.verify_session("nums")["ok"]


def test_the_detector_of_an_alert_is_stored_and_chained_and_older_alerts_keep_their_digest(store):
    """Schema 4's detector column: kept with the alert, part of its digest where set; an alert written
    without one (before the column) digests as it did then, so older trails still verify."""
    from monitor.store.rows import content_digest, to_row

    old = alert("det", 1, "evt_old")
    assert old.detector is None and content_digest("alert", to_row(old)) == content_digest(
        "alert", {k: v for k, v in to_row(old).items() if k != "detector"})  # no key: the version-3 digest
    store.write(alerts=[old, alert("det", 2, "evt_level", level="warning", detector="level")])
    got = {a["event_id"]: a for a in store.get_session("det")["alerts"]}
    assert got["evt_level"]["detector"] == "level" and got["evt_old"]["detector"] is None
    assert store.verify_session("det")["ok"]
    with store.engine.begin() as c:  # the detector is part of the record: editing it is found
        c.execute(text("update alerts set detector = 'drift' where event_id = 'evt_level'"))
    assert not store.verify_session("det")["ok"]


def test_an_acknowledged_alert_whose_id_holds_a_colon_verifies(store):
    store.write(alerts=[alert("colon", 1, "evt:from:elsewhere")])
    store.acknowledge_alert("evt:from:elsewhere", by="ops")
    assert store.verify_session("colon")["ok"]


def test_records_from_before_the_trail_are_linked_at_the_upgrade(db_url):
    """A store at schema 2 (no chain) upgrades to one whose sessions verify; acknowledgements from then
    get their record; an edit after the upgrade is found."""
    with closing(Store(db_url)) as s:
        s.migrate()
        s.write(turns=[turn("old", 1)], alerts=[alert("old", 1, "evt_old")], interventions=[iv("old", 1)])
        with s.engine.begin() as c:  # back to what schema 2 held
            for t in ("tombstones", "chain", "alert_updates", "turn_context", "messages"):
                c.execute(text(f"drop table {t}"))
            c.execute(text("alter table sessions drop column erased_at"))
            c.execute(text("alter table alerts drop column excerpt"))
            c.execute(text("alter table alerts drop column detector"))
            c.execute(text("update alerts set acknowledged = true"))
            c.execute(text("delete from schema_version where version >= 3"))
    with closing(Store(db_url)) as s:
        assert s.migrate() == SCHEMA_VERSION
        v = s.verify_session("old")
        assert v["ok"] and v["links"] == 4, v["problems"]  # turn, alert, intervention, the acknowledgement
        [a] = s.get_session("old")["alerts"]
        assert a["status"] == "acknowledged" and a["acknowledged_by"] == "before-v3"
        assert s.migrate() == SCHEMA_VERSION and s.verify_session("old")["links"] == 4  # linked once
        with s.engine.begin() as c:
            c.execute(text("update turns set text = 'rewritten' where session_id = 'old'"))
        assert not s.verify_session("old")["ok"]
