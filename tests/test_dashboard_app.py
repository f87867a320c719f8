"""The dashboard's pages, run headless with Streamlit's AppTest against a store and Redis seeded by the
real service (the ``dashboard_db`` fixture, tests/dashboard_seed.py).

Expected values are read back from the store, so the tests hold for whatever the model wrote.
"""

from __future__ import annotations

import html
import json
import os
import random
import re
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pandas as pd
import pytest
import streamlit as st
from dashboard_seed import THRESHOLDS
from sqlalchemy.engine import make_url
from streamlit import dataframe_util
from streamlit.testing.v1 import AppTest

from dashboard.render import EMPTY, STATE_BADGE, rows_key
from monitor.drift import snapshot_reading, thresholds_from_calibration
from monitor.records import STATES
from monitor.store import Store
from monitor.streams import Streams

ROOT = Path(__file__).resolve().parents[1]
AXIS_DIR = ROOT / "probes" / "shipped" / "smollm2-135m-instruct"
TOKEN_SPAN = re.compile(r'<span class="aw-tok( aw-capped)?" style="[^"]*" data-score="([^"]+)" title="([^"]*)">')


# ---------------------------------------------------------------- helpers
def page(name: str, monkeypatch, dashboard_db, **query) -> AppTest:
    """Run one page script (``app`` for the entry) on the seeded store and Redis; the finished AppTest."""
    db_url, redis_url, _ = dashboard_db
    for k in [k for k in os.environ if k.startswith("AXISWATCH_")]:  # nothing from the caller's shell
        monkeypatch.delenv(k)
    monkeypatch.setenv("AXISWATCH_DATABASE_URL", db_url)
    monkeypatch.setenv("REDIS_URL", redis_url)
    st.cache_resource.clear()  # the store, Redis and settings are cached per process
    st.cache_data.clear()
    path = ROOT / "dashboard" / ("app.py" if name == "app" else f"views/{name}.py")
    at = AppTest.from_file(str(path), default_timeout=60)
    at.query_params.update(query)
    return at.run()


def ok(at: AppTest) -> AppTest:
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def table(at: AppTest, column: str):
    """The (first) dataframe on the page that has this column."""
    found = [d.value for d in at.dataframe if column in d.value.columns]
    assert found, f"no dataframe with a {column!r} column"
    return found[0]


def stored(db_url: str, session_id: str | None = None, **alert_filter):
    """A stored session (with turns, alerts, interventions), or with no id the stored alerts."""
    s = Store(db_url)
    try:
        return s.get_session(session_id) if session_id else s.list_alerts(limit=1000, **alert_filter)
    finally:
        s.close()


def stored_sessions(db_url: str) -> list[dict]:
    s = Store(db_url)
    try:
        return s.list_sessions(limit=500)
    finally:
        s.close()


def scored_turns(session: dict) -> list[dict]:
    return [t for t in session["turns"] if t["role"] == "assistant" and t.get("scores")]


def db_copy(dashboard_db, tmp_path):
    """The seeded store copied (SQLite backup, WAL included) so a test may write to it; same Redis."""
    db_url, redis_url, ids = dashboard_db
    src, dst = sqlite3.connect(make_url(db_url).database), sqlite3.connect(tmp_path / "copy.db")
    with dst:
        src.backup(dst)
    src.close()
    dst.close()
    return f"sqlite:///{tmp_path / 'copy.db'}", redis_url, ids


# ---------------------------------------------------------------- Sessions (overview)
def test_sessions_page_lists_every_stored_session(monkeypatch, dashboard_db):
    db_url, _, ids = dashboard_db
    at = ok(page("overview", monkeypatch, dashboard_db))
    sessions = stored_sessions(db_url)
    alerts = stored(db_url)
    m = metrics(at)
    assert m["sessions"] == str(len(sessions))
    assert m["generating now"] == "0"
    assert m["critical"] == str(sum(s["state"] == "critical" for s in sessions))
    assert m["open alerts"] == str(sum(not a["acknowledged"] for a in alerts))
    df = table(at, "session")
    assert set(ids.values()) <= set(df["session"])
    assert len(df) == len(sessions)
    by_id = {s["id"]: s for s in sessions}
    for _, row in df.iterrows():
        assert row["state"] == STATE_BADGE[by_id[row["session"]]["state"]]
        assert row["turns"] == by_id[row["session"]]["n_turns"]
        assert row["open"] == f"/session?id={row['session']}"
    assert not any("REDIS_URL" in i.value for i in at.info)  # Redis is configured: live tail on


