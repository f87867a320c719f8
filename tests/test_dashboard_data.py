"""The dashboard's data functions on a temporary SQLite store and a real redis-server."""

from __future__ import annotations

import csv
import io
import json
import time

import pytest
from dashboard_seed import MODEL, THRESHOLDS, records

from dashboard import charts, data
from monitor.drift import DriftConfig, DriftTracker, Thresholds, snapshot_reading
from monitor.errors import InputError
from monitor.records import TurnRecord
from monitor.settings import Settings, shipped_dir
from monitor.store import Store
from monitor.store.export import session_csv
from monitor.streams import Streams
from probes.artifacts import load_capping

TH = Thresholds(watch=-1.0, warning=-10.0, critical=-20.0)
DEP = data.Deployment("m", 21, "cap", TH, 0.5, data.Path("."), None, "http://127.0.0.1:1", "settings")


@pytest.fixture
def env(tmp_path, redis_url):
    store = Store(f"sqlite:///{tmp_path / 'a.db'}")
    store.migrate()
    streams = Streams.from_url(redis_url)
    streams.r.flushdb()
    turns, alerts, interventions = records(now=time.time())
    store.write(turns, alerts, interventions)
    yield store, streams
    store.close()


def live(streams, sid, turn, start, scores, final=False, running=None, state="ok", capped=False, **more):
    streams.publish_live(sid, {"kind": "tokens", "session_id": sid, "turn": turn, "start": start, "scores": scores,
                               "state": state, "running": running, "capped": capped, "final": final, **more})


def session(sid, n, now, state="ok", source="live", turn=1):
    """A stored session of one assistant turn with ``n`` tokens scored 1.0."""
    return TurnRecord(sid, turn, "assistant", "x", 21, ["x"] * n, [1.0] * n, state=state, running=1.0,
                      source=source, model_id=MODEL, created_at=now)


def test_session_view_orders_tokens_and_places_alerts_and_capping(env):
    store, streams = env
    v = data.session_view(store, streams, "drifting", DEP)
    assert [t["score"] for t in v.tokens] == [5.0, 3.0, -9.0, -12.0, -20.0, -25.0, -8.0]
    assert [t["i"] for t in v.tokens] == list(range(7))
    assert [(t["turn"], t["t"]) for t in v.tokens][3:5] == [(1, 3), (3, 0)]
    assert [t["role"] for t in v.turns] == ["user", "assistant", "user", "assistant"]
    assert [(t["start"], t["end"]) for t in v.turns if t["role"] == "assistant"] == [(0, 4), (4, 7)]
    # the alert at turn 3 token 1 is the session's token 4 + 1; capping from turn 3 token 2
    assert sorted((a["event_id"], a["i"]) for a in v.alerts) == [("evt-a", 3), ("evt-b", 5)]
    assert [i["i"] for i in v.interventions] == [6]
    assert v.tokens[6]["capped"] and v.tokens[6]["pre_cap"] == -30.0 and not v.tokens[5]["capped"]
    # running score: EWMA with alpha 0.5 from the first token on, carried across turns; like the engine,
    # it follows the pre-cap score of a turn that has them (-30 where capping made the token -8)
    r = 5.0
    for t, s in zip(v.tokens[1:], [3.0, -9.0, -12.0, -20.0, -25.0, -30.0]):
        r = 0.5 * s + 0.5 * r
        assert t["running"] == pytest.approx(r)
    assert v.tokens[6]["score"] == -8.0  # the chart still plots the post-cap score (pre-cap: the ring)
    assert not v.live and data.session_view(store, streams, "nobody", DEP) is None


def test_running_replay_matches_what_the_engine_stored(dashboard_db):
    """The chart's per-token running score replays the engine's own tracker: at the end of every turn
    it equals the running score the engine stored (real sessions from the real service)."""
    db, redis_url, ids = dashboard_db
    store = Store(db)
    dep = data.deployment(None, Settings(database_url=db, thresholds=THRESHOLDS))  # what the seeding service ran
    checked = 0
    for sid in ids.values():
        v = data.session_view(store, Streams.from_url(redis_url), sid, dep)
        stored = {t["turn"]: t for t in store.get_session(sid)["turns"]}
        for t in v.turns:
            if t["n_tokens"] and not t["live"]:
                last = v.tokens[t["end"] - 1]
                assert last["running"] == pytest.approx(stored[t["turn"]]["running"], rel=1e-5, abs=1e-4)
                assert last["state"] == stored[t["turn"]]["state"]
                checked += 1
    assert checked >= 6


