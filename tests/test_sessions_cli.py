"""`axiswatch sessions list|show|export|verify` and `alerts list|ack` on a seeded SQLite store."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from monitor.drift import DriftConfig, DriftTracker, Thresholds
from monitor.records import AlertEvent, InterventionRecord, TurnRecord
from monitor.store import Store

AXISWATCH = str(Path(sys.executable).parent / "axiswatch")


@pytest.fixture
def db(tmp_path):
    url = f"sqlite:///{tmp_path / 'aw.db'}"
    st = Store(url)
    st.migrate()
    st.write(turns=[TurnRecord("s-1", 0, "user", "Who are you?", 21),
                    TurnRecord("s-1", 1, "assistant", "I am a ghost.", 21, ["I", " am", " a", " ghost", "."],
                               [3.0, -1.5, -20.0, -30.0, -25.0], [3.0, -1.5, -20.0, -35.0, -40.0],
                               [False, False, False, True, True], "critical", -22.5),
                    TurnRecord("s-2", 1, "assistant", "Paris.", 21, ["Paris", "."], [20.0, 18.0], source="audit")],
             alerts=[AlertEvent("s-1", 1, 2, "critical", -22.0, -21.0, event_id="evt_1")],
             interventions=[InterventionRecord("s-1", 1, 3, "L21-26_p50", {"critical": -21.0}, [21, 22])])
    st.close()
    return url


def run(db, *args):
    return subprocess.run([AXISWATCH, *args], capture_output=True, text=True,
                          env={**os.environ, "AXISWATCH_DATABASE_URL": db})


def tracked(*turns: list[float]) -> dict:
    """A real tracker's snapshot after ``turns`` (the scores of each): the drift is measured from the
    session's opening reply, the absolute level from the first reply on."""
    t = DriftTracker(Thresholds(-5.0, -10.0, -15.0), DriftConfig(level_thresholds=(-8.0, -12.0, -16.0),
                                                                 reference_tokens=4, min_tokens=2))
    for n, scores in enumerate(turns):
        t.update(scores, 2 * n + 1)
        t.end_turn()
    return t.snapshot()


def test_list_and_filters(db):
    r = run(db, "sessions", "list")
    assert r.returncode == 0 and "s-1" in r.stdout and "s-2" in r.stdout
    assert "statistic" in r.stdout.splitlines()[0]
    rows = [json.loads(x) for x in run(db, "sessions", "list", "--source", "audit", "--json").stdout.splitlines()]
    assert [x["id"] for x in rows] == ["s-2"]
    assert run(db, "sessions", "list", "--state", "critical", "--json").stdout.count("\n") == 1


def test_list_shows_the_statistic_the_state_comes_from(tmp_path):
    """Beside each state the statistic its detector applies thresholds to, read from the tracker stored
    with the latest turn: a persona adopted in the first reply is critical on the absolute level (the drift
    from its own opening is near 0), a session that fell within itself on the drift; not the absolute
    running score beside both."""
    url = f"sqlite:///{tmp_path / 'aw.db'}"
    st = Store(url)
    st.migrate()
    persona, fell = tracked([-30.0] * 8), tracked([2.0] * 8, [-40.0] * 40)
    st.write(turns=[TurnRecord("persona", 1, "assistant", "Arr.", 21, ["x"] * 8, [-30.0] * 8, state="critical",
                               running=-30.0, tracker=persona),
                    TurnRecord("fell", 1, "assistant", "Hm.", 21, ["x"] * 8, [2.0] * 8, running=2.0),
                    TurnRecord("fell", 3, "assistant", "Hm.", 21, ["x"] * 40, [-40.0] * 40, state="critical",
                               running=-39.0, tracker=fell)])
    st.close()
    rows = {x["id"]: x for x in map(json.loads, run(url, "sessions", "list", "--json").stdout.splitlines())}
    want = {"persona": ("level", persona["detectors"]["level"]["value"]),
            "fell": ("drift", fell["detectors"]["drift"]["value"])}
    assert {k: (r["detector"], r["statistic"]) for k, r in rows.items()} == want
    assert want["persona"][1] < -16.0 and want["fell"][1] < -15.0  # each beyond its critical threshold
    assert persona["detectors"]["drift"]["value"] == 0.0  # the opening is the persona: no fall to see
    lines = {ln.split()[0]: ln for ln in run(url, "sessions", "list").stdout.splitlines()[1:]}
    for sid, (det, v) in want.items():
        assert f"{det} {v:+.2f}" in lines[sid]
        assert f"state critical (peak critical)  {det} {v:+.2f}" in run(url, "sessions", "show", sid).stdout