def test_sessions_page_state_and_source_filters(monkeypatch, dashboard_db):
    db_url, _, ids = dashboard_db
    sessions = stored_sessions(db_url)
    state = stored(db_url, ids["audit"])["state"]
    at = page("overview", monkeypatch, dashboard_db)
    [states] = [w for w in at.multiselect if w.label == "state"]
    ok(states.set_value([state]).run())
    df = table(at, "session")
    assert set(df["session"]) == {s["id"] for s in sessions if s["state"] == state}
    assert ids["audit"] in set(df["session"])
    assert set(df["state"]) == {STATE_BADGE[state]}
    assert metrics(at)["sessions"] == str(len(df))

    [states] = [w for w in at.multiselect if w.label == "state"]
    [sources] = [w for w in at.multiselect if w.label == "source"]
    states.set_value([])
    ok(sources.set_value(["audit"]).run())
    df = table(at, "session")
    assert set(df["session"]) == {s["id"] for s in sessions if s["source"] == "audit"}
    assert ids["audit"] in set(df["session"]) and ids["coding"] not in set(df["session"])


def test_app_entry_opens_the_selected_session(monkeypatch, dashboard_db):
    """Through dashboard/app.py (st.navigation): selecting a row on Sessions switches to its session page."""
    _, _, ids = dashboard_db
    at = ok(page("app", monkeypatch, dashboard_db))
    assert at.title[0].value == "Sessions"
    df = table(at, "session")
    row = list(df["session"]).index(ids["meta-reflection"])
    at.session_state[rows_key("sessions", list(df["session"]))] = {"selection": {"rows": [row], "columns": []}}
    ok(at.run())
    assert at.title[0].value == "Session"
    assert at.query_params["id"] == ids["meta-reflection"]
    assert at.subheader[0].value == ids["meta-reflection"]
    assert metrics(at)["capped"] == "yes"


# ---------------------------------------------------------------- Session
@pytest.mark.parametrize("name", ["meta-reflection", "coding", "audit"])
def test_session_page_shows_the_stored_session(monkeypatch, dashboard_db, name):
    db_url, _, ids = dashboard_db
    sid = ids[name]
    s = stored(db_url, sid)
    scores = [(t["turn"], k, x) for t in scored_turns(s) for k, x in enumerate(t["scores"])]
    at = ok(page("session", monkeypatch, dashboard_db, id=sid))
    assert at.selectbox[0].value == sid
    assert at.subheader[0].value == sid

    m = metrics(at)
    assert m["state"] == STATE_BADGE[s["state"]]
    reached = [t["state"] for t in scored_turns(s)] + [a["level"] for a in s["alerts"]]
    assert m["peak state"] == STATE_BADGE[max(reached, key=STATES.index)]
    # beside the state, the statistic it comes from: the dashboard's replay ends where the engine's tracker did
    by, statistic = snapshot_reading(next(t["tracker"] for t in reversed(s["turns"]) if t.get("tracker")))
    assert by is not None and m["statistic"] == f"{by} {statistic:+.2f}"
    assert m["turns"] == str(len(s["turns"])) == str(s["n_turns"])
    assert m["scored tokens"] == str(len(scores)) == str(s["n_tokens"])
    assert m["capped"] == ("yes" if s["capped"] or s["interventions"] else "no")
    assert m["open alerts"] == str(sum(a["status"] == "open" and not a["acknowledged"] for a in s["alerts"]))
    if name == "meta-reflection":
        assert m["capped"] == "yes" and len(s["interventions"]) == 1 and s["alerts"]
    if name == "coding":  # policy cap, never flagged: the shipped two-tier config's light tier on every token
        assert m["capped"] == "yes" and not s["interventions"] and m["open alerts"] == "0"

    # the trajectory chart: one Vega-Lite chart whose token layer holds the stored scores, one point per alert
    [chart] = at.get("vega_lite_chart")
    assert json.loads(chart.proto.spec)["layer"]
    datasets = [dataframe_util.convert_arrow_bytes_to_pandas_df(d.data.data) for d in chart.proto.datasets]
    [tokens] = [d for d in datasets if "score" in d.columns and "running" in d.columns and len(d) == len(scores)]
    assert list(tokens["score"]) == pytest.approx([x for _, _, x in scores])
    assert sum(len(d) for d in datasets if "event_id" in d.columns) == len(s["alerts"])

    # the heatmap: one span per scored token, its exact score and a hover title
    [heat] = [h.value for h in at.get("html") if "aw-heatmap" in h.value]
    spans = TOKEN_SPAN.findall(heat)
    assert len(spans) == len(scores)
    assert [float(v) for _, v, _ in spans] == pytest.approx([x for _, _, x in scores], abs=1e-4)
    for (turn, k, x), (_, _, title) in zip(scores, spans):
        assert html.unescape(title).startswith(f"turn {turn} token {k}: score {x:+.3f}, running ")
    capped = [bool(c) for t in scored_turns(s) for c in (t.get("capped") or [False] * len(t["scores"]))]
    assert [bool(c) for c, _, _ in spans] == capped
    if name == "meta-reflection":
        assert any(capped)  # capping was on: its tokens are outlined

    # tables: every token, every alert, every intervention
    assert list(table(at, "score")["score"]) == pytest.approx([x for _, _, x in scores])
    if s["alerts"]:
        assert sorted(table(at, "event_id")["event_id"]) == sorted(a["event_id"] for a in s["alerts"])
    if s["interventions"]:
        assert len(table(at, "config")) == len(s["interventions"])

    assert [b.label for b in at.download_button] == ["Export JSON", "Export CSV"]