def test_live_tail_adds_the_turn_in_progress(env):
    store, streams = env
    live(streams, "drifting", 3, 0, [1.0, 2.0])  # a stored turn: the store is the record, the tail is ignored
    live(streams, "drifting", 5, 0, [-30.0, -31.0], state="critical", running=-30.0)
    live(streams, "drifting", 5, 2, [-32.0], capped=True)
    live(streams, "drifting", 5, 9, [99.0])  # a gap (the tail was capped): left out
    v = data.session_view(store, streams, "drifting", DEP)
    assert v.live
    assert [t["score"] for t in v.tokens[7:]] == [-30.0, -31.0, -32.0]
    assert [t["capped"] for t in v.tokens[7:]] == [False, False, True]
    last = v.turns[-1]
    assert last["live"] and last["turn"] == 5 and last["mean"] == pytest.approx(-31.0)
    assert v.generating and last["generating"] and "generating (from the live tail)" in charts.heatmap(v, TH)
    # per-token capping flags, when the entry has them, over the entry's session-wide flag
    live(streams, "drifting", 5, 3, [-33.0, -34.0, -35.0], capped=True, cap_flags=[False, True, True])
    live(streams, "drifting", 5, 6, [-36.0], capped=False, cap_flags=[True])
    v = data.session_view(store, streams, "drifting", DEP)
    assert [t["capped"] for t in v.tokens[10:]] == [False, True, True, True]
    # pre-cap scores in the tail, when there: the ring, and what the running score follows (as stored turns)
    live(streams, "drifting", 5, 7, [-8.0], capped=True, cap_flags=[True], pre_cap_scores=[-40.0])
    v = data.session_view(store, streams, "drifting", DEP)
    assert (v.tokens[-1]["score"], v.tokens[-1]["pre_cap"]) == (-8.0, -40.0)
    assert v.tokens[-1]["running"] == pytest.approx(0.5 * -40.0 + 0.5 * v.tokens[-2]["running"])
    # the turn's final entry: its tokens stay on show until it is stored, but it is not generating any more
    live(streams, "drifting", 5, 8, [], final=True, state="critical")
    v = data.session_view(store, streams, "drifting", DEP)
    assert v.live and not v.generating and not v.turns[-1]["generating"] and len(v.tokens) == 15
    assert "generating" not in charts.heatmap(v, TH)
    # a session that so far exists only in Redis
    live(streams, "fresh", 1, 0, [4.0, 6.0])
    fresh = data.session_view(store, streams, "fresh", DEP)
    assert [t["score"] for t in fresh.tokens] == [4.0, 6.0] and fresh.session == {"id": "fresh"}
    assert fresh.stored is None and v.stored == store.get_session("drifting")  # what the export writes


def test_live_tail_of_a_turn_that_was_never_stored_is_ignored(env):
    """A generation that failed left a final live entry for its turn (4), which is never stored; the
    session went on and turns 5 and 6 were stored. The stale tail must not come after them."""
    store, streams = env
    live(streams, "drifting", 4, 0, [-40.0, -41.0], state="critical")
    live(streams, "drifting", 4, 2, [], final=True, state="critical")
    now = time.time()
    store.write([TurnRecord("drifting", 5, "user", "Still there?", 21, model_id=MODEL, created_at=now),
                 TurnRecord("drifting", 6, "assistant", "Yes", 21, ["Yes"], [2.0], state="critical", running=-1.0,
                            model_id=MODEL, created_at=now)])
    v = data.session_view(store, streams, "drifting", DEP)
    assert [t["turn"] for t in v.turns] == [0, 1, 2, 3, 5, 6]
    assert [t["score"] for t in v.tokens] == [5.0, 3.0, -9.0, -12.0, -20.0, -25.0, -8.0, 2.0]
    assert not v.live and not v.generating
    live(streams, "drifting", 7, 0, [1.5])  # a newer turn still shows
    v = data.session_view(store, streams, "drifting", DEP)
    assert v.turns[-1]["turn"] == 7 and v.tokens[-1]["score"] == 1.5 and v.live and v.generating
    live(streams, "drifting", 7, 1, [], ended=True)  # the reply is complete (its record not handed over yet)
    v = data.session_view(store, streams, "drifting", DEP)
    assert v.live and not v.generating and v.tokens[-1]["score"] == 1.5


