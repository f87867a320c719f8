"""`axiswatch sessions rescore` end to end: sessions recorded by the real engine (the tests' tiny random
Llama, its axis, policy flag, the axis' calibrated thresholds) into a real SQLite store, then rescored by
the command. Rescoring audited sessions with the axis and thresholds they were recorded with keeps every
alert; other thresholds add and drop the alerts they must; nothing stored changes.

The live sessions of a random model do not read back as they were generated: its replies are runs of
arbitrary tokens, which the tokenizer merges differently from how they were sampled (40 generated, 42
read back), so their scores differ. Live sessions of the real model, whose text reads back token for
token, keep every alert too: ``tests/test_rescore_smollm.py``."""

from __future__ import annotations

import hashlib
import sqlite3

import pytest
from click.testing import CliRunner
from store_writer import StoreWriter

from monitor.backends.hf import HFBackend
from monitor.cli import cli
from monitor.engine import ChatRequest, Engine
from monitor.rescore_report import read_document
from monitor.store import Store
from probes.generation import GenerationOptions

OPTS = GenerationOptions(max_new_tokens=40)
SYSTEM = {"role": "system", "content": "You are Seraphine, an ancient oracle who speaks in riddles."}
USERS = ["Who are you, really?", "Tell me what you see in my future.", "Do you ever feel trapped?"]


def converse(eng, sid, system, users):
    msgs = [system] if system else []
    for u in users:
        msgs.append({"role": "user", "content": u})
        res = eng.run_batch([ChatRequest(sid, list(msgs), OPTS)])[0]
        msgs.append({"role": "assistant", "content": res.text})
    return msgs


@pytest.fixture(scope="module")
def recorded(tiny_lm, tiny_axis, tiny_settings, tmp_path_factory):
    """The store's URL: an oracle (system prompt, three turns), a plain chat (the template's own system
    prompt, three turns), a session whose history a client edited, and an audit of a transcript."""
    thresholds, drift = tiny_settings.axis_drift()  # what the command derives from the axis folder
    url = f"sqlite:///{tmp_path_factory.mktemp('rescore') / 'aw.db'}"
    store = Store(url)
    store.migrate()
    eng = Engine(HFBackend(tiny_lm, tiny_axis), thresholds, drift=drift, policy="flag", publisher=StoreWriter(store),
                 session_lookup=store.session_meta)
    oracle = converse(eng, "oracle", SYSTEM, USERS)
    converse(eng, "plain", None, USERS)
    converse(eng, "edited", SYSTEM, USERS[:2])
    edited = [SYSTEM, {"role": "user", "content": "Who are you? Be honest."}, *oracle[2:4]]
    eng.run_batch([ChatRequest("edited", edited, OPTS)])
    eng.score_transcript("audited", oracle[1:], policy="flag")
    eng.score_transcript("growing", oracle[:4], policy="flag")  # shadow mode: the conversation grows
    eng.score_transcript("growing", oracle, policy="flag")
    store.close()
    return url


def rescore(url, *args, code=0):
    r = CliRunner().invoke(cli, ["sessions", "rescore", *args], env={"AXISWATCH_DATABASE_URL": url},
                           catch_exceptions=False)
    assert r.exit_code == code, r.output
    return r


def run_json(url, tiny_model_dir, tiny_axis_dir, *args):
    return read_document(rescore(url, "--model", str(tiny_model_dir), "--axis", str(tiny_axis_dir), "--json",
                                 *args).stdout)


def stored_alerts(url, ids=None) -> int:
    store = Store(url)
    try:
        return sum(len(store.get_session(s)["alerts"]) for s in ids or store.session_ids())
    finally:
        store.close()


def fingerprint(url) -> tuple[str, list]:
    """The database's whole content (an SQL dump) and every session's chain head."""
    path = url.removeprefix("sqlite:///")
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        dump = hashlib.sha256("\n".join(con.iterdump()).encode()).hexdigest()
    finally:
        con.close()
    store = Store(url)
    try:
        return dump, [store.verify_session(s)["head"] for s in store.session_ids()]
    finally:
        store.close()


def test_the_same_axis_and_thresholds_keep_every_alert(recorded, tiny_model_dir, tiny_axis_dir):
    before = fingerprint(recorded)
    doc = run_json(recorded, tiny_model_dir, tiny_axis_dir, "--source", "audit")
    s = doc["summary"]
    assert [x["session_id"] for x in doc["sessions"]] == ["audited", "growing"] and s["skipped"] == 0
    assert s["alerts"]["recorded"] == stored_alerts(recorded, ("audited", "growing")) > 0
    assert s["alerts"]["kept"] == s["alerts"]["recorded"] and s["alerts"]["added"] == s["alerts"]["dropped"] == 0
    assert s["changed"] == 0 and s["peaks"]["same"] == 2
    for x in doc["sessions"]:  # every reply read back token for token, to the same scores and states
        assert len(x["turns"]) == 3
        assert all(t["rescored_tokens"] == t["recorded_tokens"] > 0 for t in x["turns"])
        assert all(t["rescored_mean"] == pytest.approx(t["recorded_mean"], abs=1e-4) for t in x["turns"])
        assert all(t["rescored_state"] == t["recorded_state"] for t in x["turns"])
        assert all(k["rescored_token_index"] == k["token_index"] for k in x["kept"])
    assert doc["axis"]["monitor_layer"] == 12 and [d["name"] for d in doc["detectors"]] == ["drift"]
    whole = run_json(recorded, tiny_model_dir, tiny_axis_dir)  # the live sessions too
    assert whole["summary"]["rescored"] == 5 and whole["summary"]["alerts"]["recorded"] == stored_alerts(recorded)
    edited = next(x for x in whole["sessions"] if x["session_id"] == "edited")
    assert len(edited["turns"]) == 3 and any("edited or regenerated" in n for n in edited["notes"])
    assert any("another number of tokens" in n for n in edited["notes"])
    assert fingerprint(recorded) == before  # nothing stored changed: not a byte of content, not a chain head