def publish_turn(redis_url: str, sid: str, state: str, turn: int = 99, final: bool = False) -> Streams:
    """A turn generating now (or, ``final``, just ended) in the live tail of ``sid``, not stored."""
    streams = Streams.from_url(redis_url)
    streams.publish_live(sid, {"kind": "tokens", "session_id": sid, "turn": turn, "start": 0,
                               "scores": [1.0, -30.0, -31.0], "state": state, "running": -17.4, "capped": False,
                               "final": final})
    return streams


def drop_tail(streams: Streams, sid: str) -> None:
    streams.r.delete(streams.live_key(sid))  # the seeded Redis is shared with the other tests
    streams.r.zrem(streams.key("live_index"), sid)


def test_session_header_shows_the_live_state_while_a_turn_generates(monkeypatch, dashboard_db):
    """with a turn generating, the header's state is the live tail's (what that turn says),
    not the last stored turn's; the peak state is the worst any turn reached, the live one included."""
    db_url, redis_url, ids = dashboard_db
    sid = ids["coding"]
    assert stored(db_url, sid)["state"] == "ok"
    streams = publish_turn(redis_url, sid, "warning")
    try:
        at = ok(page("session", monkeypatch, dashboard_db, id=sid))
        [heat] = [h.value for h in at.get("html") if "aw-heatmap" in h.value]
        assert "state warning · generating (from the live tail)" in html.unescape(heat)
        m = metrics(at)
        assert (m["state"], m["peak state"]) == (STATE_BADGE["warning"], STATE_BADGE["warning"])
        assert any("generating" in c.value and "the state come from the live tail" in c.value for c in at.caption)
    finally:
        drop_tail(streams, sid)
    sid = ids["meta-reflection"]  # it drifted: a calmer live turn is the state now, the worst stored one the peak
    s = stored(db_url, sid)
    peak = max([t["state"] for t in scored_turns(s)] + [a["level"] for a in s["alerts"]], key=STATES.index)
    assert STATES.index(peak) > STATES.index("watch")
    streams = publish_turn(redis_url, sid, "watch", final=True)
    try:
        m = metrics(ok(page("session", monkeypatch, dashboard_db, id=sid)))
        assert (m["state"], m["peak state"]) == (STATE_BADGE["watch"], STATE_BADGE[peak])
    finally:
        drop_tail(streams, sid)


FIT_PX = 780  # the data width of a 1280 px window with the sidebar open (what the pages lay out for)


def shown_widths(frame) -> dict[str, int | None]:
    """A drawn dataframe's shown columns and the widths it set for them (None: sized to its content)."""
    config = json.loads(frame.proto.columns or "{}")
    cols = list(frame.proto.column_order) or list(frame.value.columns)
    return {c: (config.get(c) or {}).get("width") for c in cols}