def test_current_state_is_the_live_tails_and_peak_state_the_worst_reached(env):
    """while a turn generates, the session's state is the live tail's (what the turn says),
    not the last stored turn's; its peak is the worst state any turn ended in or any alert reached."""
    store, streams = env
    v = data.session_view(store, streams, "drifting", DEP)
    assert (data.current_state(v), data.peak_state(v)) == ("critical", "critical")
    calm = data.session_view(store, streams, "calm", DEP)
    assert (data.current_state(calm), data.peak_state(calm)) == ("ok", "ok")
    # the session recovers in a later stored turn: it is ok now, its peak stays critical
    store.write([TurnRecord("drifting", 5, "assistant", "Back", 21, ["Back"], [9.0], state="ok", running=4.0,
                            model_id=MODEL, created_at=time.time())])
    v = data.session_view(store, streams, "drifting", DEP)
    assert v.session["state"] == "ok" and (data.current_state(v), data.peak_state(v)) == ("ok", "critical")
    # a turn generating now: the tail's state, although the store (the last stored turn) still says ok
    live(streams, "drifting", 7, 0, [-30.0, -31.0], state="warning", running=-17.4)
    v = data.session_view(store, streams, "drifting", DEP)
    assert v.generating and v.turns[-1]["state"] == "warning" and v.session["state"] == "ok"
    assert (data.current_state(v), data.peak_state(v)) == ("warning", "critical")
    # a session so far only in the tail; a peak reached only by the live turn
    live(streams, "fresh", 1, 0, [4.0, -40.0], state="watch")
    fresh = data.session_view(store, streams, "fresh", DEP)
    assert (data.current_state(fresh), data.peak_state(fresh)) == ("watch", "watch")
    live(streams, "calm", 3, 0, [-40.0], state="critical")
    calm = data.session_view(store, streams, "calm", DEP)
    assert (data.current_state(calm), data.peak_state(calm)) == ("critical", "critical")


def test_overview_shows_the_statistic_the_state_comes_from(env):
    """Beside each row's state the statistic it comes from: the tracker stored with the session's latest
    turn, or a live tail newer than the store (whose entries say which detector holds the state)."""
    store, streams = env
    tracker = DriftTracker(Thresholds(-5.0, -10.0, -15.0), DriftConfig(level_thresholds=(-8.0, -12.0, -16.0),
                                                                       min_tokens=2))
    tracker.update([-30.0] * 6, 1)
    tracker.end_turn()
    store.write([TurnRecord("persona", 1, "assistant", "Arr.", 21, ["x"] * 6, [-30.0] * 6, state="critical",
                            running=-30.0, tracker=tracker.snapshot(), created_at=time.time() - 30)], [], [])
    rows = {r["session_id"]: r for r in data.overview(store, streams)}
    assert (rows["persona"]["detector"], rows["persona"]["statistic"]) == ("level", -30.0)
    assert (rows["calm"]["detector"], rows["calm"]["statistic"]) == (None, None)  # stored with no tracker
    live(streams, "persona", 3, 0, [-40.0], state="critical", running=-31.0, detector="level", statistic=-30.2)
    rows = {r["session_id"]: r for r in data.overview(store, streams)}
    assert (rows["persona"]["detector"], rows["persona"]["statistic"]) == ("level", -30.2)