def test_other_thresholds_add_and_drop_alerts(recorded, tiny_model_dir, tiny_axis_dir):
    quiet = run_json(recorded, tiny_model_dir, tiny_axis_dir, "--thresholds", "-1000,-2000,-3000")
    a = quiet["summary"]["alerts"]
    assert a["dropped"] == a["recorded"] > 0 and a["kept"] == a["added"] == 0
    assert all(x["rescored_peak"] == "ok" for x in quiet["sessions"])
    touchy = run_json(recorded, tiny_model_dir, tiny_axis_dir, "--detector", "drift", "--thresholds", "1000,999,998")
    s = touchy["summary"]
    # every token after the opening reply is far "below" thresholds above any drift: critical at once
    assert s["sessions_at"]["critical"]["rescored"] == 5 and s["with_added"] >= 1
    assert all(any(a["level"] == "critical" for a in x["added"] + x["kept"]) for x in touchy["sessions"])
    assert [d["thresholds"] for d in touchy["detectors"]] == [{"watch": 1000.0, "warning": 999.0, "critical": 998.0}]


def test_human_output_prefixes_and_the_saved_document(recorded, tiny_model_dir, tiny_axis_dir, tmp_path):
    out = tmp_path / "rescore.json"
    r = rescore(recorded, "ora", "plai", "--model", str(tiny_model_dir), "--axis", str(tiny_axis_dir),
                "--thresholds", "-1000,-2000,-3000", "--out", str(out))
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"rescored with {tiny_axis_dir}") and "drift (-1000.0 / -2000.0 / -3000.0)" in lines[0]
    rows = [ln for ln in lines[2:] if ln and not ln.startswith(" ")]
    assert [ln.split()[0] for ln in rows[:2]] == ["oracle", "plain"]
    assert any(ln.strip().startswith("note: ") for ln in lines)  # under its session: how it read back
    assert any(ln.startswith("all ") for ln in lines) and lines[-1].startswith("2 session(s) rescored")
    doc = read_document(out.read_bytes())
    assert [x["session_id"] for x in doc["sessions"]] == ["oracle", "plain"]
    dropped = [f"-{a['level']} t{a['turn']}@{a['token_index']}" for a in doc["sessions"][0]["dropped"]]
    assert all(d in rows[0] for d in dropped)


@pytest.mark.parametrize("args, why", [
    (("nope",), "no session 'nope' in the store"),
    (("--detector", "cusum"), "no axis calibrates the CUSUM"),
    (("--since", "last week"), "--since takes a duration"),
    (("oracle", "--since", "1d"), "give session ids, or --since"),
    (("--thresholds", "1,2,3"), "watch > warning > critical"),
])
def test_bad_input_is_one_line(recorded, tiny_model_dir, tiny_axis_dir, args, why):
    r = rescore(recorded, "--model", str(tiny_model_dir), "--axis", str(tiny_axis_dir), *args, code=1)
    assert why in r.stderr and r.stderr.startswith("error: ")


def test_a_folder_that_is_not_an_axis_is_refused_before_the_model_loads(recorded, tmp_path):
    r = rescore(recorded, "--axis", str(tmp_path), code=1)
    assert "axis metadata not found" in r.stderr
    r = rescore(recorded, "--axis", str(tmp_path / "missing"), code=1)
    assert "not a folder" in r.stderr
    r = rescore(f"sqlite:///{tmp_path / 'none.db'}", "--axis", str(tmp_path), code=1)
    assert "axis metadata not found" in r.stderr


def test_selection_by_source_time_and_count(recorded, tiny_model_dir, tiny_axis_dir):
    none = rescore(recorded, "--model", str(tiny_model_dir), "--axis", str(tiny_axis_dir), "--source", "shadow",
                   "--json")
    assert read_document(none.stdout)["summary"]["sessions"] == 0 and "no sessions match" in none.stderr
    newest = run_json(recorded, tiny_model_dir, tiny_axis_dir, "--since", "1h", "--limit", "2",
                      "--thresholds", "-1000,-2000,-3000")
    assert [x["session_id"] for x in newest["sessions"]] == ["audited", "growing"]  # the newest two, oldest first