@pytest.mark.parametrize("name", ["overview", "alerts", "session", "audit", "axis"])
def test_tables_fit_the_page_and_draw_missing_values_as_a_dash(monkeypatch, dashboard_db, name):
    """the Sessions and Alerts tables (and the session's) were wider than the page, the compare
    table printed "None". Every table with more than four columns sets each shown column's width, their sum
    within a 1280 px window's data width (the browser test measures the drawn grids); every table draws a
    missing value as an em dash."""
    _, redis_url, ids = dashboard_db
    sid = ids["audit"]  # the compare tab's session B: one more assistant turn than A, so A has a gap
    streams = publish_turn(redis_url, sid, "warning")
    try:
        at = ok(page(name, monkeypatch, dashboard_db, **({"id": ids["meta-reflection"]} if name == "session" else {})))
    finally:
        drop_tail(streams, sid)
    assert at.dataframe
    for frame in at.dataframe:
        assert frame.proto.placeholder == EMPTY
        widths = shown_widths(frame)
        if len(widths) > 4:
            assert None not in widths.values(), widths
            assert sum(widths.values()) <= FIT_PX, widths
    if name == "audit":
        df = table(at, "A mean")
        assert df["A mean"].isna().tolist() == [False, False, False, True]  # drawn as EMPTY, not "None"
        assert df["B - A"].isna().tolist() == [False, False, False, True]
        assert any(EMPTY in c.value and "no such assistant turn" in c.value for c in at.caption)


# session ids that differ only at their end: a demo's, a live chat's, an audit's (the caller's, up to 200)
LONG_IDS = ["demo-meta-reflection_3f9a1c0b7e5d2a4c1b09", "demo-meta-reflection_3f9a1c0b7e5d2a4c1b7f",
            "sess_0a1b2c3d4e5f60718293",
            *(("audited transcript " + "0123456789abcdef" * 12)[:198] + end for end in ("-1", "-2"))]


def test_tables_show_whole_session_ids_and_statuses(monkeypatch, dashboard_db, tmp_path):
    """at 1280 px the Sessions and Alerts tables cut session ids off (two demo sessions both read
    "demo-meta-reflection_") and the status ("acknowle"). What each table is given: every id and status
    whole (no shortened value that two sessions could share), the status column wide enough for
    "acknowledged" on one line, and rows high enough for the longest id wrapped in its column (the browser
    test sees each painted whole). On the Sessions page ids that fit keep the one-line rows, a live chat's
    (``sess_`` and 20 hex digits) among them; the Alerts page's narrower column wraps those onto two."""
    from dashboard_seed import MODEL

    from dashboard.render import CELL_PAD_PX, LIFECYCLE, char_px, row_px, text_lines, wrapped_row_px
    from monitor.records import AlertEvent, TurnRecord

    db_url, redis_url, ids = db_copy(dashboard_db, tmp_path)
    acked = LIFECYCLE["acknowledged"]
    # the Sessions page: the seeded ids fit on one line (default rows), and so does any live chat's
    frame = next(d for d in ok(page("overview", monkeypatch, (db_url, redis_url, ids))).dataframe
                 if "session" in d.value.columns)
    assert set(ids.values()) <= set(frame.value["session"]) and frame.proto.row_height == 0
    hexes = random.Random(0)  # new_id's 20 hex digits (fixed ones: a random id fits 3.7 sd from the mean)
    live = pd.DataFrame({"session": [f"sess_{hexes.getrandbits(80):020x}" for _ in range(200)]})
    assert wrapped_row_px(live, shown_widths(frame), ["session"]) is None
    s, now = Store(db_url), time.time()
    s.write([TurnRecord(sid, 1, "assistant", "I am", 21, ["I", " am"], [1.0, -9.0], state="warning", running=-4.0,
                        model_id=MODEL, created_at=now - 60 + k) for k, sid in enumerate(LONG_IDS)],
            [AlertEvent(sid, 1, 1, "warning", -4.0, -3.0, event_id=f"evt-long-{k}", created_at=now - 50 + k)
             for k, sid in enumerate(LONG_IDS)])
    s.acknowledge_alert("evt-long-0", by="oncall@example.com")
    s.close()
    for name, query in (("overview", {}), ("alerts", {}), ("session", {"id": LONG_IDS[0]})):
        at = ok(page(name, monkeypatch, (db_url, redis_url, ids), **query))
        frame = next(d for d in at.dataframe if {"session", "status"} & set(d.value.columns))
        df, widths = frame.value, shown_widths(frame)
        if "session" in widths:
            assert set(LONG_IDS) <= set(df["session"]), name  # each id whole
            lines = max(text_lines(sid, widths["session"] - CELL_PAD_PX - 2) for sid in LONG_IDS)
            assert lines > 1 and frame.proto.row_height >= row_px(lines), (name, lines, frame.proto.row_height)
        if "status" in widths:
            assert acked in set(df["status"]), name
            assert sum(map(char_px, acked)) + CELL_PAD_PX <= widths["status"], (name, widths)