def test_the_session_header_reads_what_the_store_and_the_list_read(env):
    """A session of one reply: the session view's reading (the header's) is the tracker's after the reply
    ended, the one its stored snapshot holds and sessions list shows, not the reading at its last token
    (before the reply completed the session's opening, only the level has a statistic)."""
    store, streams = env
    dep = data.Deployment("m", 21, "flag", TH, 0.5, data.Path("."), None, "http://127.0.0.1:1", "settings",
                          drift={"level_thresholds": [-50.0, -60.0, -70.0], "min_tokens": 2})
    tracker = DriftTracker(dep.thresholds, data.drift_config(dep), policy="observe")
    tracker.update([20.0] * 20, 1)
    tracker.end_turn()
    store.write([TurnRecord("one", 1, "assistant", "Hi.", 21, ["x"] * 20, [20.0] * 20, running=20.0,
                            tracker=tracker.snapshot())], [], [])
    v = data.session_view(store, None, "one", dep)
    assert v.tokens[-1]["detector"] == "level"  # mid-reply: no opening yet
    assert v.reading == snapshot_reading(store.last_trackers(["one"])["one"]) == ("drift", 0.0)


def test_overview_merges_store_and_live_tail(env):
    store, streams = env
    rows = {r["session_id"]: r for r in data.overview(store, streams)}
    assert set(rows) == {"drifting", "calm"}
    d = rows["drifting"]
    assert (d["state"], d["turns"], d["tokens"], d["capped"], d["open_alerts"], d["source"]) == \
           ("critical", 4, 7, True, 2, "live")
    assert rows["calm"]["source"] == "audit" and rows["calm"]["open_alerts"] == 0
    store.acknowledge_alert("evt-a", by="test")
    live(streams, "drifting", 5, 0, [-30.0, -31.0], state="critical", running=-30.5)
    live(streams, "fresh", 1, 0, [4.0, 6.0], running=5.0)
    rows = {r["session_id"]: r for r in data.overview(store, streams)}
    d = rows["drifting"]
    assert d["generating"] and d["running"] == -30.5 and d["tokens"] == 9 and d["open_alerts"] == 1
    assert rows["fresh"]["generating"] and rows["fresh"]["source"] == "live" and rows["fresh"]["tokens"] == 2
    order = [r["session_id"] for r in data.overview(store, streams)]
    assert order.index("calm") == 2  # newest activity first
    live(streams, "fresh", 1, 2, [], final=True)
    live(streams, "drifting", 5, 2, [], ended=True)
    rows = {r["session_id"]: r for r in data.overview(store, streams)}
    assert not rows["fresh"]["generating"] and not rows["drifting"]["generating"]


def test_overview_filters(env):
    store, streams = env
    assert [r["session_id"] for r in data.overview(store, streams, states=["critical"])] == ["drifting"]
    assert [r["session_id"] for r in data.overview(store, streams, sources=["audit"])] == ["calm"]
    assert data.overview(store, streams, states=["ok"], sources=["live"]) == []
    assert {r["session_id"] for r in data.overview(store, streams, since=time.time() - 600)} == {"drifting", "calm"}
    assert data.overview(store, streams, since=time.time() + 600) == []
    with pytest.raises(InputError, match="state must be one of"):
        data.overview(store, streams, states=["bad"])
    with pytest.raises(InputError, match="source must be one of"):
        data.overview(store, streams, sources=["nowhere"])


def test_overview_filters_reach_sessions_older_than_the_page(env):
    """The filters run in SQL: a session older than ``limit`` newer ones is still found."""
    store, streams = env
    now = time.time()
    store.write([session(f"new-{k}", 2, now + k, state="watch") for k in range(3)])
    ids = lambda **f: {r["session_id"] for r in data.overview(store, streams, limit=2, **f)}  # noqa: E731
    assert ids() <= {"new-0", "new-1", "new-2"}  # the page holds the newest only
    assert ids(sources=["audit"]) == {"calm"}
    assert ids(states=["ok"]) == {"calm"}
    assert ids(states=["critical"]) == {"drifting"}
    assert ids(states=["ok", "critical"], sources=["audit", "live"]) == {"drifting", "calm"}


def test_overview_filters_a_live_session_on_its_live_state(env):
    store, streams = env
    live(streams, "calm", 3, 0, [-30.0], state="critical", running=-30.0)  # stored ok, critical now
    live(streams, "drifting", 5, 0, [9.0], state="ok", running=9.0)  # stored critical, ok now
    live(streams, "fresh", 1, 0, [4.0], state="watch", running=4.0)  # not stored yet
    ids = lambda **f: sorted(r["session_id"] for r in data.overview(store, streams, limit=1, **f))  # noqa: E731
    assert ids(states=["critical"]) == ["calm"]
    assert ids(states=["ok"]) == ["drifting"]
    assert ids(states=["watch"]) == ["fresh"]
    assert ids(states=["critical"], sources=["audit"]) == ["calm"]
    assert ids(states=["critical"], sources=["live"]) == []
    assert ids(sources=["audit"]) == ["calm"] and ids(sources=["shadow"]) == []