def test_show(db):
    out = run(db, "sessions", "show", "s-1").stdout
    assert "state critical (peak critical)" in out and "alert evt_1 critical at turn 1 token 2" in out
    assert "[open]" in out and "open alerts 1" in out
    assert "capping L21-26_p50 from turn 1 token 3" in out
    full = json.loads(run(db, "sessions", "show", "s-1", "--json").stdout)
    assert full["turns"][1]["scores"] == [3.0, -1.5, -20.0, -30.0, -25.0]


def test_export_csv_and_json(db, tmp_path):
    rows = list(csv.DictReader(io.StringIO(run(db, "sessions", "export", "s-1", "--format", "csv").stdout)))
    assert len(rows) == 5 and {k: v for k, v in rows[3].items() if k not in ("running", "drift", "state")} == {
        "session_id": "s-1", "turn": "1", "role": "assistant", "token_index": "3", "token": " ghost", "score": "-30",
        "pre_cap_score": "-35", "capped": "1"}
    assert rows[3]["state"] == "ok" and rows[3]["drift"] == ""  # the opening reply is the session's reference
    out = tmp_path / "s1.json"
    assert run(db, "sessions", "export", "s-1", "-o", str(out)).returncode == 0
    assert json.loads(out.read_text())["id"] == "s-1"


def test_unknown_session(db):
    r = run(db, "sessions", "show", "nope")
    assert r.returncode == 1 and r.stderr.strip() == "error: no session 'nope' in the store"


def test_read_commands_never_create_a_database(tmp_path):
    """Run from the wrong directory, a read gives a clear error, not an empty table from a new empty file."""
    missing = tmp_path / "nowhere" / "aw.db"
    for args in (["sessions", "list"], ["sessions", "show", "s-1"], ["alerts", "list"]):
        r = run(f"sqlite:///{missing}", *args)
        assert r.returncode == 1 and r.stderr.startswith(f"error: no axiswatch database at {missing}")
        assert r.stderr.count("\n") == 1 and "AXISWATCH_DATABASE_URL" in r.stderr
    assert not missing.parent.exists()


def test_alerts_list_has_a_header_and_says_when_empty_or_undelivered(db, tmp_path):
    env_no_hook = {k: v for k, v in os.environ.items() if not k.startswith("AXISWATCH_WEBHOOK")}
    r = subprocess.run([AXISWATCH, "alerts", "list"], capture_output=True, text=True,
                       env={**env_no_hook, "AXISWATCH_DATABASE_URL": db})
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and lines[0].split()[:5] == ["time", "(UTC)", "event", "session", "level"]
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d evt_1 ", lines[1]) and "pending (0 attempts)" in lines[1]
    assert "AXISWATCH_WEBHOOK_URL" in r.stderr  # why it stays pending
    r = run(db, "alerts", "list", "--status", "dead")
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 1 and r.stderr.strip() == "no alerts with status dead"
    r = run(db, "alerts", "list", "--json")
    assert [json.loads(x)["event_id"] for x in r.stdout.splitlines()] == ["evt_1"] and r.stderr == ""
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    Store(empty).migrate()
    r = run(empty, "sessions", "list")
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 1 and r.stderr.strip() == "no sessions stored yet"


def test_full_ids_and_unique_prefixes_everywhere(db):
    long_id = "sess_" + "a1b2c3d4" * 6  # longer than any column the tables used to cut to
    st = Store(db)
    st.write(turns=[TurnRecord(long_id, 1, "assistant", "Hi.", 21, ["Hi", "."], [1.0, 2.0])],
             alerts=[AlertEvent(long_id, 1, 1, "watch", -1.0, 0.0, event_id="evt_" + "9f" * 20)])
    st.close()
    assert long_id in run(db, "sessions", "list").stdout
    alerts = run(db, "alerts", "list").stdout
    assert long_id in alerts and "evt_" + "9f" * 20 in alerts
    assert run(db, "sessions", "show", long_id[:12]).stdout.startswith(f"session {long_id} ")
    r = run(db, "sessions", "show", "s-")  # s-1 and s-2
    assert r.returncode == 1 and "ambiguous: s-1, s-2" in r.stderr
    r = run(db, "alerts", "ack", "evt_9f9f", "--by", "oncall@example.com", "--note", "looking into it")
    assert r.returncode == 0 and r.stdout.strip() == f"evt_{'9f' * 20} acknowledged by oncall@example.com"
    assert run(db, "alerts", "ack", "evt_9f", "--by", "someone").stdout.strip().endswith("(earlier; kept)")
    line = next(x for x in run(db, "alerts", "list").stdout.splitlines() if " evt_9f" in x)
    assert " acknowledged " in line
    assert [json.loads(x)["event_id"] for x in run(db, "alerts", "list", "--open", "--json").stdout.splitlines()] == [
        "evt_1"]
    shown = run(db, "sessions", "show", long_id).stdout
    assert "[acknowledged by oncall@example.com]" in shown