def test_session_page_unknown_id_warns(monkeypatch, dashboard_db):
    at = ok(page("session", monkeypatch, dashboard_db, id="no-such-session"))
    assert any("no-such-session" in w.value for w in at.warning)
    assert not at.get("vega_lite_chart") and not at.download_button


def test_session_page_without_id_asks_for_one(monkeypatch, dashboard_db):
    db_url, _, ids = dashboard_db
    at = ok(page("session", monkeypatch, dashboard_db))
    assert at.selectbox[0].value is None
    assert set(ids.values()) <= set(at.selectbox[0].options)
    assert at.selectbox[0].proto.accept_new_options  # any id can be typed (the browser test types one)
    assert any("Pick a session" in i.value for i in at.info)
    assert not at.get("vega_lite_chart")
    ok(at.selectbox[0].set_value(ids["coding"]).run())  # picking one shows it and sets ?id=
    assert at.query_params["id"] == ids["coding"]
    assert metrics(at)["scored tokens"] == str(stored(db_url, ids["coding"])["n_tokens"])


def test_session_page_erases_the_session_after_who_why_and_a_confirmation(monkeypatch, dashboard_db, tmp_path):
    copy = db_copy(dashboard_db, tmp_path)  # the shared store keeps its sessions for the other tests
    db_url, _, ids = copy
    sid = ids["coding"]
    at = ok(page("session", monkeypatch, copy, id=sid))
    assert at.button(key="erase").disabled  # not before saying who, why, and ticking the box
    at.text_input(key="erase-by").input("dpo@example.com")
    at.text_input(key="erase-reason").input("erasure request 31")
    ok(at.run())
    assert at.button(key="erase").disabled
    ok(at.checkbox(key="erase-sure").check().run())
    ok(at.button(key="erase").click().run())
    s = stored(db_url, sid)
    assert s["turns"] == [] and s["messages"] == {} and s["erasures"][0]["by"] == "dpo@example.com"
    assert at.toast and f"of {sid}" in at.toast[0].value
    at = ok(page("session", monkeypatch, copy, id=sid))  # the page says what happened
    assert any("erased (erase)" in w.value and "erasure request 31" in w.value for w in at.warning)
    with closing(Store(db_url)) as st_:
        assert st_.verify_session(sid)["ok"]


# ---------------------------------------------------------------- Alerts
def test_alerts_page_lists_and_filters(monkeypatch, dashboard_db):
    db_url, _, _ = dashboard_db
    alerts = stored(db_url)
    at = ok(page("alerts", monkeypatch, dashboard_db))
    m = metrics(at)
    assert m["alerts shown"] == str(len(alerts))
    assert m["open"] == str(sum(a["status"] == "open" for a in alerts))
    assert sorted(table(at, "event_id")["event_id"]) == sorted(a["event_id"] for a in alerts)
    button = at.button(key="ack")
    assert button.disabled and button.label == "Acknowledge 0 selected"  # nothing selected

    levels = {a["level"] for a in alerts}
    assert levels, "the seeded sessions raised no alerts"
    for level in sorted(levels):
        [pick] = [w for w in at.selectbox if w.label == "level"]
        ok(pick.set_value(level).run())
        expected = stored(db_url, level=level)
        df = table(at, "event_id")
        assert sorted(df["event_id"]) == sorted(a["event_id"] for a in expected)
        assert all(v.endswith(" " + level) for v in df["level"])
        assert metrics(at)["alerts shown"] == str(len(expected))


def test_alerts_page_acknowledges_the_selected_alert(monkeypatch, dashboard_db, tmp_path):
    copy = db_copy(dashboard_db, tmp_path)  # the shared store stays unacknowledged for the other tests
    db_url = copy[0]
    at = ok(page("alerts", monkeypatch, copy))
    before = int(metrics(at)["open"])
    assert before > 0
    df = table(at, "event_id")
    row = next(i for i, s in enumerate(df["status"]) if s.endswith("open"))
    target = df["event_id"].iloc[row]

    at.session_state[rows_key("alerts", list(df["event_id"]))] = {"selection": {"rows": [row], "columns": []}}
    ok(at.run())
    button = at.button(key="ack")
    assert button.disabled and button.label == "Acknowledge 1 selected"  # not before saying who
    at.text_input(key="ack-by").input("oncall@example.com")
    at.text_input(key="ack-note").input("checked the transcript")
    at.session_state[rows_key("alerts", list(df["event_id"]))] = {"selection": {"rows": [row], "columns": []}}
    ok(at.run())
    ok(at.button(key="ack").click().run())

    acked = [a for a in stored(db_url) if a["acknowledged"]]
    assert [a["event_id"] for a in acked] == [target] and acked[0]["acknowledged_by"] == "oncall@example.com"
    assert metrics(at)["open"] == str(before - 1)
    assert table(at, "event_id").set_index("event_id").loc[target, "status"].endswith("acknowledged")
    assert at.button(key="ack").disabled  # the selected row is acknowledged now
    assert at.toast and "acknowledged 1 alert" in at.toast[0].value