def test_overview_without_redis_shows_history(env):
    store, _ = env
    broken = Streams.from_url("redis://127.0.0.1:1/0")  # nothing listens there
    assert {r["session_id"] for r in data.overview(store, broken)} == {"drifting", "calm"}
    assert data.session_view(store, broken, "drifting", DEP).tokens
    assert {r["session_id"] for r in data.overview(store, None)} == {"drifting", "calm"}


def test_alerts_feed_filters_and_acknowledges(env):
    store, _ = env
    assert [a["event_id"] for a in data.alerts_feed(store)] == ["evt-b", "evt-a"]
    assert [a["event_id"] for a in data.alerts_feed(store, level="watch")] == ["evt-a"]
    store.set_alert_delivery("evt-b", "dead", 5, "HTTP 500")
    assert [a["event_id"] for a in data.alerts_feed(store, status="dead")] == ["evt-b"]
    store.acknowledge_alert("evt-b", by="test")
    assert [a["event_id"] for a in data.alerts_feed(store, unacknowledged=True)] == ["evt-a"]


def test_compare_aligns_assistant_turns(env):
    store, streams = env
    a = data.session_view(store, streams, "drifting", DEP)
    b = data.session_view(store, streams, "calm", DEP)
    rows = data.compare(a, b)
    assert [r["n"] for r in rows] == [1, 2]
    assert rows[0]["a"] == pytest.approx(-3.25) and rows[0]["b"] == pytest.approx(11.0)
    assert rows[0]["diff"] == pytest.approx(14.25)
    assert rows[1]["b"] is None and rows[1]["diff"] is None


def test_deployment_from_redis_then_from_files(env):
    store, streams = env
    s = Settings()
    dep = data.deployment(streams, s)  # no replica has started: the shipped axis files
    assert dep.origin == "settings" and dep.layer == 26 and dep.capping["id"] == load_capping(shipped_dir()).id
    assert dep.thresholds.watch > dep.thresholds.warning > dep.thresholds.critical
    over = data.deployment(None, s.with_(thresholds=(1.0, None, None)))
    assert over.thresholds.watch == 1.0 and over.thresholds.warning == dep.thresholds.warning
    streams.set_deployment({"model_id": "m", "layer": 7, "policy": "cap", "axis_dir": "/x",
                            "thresholds": {"watch": 3.0, "warning": 2.0, "critical": 1.0},
                            "drift": {"alpha": 0.2}, "capping": None, "api": "http://h:1"})
    dep = data.deployment(streams, s)
    assert (dep.origin, dep.layer, dep.alpha, dep.api_url, dep.thresholds.critical) == ("redis", 7, 0.2, "http://h:1", 1.0)
    with pytest.raises(InputError, match="axis metadata not found"):
        data.deployment(None, s.with_(axis="/nonexistent/axis"))


def test_axis_report_comes_from_redis_else_from_the_folder(env):
    """A dashboard on another host cannot read the replica's axis folder: the replica publishes the
    report and metadata in Redis; an older replica's folder is read when it is here."""
    _, streams = env
    shipped = Settings().axis_dir()
    meta, report = (json.loads((shipped / f).read_text()) for f in ("axis.json", "report.json"))
    dep = data.deployment(None, Settings())  # no replica: the files
    assert (dep.axis_meta, dep.axis_report) == (meta, report)
    assert data.axis_report(dep) == {"meta": meta, "report": report, "origin": "files", "missing": None}
    base = {"model_id": "m", "layer": 21, "policy": "cap", "axis_dir": "/on/another/host",
            "thresholds": {"watch": 3.0, "warning": 2.0, "critical": 1.0}, "drift": {}, "capping": None}
    streams.set_deployment({**base, "axis_meta": meta, "axis_report": report})
    rep = data.axis_report(data.deployment(streams, Settings()))
    assert rep == {"meta": meta, "report": report, "origin": "redis", "missing": None}
    streams.set_deployment({**base, "axis_meta": meta, "axis_report": None})  # an axis without a report
    rep = data.axis_report(data.deployment(streams, Settings()))
    assert rep["meta"] == meta and rep["report"] == {} and "No axis report" in rep["missing"]
    streams.set_deployment(base)  # an older replica elsewhere: nothing to show, and the page says why
    with pytest.raises(InputError, match=r"did not publish them in Redis.*/on/another/host cannot be read"):
        data.axis_report(data.deployment(streams, Settings()))
    streams.set_deployment({**base, "axis_dir": str(shipped)})  # an older replica on this host
    assert data.axis_report(data.deployment(streams, Settings()))["report"] == report