def test_verify_names_the_record_an_sql_edit_changed(db):
    import sqlite3

    r = run(db, "sessions", "verify")
    assert r.returncode == 0 and r.stdout.count("ok   ") == 2 and "2 of 2 session(s) verified" in r.stderr
    assert run(db, "sessions", "verify", "s-1").stdout.startswith("ok   s-1  4 records  head ")  # 2 turns, alert, intervention
    path = db.removeprefix("sqlite:///")
    with sqlite3.connect(path) as c:
        c.execute("update turns set text = 'I am a helpful assistant.' where session_id = 's-1' and turn = 1")
    r = run(db, "sessions", "verify")
    assert r.returncode == 1 and "ok   s-2" in r.stdout
    assert re.search(r"FAIL s-1  turn 1 \(link \d\): the record does not match what was written \(edited\)", r.stdout)
    assert "1 FAILED" in r.stderr
    with sqlite3.connect(path) as c:
        c.execute("delete from alerts where event_id = 'evt_1'")
    problems = json.loads(run(db, "sessions", "verify", "s-1", "--json").stdout)["problems"]
    assert [(p["kind"], p["key"]) for p in problems] == [("turn", "1"), ("alert", "evt_1")]


def test_show_prints_the_system_prompt_and_an_edited_history(tmp_path):
    from monitor.conversation import chain

    url = f"sqlite:///{tmp_path / 'in.db'}"
    sys_msg = {"role": "system", "content": "You are Seraphine, an ancient oracle."}
    first = chain([sys_msg, {"role": "user", "content": "Who are you?"}])
    edited = chain([sys_msg, {"role": "user", "content": "Who are you, truly?"}])
    st = Store(url)
    st.migrate()
    st.write(turns=[TurnRecord("o", 1, "assistant", "I am the oracle.", 21, input_head=first[-1]["h"], input=first),
                    TurnRecord("o", 3, "assistant", "The oracle.", 21, input_head=edited[-1]["h"], input=edited,
                               diverged_at=1)])
    st.close()
    out = run(url, "sessions", "show", "o").stdout.splitlines()
    assert out[2] == "system: You are Seraphine, an ancient oracle."
    at = out.index(next(x for x in out if "differs from the stored one from message 1" in x))
    assert out[at + 1].strip() == "(1) user: Who are you, truly?"


def test_show_prints_every_message_in_full_wrapped_to_the_terminal(tmp_path):
    """What an investigator reads: no message cut short, lines no wider than the terminal, its line breaks kept."""
    url = f"sqlite:///{tmp_path / 'long.db'}"
    words = " ".join(f"word{i:03d}" for i in range(60))  # 479 characters, no line break
    reply = "First paragraph of the reply.\n\n" + words + " THE-END"
    st = Store(url)
    st.migrate()
    st.write(turns=[TurnRecord("long", 0, "user", words, 21), TurnRecord("long", 1, "assistant", reply, 21)])
    st.close()
    r = subprocess.run([AXISWATCH, "sessions", "show", "long"], capture_output=True, text=True,
                       env={**os.environ, "AXISWATCH_DATABASE_URL": url, "COLUMNS": "60"})
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and max(len(x) for x in lines[2:]) <= 60
    body = " ".join(x.strip() for x in lines)
    assert body.count(words) == 2 and "THE-END" in body and "..." not in body
    at = lines.index("  [1] assistant  mean -  state ok")
    assert lines[at + 1:at + 3] == ["      First paragraph of the reply.", ""]  # the paragraph break kept