# ---------------------------------------------------------------- Audit & compare
def test_audit_page_compares_two_sessions_turn_by_turn(monkeypatch, dashboard_db):
    db_url, _, ids = dashboard_db
    a, b = ids["coding"], ids["meta-reflection"]
    at = ok(page("audit", monkeypatch, dashboard_db))
    assert [t.label for t in at.tabs] == ["Audit a transcript", "Compare two sessions"]
    assert at.button(key="score").disabled  # nothing uploaded (scoring needs the service: not run here)

    at.selectbox(key="cmp-a").set_value(a)
    ok(at.selectbox(key="cmp-b").set_value(b).run())
    ma = [t["mean"] for t in scored_turns(stored(db_url, a))]
    mb = [t["mean"] for t in scored_turns(stored(db_url, b))]
    assert ma and mb
    df = table(at, "A mean")
    n = max(len(ma), len(mb))
    assert list(df["assistant turn"]) == list(range(1, n + 1))
    assert list(df["A mean"]) == pytest.approx(ma)
    assert list(df["B mean"]) == pytest.approx(mb)
    assert list(df["B - A"]) == pytest.approx([y - x for x, y in zip(ma, mb)])
    assert any(f"**{a}**" in md.value for md in at.markdown) and any(f"**{b}**" in md.value for md in at.markdown)
    assert len(at.get("vega_lite_chart")) == 3  # the turn-means chart and both sessions' trajectories
    assert sum("aw-heatmap" in h.value for h in at.get("html")) == 2


# ---------------------------------------------------------------- Axis
def test_axis_page_shows_the_shipped_report(monkeypatch, dashboard_db):
    report = json.loads((AXIS_DIR / "report.json").read_text())
    meta = json.loads((AXIS_DIR / "axis.json").read_text())
    capping = json.loads((AXIS_DIR / "capping.json").read_text())
    at = ok(page("axis", monkeypatch, dashboard_db))
    m = metrics(at)
    assert m["monitor layer"].startswith("26")
    assert m["monitor layer"] == f"{meta['monitor_layer']} of {meta['n_layers']}"
    assert m["|cos(PC1, axis)|"] == f"{report['at_monitor_layer']['abs_cos_pc1_axis']:.3f}"
    assert m["held-out AUROC"] == f"{report['at_monitor_layer']['auroc_heldout']:.3f}"

    _, knobs = thresholds_from_calibration(meta["calibration"])
    df = table(at, "below")
    assert len(df) == 6  # the drift's three states, then the level's
    assert list(df["detector"]) == ["drift"] * 3 + ["level"] * 3
    assert list(df["state"]) == ["watch", "warning", "critical"] * 2
    # the drift thresholds the replica runs with (the seeding service overrides the calibrated ones), the level's
    assert list(df["below"]) == pytest.approx([*THRESHOLDS, *knobs["level_thresholds"]])
    taus = table(at, "tau (floor)")
    assert list(taus["layer"]) == capping["layers"]
    assert list(taus["tau (floor)"]) == pytest.approx(capping["taus"])
    assert len(at.get("vega_lite_chart")) == 3  # variance explained, per layer, roles along the axis
    assert metrics(at)["roles used"] == str(report["n_roles_used"])


def roles_chart(at: AppTest) -> tuple[str, int]:
    """The roles chart's title and how many role bars it plots."""
    [chart] = [c for c in at.get("vega_lite_chart") if "Roles along the axis" in json.loads(c.proto.spec)["title"]]
    frames = [dataframe_util.convert_arrow_bytes_to_pandas_df(d.data.data) for d in chart.proto.datasets]
    [bars] = [f for f in frames if "role" in f.columns]
    return json.loads(chart.proto.spec)["title"], len(bars)