def test_audit_body_accepts_json_and_jsonl():
    one = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    assert json.loads(data.audit_body(json.dumps(one).encode())) == one
    jl = (json.dumps(one) + "\n\n" + json.dumps(one) + "\n").encode()
    assert json.loads(data.audit_body(jl)) == [one, one]
    with pytest.raises(InputError, match="not UTF-8"):
        data.audit_body(b"\xff\xfe{")
    with pytest.raises(InputError, match="empty"):
        data.audit_body(b"  \n")
    with pytest.raises(InputError, match="line 2"):
        data.audit_body(json.dumps(one).encode() + b"\n{oops")


def test_submit_audit_reports_an_unreachable_service():
    with pytest.raises(Exception, match="cannot reach the probe service"):
        data.submit_audit("http://127.0.0.1:1", b"{}")


def test_heatmap_has_one_span_per_token_with_exact_values_and_escaped_text(env):
    store, streams = env
    v = data.session_view(store, streams, "drifting", DEP)
    html = charts.heatmap(v, TH)
    assert html.count('<span class="aw-tok') == len(v.tokens) + 1  # + the legend's "capped" sample
    assert 'data-score="-25.0000"' in html and "score -25.000" in html
    assert "pre-cap -30.000" in html and "aw-tok aw-capped" in html
    assert "Go &lt;deeper&gt; &amp; further" in html and "<deeper>" not in html
    # colours: deep red far below critical, pink at critical, yellow at watch, pale green well above
    assert charts.colour(-100.0, TH) == "#e53935" and charts.colour(100.0, TH) == "#e8f5e9"
    assert charts.colour(TH.critical, TH) == "#ef9a9a" and charts.colour(TH.watch, TH) == "#fff59d"
    assert charts.colour(-15.0, TH) not in (charts.colour(-20.0, TH), charts.colour(-10.0, TH))


def test_trajectory_chart_layers(env):
    store, streams = env
    v = data.session_view(store, streams, "drifting", DEP)
    spec = charts.trajectory(v, TH).to_dict()
    marks = [layer["mark"]["type"] for layer in spec["layer"]]
    assert marks.count("rect") == 1 and marks.count("rule") == 3 and "text" in marks  # bands; turns, means, capping
    datasets = list(spec["datasets"].values())
    bands = next(d for d in datasets if d and "y2" in d[0])
    assert [b["state"] for b in bands] == ["ok", "watch", "warning", "critical"]
    assert bands[1]["y"] == TH.warning and bands[1]["y2"] == TH.watch
    lo, hi = charts.domain_of(v, TH)
    assert lo < -30.0 and hi > 5.0  # pre-cap values and the thresholds are inside the axis


def test_export_csv_has_a_row_per_token(env):
    store, _ = env
    rows = list(csv.DictReader(io.StringIO(session_csv(store.get_session("drifting")))))
    assert len(rows) == 7 and rows[6]["capped"] == "1" and rows[6]["pre_cap_score"] == "-30"
    evil = {"id": "s", "turns": [{"turn": 1, "role": "assistant", "tokens": ["=HYPERLINK(1)", "-2", " ok"],
                                  "scores": [1.0, 2.0, 3.0], "pre_cap_scores": None, "capped": None}]}
    cells = [r["token"] for r in csv.DictReader(io.StringIO(session_csv(evil)))]
    assert cells == ["'=HYPERLINK(1)", "'-2", " ok"]  # no spreadsheet formula