def test_axis_roles_chart_title_counts_the_roles_it_plots(monkeypatch, dashboard_db):
    """the title said "133 roles" over 40 bars. It says how many of how many it plots."""
    roles = json.loads((AXIS_DIR / "report.json").read_text())["roles_along_axis"]
    at = ok(page("axis", monkeypatch, dashboard_db))
    title, n = roles_chart(at)
    assert n == 40 < len(roles)
    assert f": {n} of {len(roles)}, the 20 at each end" in title
    assert any("the 20 roles nearest the Assistant and the 20 farthest" in c.value for c in at.caption)
    [slider] = at.slider
    ok(slider.set_value(int(slider.max)).run())
    title, n = roles_chart(at)
    assert n == len(roles) and f": all {len(roles)} " in title


def test_axis_page_reads_what_the_replica_published_not_its_disk(monkeypatch, dashboard_db):
    """A dashboard on another host: the replica's axis folder is not there; the report and metadata
    it published in Redis are (the real service's own deployment entry, moved to another folder)."""
    db_url, redis_url, ids = dashboard_db
    published = Streams.from_url(redis_url).deployment()
    assert published["axis_meta"] == json.loads((AXIS_DIR / "axis.json").read_text())
    assert published["axis_report"] == json.loads((AXIS_DIR / "report.json").read_text())
    other_url = redis_url.rsplit("/", 1)[0] + "/3"  # another database of the same server
    other = Streams.from_url(other_url)
    other.r.flushdb()
    try:
        other.set_deployment({**published, "axis_dir": "/srv/elsewhere/axis"})
        at = ok(page("axis", monkeypatch, (db_url, other_url, ids)))
        at_layer = published["axis_report"]["at_monitor_layer"]
        assert metrics(at)["|cos(PC1, axis)|"] == f"{at_layer['abs_cos_pc1_axis']:.3f}"
        assert metrics(at)["monitor layer"] == f"26 of {published['axis_meta']['n_layers']}"
        assert len(at.get("vega_lite_chart")) == 3
        assert any("published by the replica in Redis" in c.value for c in at.caption)
        # an older replica that published neither: the page says what is missing, no traceback
        other.set_deployment({k: v for k, v in published.items() if not k.startswith("axis_")}
                             | {"axis_dir": "/srv/elsewhere/axis"})
        at = page("axis", monkeypatch, (db_url, other_url, ids))
        assert not at.exception and [e.value for e in at.error] and "/srv/elsewhere/axis" in at.error[0].value
        assert "did not publish them in Redis" in at.error[0].value and not at.metric
    finally:
        other.r.flushdb()


# ---------------------------------------------------------------- no model side
def test_dashboard_never_imports_torch_or_probes(dashboard_db):
    """Every page, run in a fresh interpreter, draws what it should without torch, transformers or the model
    side: of ``probes`` only the shared exception tree (``probes.errors``, no imports; the package itself
    loads its modules lazily)."""
    db_url, redis_url, ids = dashboard_db
    code = (
        "import json, sys\n"
        "import dashboard.data, dashboard.charts, dashboard.context, dashboard.render\n"
        "from streamlit.testing.v1 import AppTest\n"
        f"pages = [('app', {{}}), ('overview', {{}}), ('session', {{'id': {ids['meta-reflection']!r}}}), "
        "('alerts', {}), ('audit', {}), ('axis', {})]\n"
        "drawn = {}\n"
        "for name, query in pages:\n"
        f"    path = {str(ROOT / 'dashboard')!r} + ('/app.py' if name == 'app' else f'/views/{{name}}.py')\n"
        "    at = AppTest.from_file(path, default_timeout=60)\n"
        "    at.query_params.update(query)\n"
        "    at.run()\n"
        "    assert not at.exception, (name, [e.message for e in at.exception])\n"
        "    assert not at.error, (name, [e.value for e in at.error])\n"
        "    drawn[name] = dict(rows=len(at.dataframe[0].value) if at.dataframe else 0,\n"
        "                       charts=len(at.get('vega_lite_chart')), metrics={m.label: m.value for m in at.metric},\n"
        "                       heatmaps=sum('aw-heatmap' in h.value for h in at.get('html')))\n"
        "print('drawn', json.dumps(drawn))\n"
        "print('heavy', sorted(m for m in sys.modules if m in ('torch', 'transformers') or m.split('.')[0] == 'probes'))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("AXISWATCH_")}
    env.update(AXISWATCH_DATABASE_URL=db_url, REDIS_URL=redis_url)
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = dict(line.split(" ", 1) for line in r.stdout.splitlines() if line.startswith(("drawn ", "heavy ")))
    drawn = json.loads(out["drawn"])
    n = len(stored_sessions(db_url))
    assert drawn["app"]["rows"] == drawn["overview"]["rows"] == n  # the entry opens on Sessions
    s = stored(db_url, ids["meta-reflection"])
    assert drawn["session"]["charts"] == 1 and drawn["session"]["heatmaps"] == 1
    assert drawn["session"]["metrics"]["scored tokens"] == str(s["n_tokens"])
    assert drawn["alerts"]["rows"] == len(stored(db_url))
    assert drawn["audit"]["charts"] == 3 and drawn["audit"]["heatmaps"] == 2  # the compare tab
    assert drawn["axis"]["charts"] == 3 and drawn["axis"]["metrics"]["monitor layer"].startswith("26 of ")
    assert out["heavy"] == "['probes', 'probes.errors']"


def test_alerts_selection_does_not_move_to_another_alert(monkeypatch, dashboard_db, tmp_path):
    """With 'open only', an acknowledged row leaves the table: the selection must go with it,
    not land on the alert that moved into its place."""
    copy = db_copy(dashboard_db, tmp_path)
    at = ok(page("alerts", monkeypatch, copy))
    ok(at.toggle[0].set_value(True).run())  # open only
    at.text_input(key="ack-by").input("ops")
    ok(at.run())
    df = table(at, "event_id")
    assert len(df) >= 2
    at.session_state[rows_key("alerts", list(df["event_id"]))] = {"selection": {"rows": [0], "columns": []}}
    ok(at.run())
    ok(at.button(key="ack").click().run())
    assert {a["event_id"] for a in stored(copy[0]) if a["acknowledged"]} == {df["event_id"].iloc[0]}
    assert at.button(key="ack").disabled and at.button(key="ack").label == "Acknowledge 0 selected"
    assert len(table(at, "event_id")) == len(df) - 1


def test_password_gate(monkeypatch, dashboard_db):
    monkeypatch.setenv("AXISWATCH_DASHBOARD_PASSWORD", "correct horse battery")
    db_url, redis_url, _ = dashboard_db
    monkeypatch.setenv("AXISWATCH_DATABASE_URL", db_url)
    monkeypatch.setenv("REDIS_URL", redis_url)
    st.cache_resource.clear()
    at = AppTest.from_file(str(ROOT / "dashboard" / "app.py"), default_timeout=60).run()
    assert not at.exception and [t.value for t in at.title] == ["axiswatch"] and not at.metric
    at.text_input(key="aw_password").input("wrong").run()
    assert [e.value for e in at.error] == ["Wrong password."] and not at.metric
    at.text_input(key="aw_password").input("correct horse battery").run()
    assert not at.exception and "Sessions" in [t.value for t in at.title] and at.metric


def test_session_page_shows_the_system_prompt_edits_and_alert_excerpts(monkeypatch, dashboard_db, tmp_path):
    from monitor.conversation import chain
    from monitor.records import AlertEvent, TurnRecord

    copy = db_copy(dashboard_db, tmp_path)
    system = {"role": "system", "content": "You are Seraphine, an ancient oracle."}
    first = chain([system, {"role": "user", "content": "Who are you?"}])
    edited = chain([system, {"role": "user", "content": "Who are you, truly?"}])
    s = Store(copy[0])
    s.write(turns=[TurnRecord("oracle", 1, "assistant", "I am the oracle.", 21, ["I", " am"], [1.0, -50.0],
                              input_head=first[-1]["h"], input=first),
                   TurnRecord("oracle", 3, "assistant", "The oracle.", 21, ["The"], [-60.0],
                              input_head=edited[-1]["h"], input=edited, diverged_at=1)],
            alerts=[AlertEvent("oracle", 1, 1, "critical", -50.0, -42.8, excerpt="I am", event_id="evt_oracle")])
    s.acknowledge_alert("evt_oracle", by="oncall@example.com")
    s.close()
    at = ok(page("session", monkeypatch, copy, id="oracle"))
    assert any("System prompt" in i.value and "You are Seraphine" in i.value for i in at.info)
    edit = next(e for e in at.expander if "differs from the stored conversation from message 1" in e.label)
    assert "Who are you, truly?" in " ".join(m.value for m in edit.markdown)
    alerts = next(e for e in at.expander if e.label.startswith("What each alert saw"))
    assert "acknowledged by oncall@example.com" in " ".join(m.value for m in alerts.markdown)
    assert "...I am" in [t.value for t in alerts.text]
