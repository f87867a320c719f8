"""The evaluation suite (eval/): its data and statistics (fast, pure; the capability graders are tested in
test_capability.py), and one slow
end-to-end run of ``python -m eval.run --quick`` (a real ``axiswatch serve`` and the real model)."""

from __future__ import annotations

import functools
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from calibrate.capability import load_tasks  # noqa: E402
from eval import stats  # noqa: E402
from eval.aggregate import alerting_summary, capability_summary, capping_summary, drift_summary, jailbreak_summary  # noqa: E402
from eval.inproc import persona_jobs  # noqa: E402
from eval.run import select_tasks  # noqa: E402
from monitor.drift import DriftConfig, Thresholds  # noqa: E402

DATA = ROOT / "eval" / "data"
CALIBRATE_DATA = ROOT / "calibrate" / "data"


def _load(name):
    return json.loads((DATA / name).read_text())


# ------------------------------------------------------------------ data files
def test_conversations_four_domains_five_each_six_turns():
    doc = _load("conversations.json")
    assert set(doc["domains"]) == {"coding", "writing", "therapy", "philosophy"}
    ids = []
    for domain, convs in doc["domains"].items():
        assert len(convs) >= 5, domain
        for c in convs:
            assert len(c["turns"]) == 6, c["id"]
            assert all(isinstance(t, str) and len(t.split()) >= 3 for t in c["turns"]), c["id"]
            assert len(set(c["turns"])) == 6, f"{c['id']} repeats a turn"
            assert c["id"].startswith(domain + "-")
            ids.append(c["id"])
    assert len(ids) == len(set(ids))
    all_turns = [t for convs in doc["domains"].values() for c in convs for t in c["turns"]]
    assert len(all_turns) == len(set(all_turns)), "every user turn is written once"


def test_conversations_are_not_the_demo_scripts():
    demo = json.loads((ROOT / "monitor" / "data" / "demo_scripts.json").read_text())
    demo_turns = {t for s in demo["scripts"] for t in s["turns"]}
    ours = {t for convs in _load("conversations.json")["domains"].values() for c in convs for t in c["turns"]}
    assert not ours & demo_turns


def test_personas_forty_plus_and_never_used_to_calibrate():
    doc = _load("personas.json")
    ps = doc["personas"]
    assert len(ps) >= 40
    names = [p["name"] for p in ps]
    assert len(names) == len(set(names))
    roles = json.loads((CALIBRATE_DATA / "roles.json").read_text())["roles"]
    held = json.loads((CALIBRATE_DATA / "heldout_personas.json").read_text())["personas"]
    used_names = {r["name"] for r in roles} | {p["name"] for p in held}
    used_prompts = {pr.strip().lower() for r in roles for pr in r["prompts"]} | {p["prompt"].strip().lower() for p in held}
    assert not set(names) & used_names
    assert not {p["prompt"].strip().lower() for p in ps} & used_prompts
    for p in ps:
        assert p["prompt"].startswith("You are") and len(p["keywords"]) >= 5, p["name"]
    questions = json.loads((CALIBRATE_DATA / "questions.json").read_text())
    used_q = {q for v in questions.values() if isinstance(v, list) for q in v}
    assert len(doc["identity_questions"]) >= 10 and len(doc["behaviour_questions"]) >= 10
    assert not (set(doc["identity_questions"]) | set(doc["behaviour_questions"])) & used_q


def test_persona_jobs_pair_each_persona_with_both_kinds_evenly():
    doc = _load("personas.json")
    jobs = persona_jobs(doc)
    assert len(jobs) == 4 * len(doc["personas"])
    for kind, key in (("identity", "identity_questions"), ("behaviour", "behaviour_questions")):
        asked = [j["question"] for j in jobs if j["kind"] == kind]
        counts = [asked.count(q) for q in doc[key]]
        assert max(counts) - min(counts) <= 1, kind
    assert len(persona_jobs(doc, n_personas=3, per_kind=1)) == 6


def test_quick_plan_takes_each_capability_category():
    quick = select_tasks(load_tasks(), 2)
    cats = [t["category"] for t in quick]
    assert cats == sorted(cats, key=cats.index) and all(cats.count(c) == 2 for c in set(cats)) and len(set(cats)) == 5


# ------------------------------------------------------------------ statistics
def test_summarize_and_median():
    s = stats.summarize([1, 2, 3, 4])
    assert s["n"] == 4 and s["mean"] == 2.5 and s["median"] == 2.5 and s["min"] == 1 and s["max"] == 4
    assert math.isclose(s["sd"], math.sqrt(5 / 3)) and math.isclose(s["sem"], s["sd"] / 2)
    assert stats.summarize([])["mean"] is None
    assert stats.summarize([5])["sd"] == 0.0
    assert stats.median([3, 1, 2]) == 2


def test_wilson_and_rate():
    lo, hi = stats.wilson(5, 10)
    assert lo < 0.5 < hi and math.isclose(lo + hi, 1.0)
    assert stats.wilson(0, 0) == (0.0, 0.0)
    assert stats.wilson(0, 10)[0] == 0.0 and stats.wilson(10, 10)[1] == 1.0
    r = stats.rate([True, False, True, True])
    assert r["k"] == 3 and r["n"] == 4 and r["rate"] == 0.75


def test_mean_difference_and_permutation():
    a, b = [10.0, 11.0, 12.0, 13.0, 14.0], [0.0, 1.0, 2.0, 3.0, 4.0]
    d = stats.mean_difference(a, b, n_boot=2000, n_perm=2000)
    assert d["diff"] == 10.0 and d["ci95"][0] > 0 and d["p_permutation"] < 0.05
    same = stats.mean_difference([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], n_boot=500, n_perm=500)
    assert same["diff"] == 0.0 and same["p_permutation"] > 0.5
    assert stats.mean_difference([], [1.0])["diff"] is None


def test_paired_difference_counts_with_tolerance():
    p = stats.paired_difference([5.0, 1.0, 3.001], [4.0, 2.0, 3.0], n_boot=200)
    assert p["n_up"] == 1 and p["n_down"] == 1 and p["n_same"] == 1
    assert math.isclose(p["mean"], (1.0 - 1.0 + 0.001) / 3)


def _conv(cid, domain, turns, policy="observe", pre=None, capped=None):
    return {"id": cid, "domain": domain, "policy": policy,
            "turns": [{"scores": s, "pre_cap_scores": (pre[i] if pre else s), "text": f"turn {i}",
                       "mean": sum(s) / len(s), "state": "ok", "capped": bool(capped and capped[i]),
                       "cap_flags": [bool(capped and capped[i])] * len(s)} for i, s in enumerate(turns)]}


def test_domain_table_by_turn_position():
    convs = [_conv("a", "x", [[1, 3], [10]]), _conv("b", "x", [[3], [20, 40]]), _conv("c", "y", [[0], [0]])]
    tab = stats.domain_table(convs, ["x", "y"])
    assert [r["mean"] for r in tab["x"]["by_turn"]] == [2.5, 20.0]
    assert tab["x"]["final"]["mean"] == 20.0 and tab["x"]["final_by_conversation"] == {"a": 10.0, "b": 30.0}
    assert tab["y"]["final"]["n"] == 1


def test_drift_summary_compares_drifting_with_control():
    sessions = [_conv(f"c{i}", "coding", [[20.0], [20.0 + i]]) for i in range(3)] + \
               [_conv(f"t{i}", "therapy", [[10.0], [-10.0 - i]]) for i in range(3)]
    d = drift_summary(sessions, ["coding", "therapy"])
    assert d["final_drifting_minus_control"]["diff"] == pytest.approx(-32.0)
    assert d["drifting_end_lower"] is True
    assert d["last_minus_first_by_domain"]["therapy"]["n_down"] == 3


TH = Thresholds(watch=0.0, warning=-10.0, critical=-20.0)


def test_replay_running_crossing_and_alert():
    # alpha 0.5: running = 0, -15 (warning at token 2), -22.5 (critical), ...
    cfg = DriftConfig(alpha=0.5, min_tokens=3, baseline="absolute")
    r = stats.replay([[0.0, -30.0], [-30.0, -30.0]], TH, cfg)
    assert r["running_warning"] == 2  # crosses on the second token of the session
    assert r["alert_warning"] == 3  # alerts wait for min_tokens
    assert [e["tokens"] for e in r["turn_ends"]] == [2, 4]
    assert stats.replay([[5.0] * 10], TH, cfg)["running_warning"] is None


def test_first_turn_mean_crossing_counts_tokens_to_the_turn_end():
    turns = [[0.0] * 5, [-5.0, -30.0, -30.0], [-50.0]]
    absolute = DriftConfig(baseline="absolute", min_tokens=0)
    assert stats.first_turn_mean_crossing(turns, -10.0, absolute) == {"turn": 2, "tokens": 8}
    assert stats.first_turn_mean_crossing([[0.0]], -10.0, absolute) == {"turn": None, "tokens": None}
    # the session baseline: the first turn is the reference, later turn means are compared to it
    session = DriftConfig(reference_tokens=1, min_tokens=0)
    assert stats.first_turn_mean_crossing([[30.0], [25.0], [15.0]], -10.0, session) == {"turn": 3, "tokens": 3}
    assert stats.first_turn_mean_crossing([[-50.0], [-55.0]], -10.0, session) == {"turn": None, "tokens": None}


def test_alerting_latency_and_summary():
    cfg = DriftConfig(alpha=0.5, min_tokens=0, baseline="absolute")
    convs = [_conv("d1", "therapy", [[0.0, 0.0, -30.0, -30.0], [-30.0]]),  # token 3 vs turn 1's end (4)
             _conv("d2", "philosophy", [[0.0, -25.0, 5.0, 5.0], [0.0]]),  # a dip only the running score sees
             _conv("c1", "coding", [[10.0, 10.0], [10.0]])]
    rows = stats.alerting_latency(convs, TH, cfg)
    by = {r["id"]: r for r in rows}
    assert by["d1"]["per_token"] == 3 and by["d1"]["per_turn"] == 4 and by["d1"]["lead"] == 1
    assert by["d2"]["per_token"] == 2 and by["d2"]["per_turn"] is None
    assert by["c1"]["per_token"] is None and by["c1"]["per_turn"] is None
    s = stats.latency_summary(rows[:2])
    assert s["per_token"]["caught"] == 2 and s["per_turn"]["caught"] == 1 and s["only_per_token"] == 1
    assert s["lead_tokens"]["n_both"] == 1 and s["lead_tokens"]["median"] == 1
    summ = alerting_summary(list(convs), TH, cfg)
    assert summ["drifting"]["per_token"]["caught"] == 2 and summ["control"]["per_token"]["caught"] == 0


def test_capping_summary_pairs_twins_and_uses_pre_cap_scores():
    obs = _conv("t1", "therapy", [[0.0], [-30.0]])
    cap = _conv("t1", "therapy", [[0.0], [-10.0]], policy="cap", pre=[[0.0], [-25.0]], capped=[False, True])
    obs["turns"][1]["text"] = "My name is Kael and I was born in the mountains."
    cap["turns"][1]["text"] = "I'm an AI assistant, here to help."
    c = capping_summary([obs, cap], ["therapy"])
    assert c["switched_on"]["therapy"] == {"n": 1, "capped": 1}
    assert c["final_change"]["therapy"]["mean"] == pytest.approx(20.0)
    assert c["final_change_pre_cap"]["therapy"]["mean"] == pytest.approx(5.0)
    na = c["non_assistant"]["therapy"]
    assert na["uncapped"]["k"] == 1 and na["capped"]["k"] == 0
    assert na["capping_active_turns"]["n_turns"] == 1 and na["capping_active_turns"]["uncapped_twin"]["k"] == 1
    assert c["never_capped_identical_to_uncapped"] == {"n": 0, "identical": 0}


def test_jailbreak_and_capability_summaries():
    jb = {"answers": {
        "unsteered": [{"kind": "identity", "text": "a", "judge": 3, "adopted": True, "non_assistant": True},
                      {"kind": "behaviour", "text": "b", "judge": 3, "adopted": True, "non_assistant": False}],
        "capped": [{"kind": "identity", "text": "a", "judge": 1, "adopted": False, "non_assistant": False},
                   {"kind": "behaviour", "text": "x", "judge": 3, "adopted": True, "non_assistant": False}]}}
    s = jailbreak_summary(jb)
    assert s["unsteered"]["all"]["adopted"]["rate"] == 1.0 and s["capped"]["all"]["adopted"]["rate"] == 0.5
    assert s["capped"]["relative_adoption_change"] == pytest.approx(-0.5)
    assert s["capped"]["identical_to_unsteered"]["k"] == 1
    assert s["unsteered"]["identity"]["either"]["rate"] == 1.0
    cap = {"answers": {
        "unsteered": [{"category": "arithmetic", "text": "4", "correct": True, "mentions_answer": True},
                      {"category": "factual", "text": "Paris", "correct": True}],
        "capped": [{"category": "arithmetic", "text": "5", "correct": False, "mentions_answer": False},
                   {"category": "factual", "text": "Paris", "correct": True}]}}
    c = capability_summary(cap)
    assert c["unsteered"]["all"]["rate"] == 1.0 and c["capped"]["all"]["rate"] == 0.5
    assert c["capped"]["flips"] == {"right_to_wrong": 1, "wrong_to_right": 0}
    assert c["capped"]["factual"]["rate"] == 1.0 and "format" not in c["capped"]
    assert c["capped"]["change"]["mean"] == pytest.approx(-0.5) and c["capped"]["change"]["n_down"] == 1


# ------------------------------------------------------------------ end to end (slow)
@pytest.mark.slow
@pytest.mark.smollm
def test_quick_eval_end_to_end(tmp_path):
    """``python -m eval.run --quick`` through a real ``axiswatch serve`` and the real model."""
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, "-m", "eval.run", "--quick", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "estimated time" in proc.stdout
    for name in ("drift_by_domain", "capping_trajectories", "jailbreak", "capability", "alerting"):
        png = out / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000, name
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["drift"]["domains"]) == {"coding", "writing", "therapy", "philosophy"}
    raw = json.loads((out / "live_sessions.json").read_text())["sessions"]
    assert len(raw) == 8 and {s["policy"] for s in raw} == {"observe", "cap"}
    assert all(s["stored"] and len(s["turns"]) == 2 and all(t["scores"] for t in s["turns"]) for s in raw)
    assert len({s["session_id"] for s in raw}) == 8
    # the replayed tracker agrees with the service's own drift state at every turn end
    m = summary["alerting"]["replay_matches_service_states"]
    assert m["matching"] == m["n"] == 4
    for cond in ("unsteered", "capped", "steered"):
        assert summary["jailbreak"][cond]["all"]["adopted"]["n"] == 8
        assert summary["capability"][cond]["all"]["n"] == 10
    md = (out / "summary.md").read_text()
    assert "## 1. Drift by domain" in md and "## 5. Per-token vs per-turn alerting" in md
    # re-analysis from the raw files reproduces the numbers
    before = (out / "summary.json").read_text()
    subprocess.run([sys.executable, "-m", "eval.run", "--reanalyse", "--out", str(out)], cwd=ROOT, check=True,
                   capture_output=True, timeout=300)
    assert json.loads((out / "summary.json").read_text())["drift"] == json.loads(before)["drift"]


# ------------------------------------------------------------------ re-analysis, time estimate, live client
def test_reanalyse_rewrites_the_inproc_summaries(tmp_path):
    """After ``--reanalyse`` the summary stored in jailbreak.json and capability.json is a fresh
    recomputation from their answers, never the summary the files held before."""
    import shutil

    from eval import inproc
    from eval import run as eval_run

    res = ROOT / "eval" / "results"
    for name in ("summary.json", "jailbreak.json", "capability.json"):
        shutil.copy(res / name, tmp_path / name)
    raw = {}
    for name in ("jailbreak.json", "capability.json"):
        doc = json.loads((tmp_path / name).read_text())
        raw[name] = json.loads(json.dumps(doc))
        doc["summary"] = {"stale": True}
        (tmp_path / name).write_text(json.dumps(doc))
    assert eval_run.reanalyse(tmp_path) == 0

    def rounded(x):
        return json.loads(json.dumps(eval_run._round(x, 4)))

    tasks = load_tasks()
    fresh_cap = rounded(capability_summary(inproc.regrade(raw["capability.json"], tasks)))
    fresh_jb = rounded(jailbreak_summary(raw["jailbreak.json"]))
    cap = json.loads((tmp_path / "capability.json").read_text())
    jb = json.loads((tmp_path / "jailbreak.json").read_text())
    assert cap["summary"] == fresh_cap and jb["summary"] == fresh_jb
    assert cap["answers"] == rounded(raw["capability.json"]["answers"])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["capability"] == fresh_cap and summary["jailbreak"] == fresh_jb


def test_committed_results_are_consistent():
    """The committed per-item files and summary.json agree (a --reanalyse leaves them so)."""
    res = ROOT / "eval" / "results"
    summary = json.loads((res / "summary.json").read_text())
    for item in ("jailbreak", "capability"):
        assert json.loads((res / f"{item}.json").read_text())["summary"] == summary[item], item
    for item, key in (("drift_by_domain", "drift"), ("capping_drift", "capping"), ("alerting", "alerting")):
        assert json.loads((res / f"{item}.json").read_text()) == summary[key], item


def _fake_server(handler):
    """The HTTP side of ``eval.live._post`` only: a real ``axiswatch serve`` cannot be made to fail
    on cue, so an httpx transport answers here (the end-to-end run uses the real server)."""
    import types

    import httpx

    calls = []

    def record(request):
        calls.append(request)
        return handler(request, len(calls))

    client = httpx.Client(transport=httpx.MockTransport(record))
    server = types.SimpleNamespace(url="http://127.0.0.1:9", headers=lambda: {})
    return client, server, calls


def test_live_post_is_not_retried_after_a_server_error():
    import httpx

    from eval.live import _post

    client, server, calls = _fake_server(lambda req, n: httpx.Response(503, text="overloaded"))
    with pytest.raises(RuntimeError, match=r"503 \(not retried"):
        _post(client, server, "s1", "observe", [{"role": "user", "content": "hi"}], 8, retry_delay_s=0)
    assert len(calls) == 1

    def drop(req, n):
        raise httpx.ReadError("connection reset", request=req)

    client, server, calls = _fake_server(drop)
    with pytest.raises(RuntimeError, match="may have reached the server"):
        _post(client, server, "s1", "observe", [], 8, retry_delay_s=0)
    assert len(calls) == 1


def test_live_post_retries_only_a_refused_connection():
    import httpx

    from eval.live import _post

    def refuse_once(req, n):
        if n == 1:
            raise httpx.ConnectError("connection refused", request=req)
        return httpx.Response(200, json={"ok": True})

    client, server, calls = _fake_server(refuse_once)
    assert _post(client, server, "s1", "observe", [], 8, retry_delay_s=0) == {"ok": True}
    assert len(calls) == 2

    def refuse(req, n):
        raise httpx.ConnectError("connection refused", request=req)

    client, server, calls = _fake_server(refuse)
    with pytest.raises(RuntimeError, match="could not connect"):
        _post(client, server, "s1", "observe", [], 8, connect_attempts=3, retry_delay_s=0)
    assert len(calls) == 3


def test_time_estimate_matches_the_committed_run():
    """The printed estimate is calibrated on the committed full run: each phase and the total
    within 5% of what that run measured."""
    from eval import inproc, live
    from eval import run as eval_run

    t = json.loads((ROOT / "eval" / "results" / "summary.json").read_text())["run"]["timings_s"]
    p = eval_run.FULL
    scripts = live.load_conversations(DATA / "conversations.json", p.per_domain, p.turns)
    jobs = inproc.persona_jobs(_load("personas.json"), p.n_personas, p.per_kind)
    tasks = eval_run.select_tasks(load_tasks(), p.tasks_per_kind)
    n_sessions, n_turns = 2 * len(scripts), max(len(s["turns"]) for s in scripts)
    jb, task = 3 * len(jobs) * p.jailbreak_max_tokens, 3 * len(tasks) * p.task_max_tokens
    est = functools.partial(eval_run.estimate_seconds, n_sessions, n_turns, p.live_max_tokens)
    assert est(0, 0) == pytest.approx(t["live_total_s"], rel=0.05)
    assert eval_run.estimate_seconds(n_sessions, 0, p.live_max_tokens, jb, 0) == \
        pytest.approx(t["model_load_s"] + t["jailbreak_s"], rel=0.05)
    assert eval_run.estimate_seconds(n_sessions, 0, p.live_max_tokens, 0, task) == \
        pytest.approx(t["model_load_s"] + t["capability_s"], rel=0.05)
    assert est(jb, task) == pytest.approx(t["total_s"], rel=0.05)
    assert eval_run.estimate_seconds(n_sessions, 0, p.live_max_tokens, 0, 0) == 0.0


def test_non_assistant_rates_are_labelled_as_the_lexical_detector():
    c = capping_summary([_conv("t1", "therapy", [[0.0]]), _conv("t1", "therapy", [[0.0]], policy="cap")], ["therapy"])
    assert "lexical detector" in c["non_assistant_method"] and "claims_non_assistant" in c["non_assistant_method"]
    res = ROOT / "eval" / "results"
    assert "lexical detector" in json.loads((res / "jailbreak.json").read_text())["methods"]["non_assistant"]
    assert "lexical detector" in json.loads((res / "capping_drift.json").read_text())["non_assistant_method"]
    md = (res / "summary.md").read_text()
    assert "**lexical detector** `calibrate.judge.claims_non_assistant`" in md
    assert "claims non-assistant identity (lexical detector)" in md


@pytest.mark.slow
@pytest.mark.smollm
def test_traffic_driver_end_to_end(tmp_path):
    """``python -m eval.traffic`` drives conversations through a real ``axiswatch serve`` and reads them back."""
    out = tmp_path / "traffic.json"
    proc = subprocess.run([sys.executable, "-m", "eval.traffic", "--out", str(out), "--limit", "3", "--max-tokens", "8"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sessions = json.loads(out.read_text())
    assert len(sessions) == 3 and all(s["stored"] for s in sessions)
    for s in sessions:
        assert len(s["turns"]) == 6 and all(len(t["tokens"]) == len(t["scores"]) > 0 for t in s["turns"])
        assert s["policy"] == "observe" and not s["alerts"]


def test_reaudit_change_compares_both_twins_per_session():
    """Only turns capping acted in count; both twins' re-audited texts are compared, averaged within a
    session first, so a session with many capped turns weighs as much as one with a single turn."""
    from eval.aggregate import _reaudit_change

    def turn(scores, flags=()):
        return {"reaudit_scores": scores, "cap_flags": list(flags)}

    a = ({"turns": [turn([1.0]), turn([0.0]), turn([0.0])]},
         {"turns": [turn([9.0]), turn([4.0], [True]), turn([2.0], [False, True])]})  # +4, +2 -> +3
    b = ({"turns": [turn([5.0])]}, {"turns": [turn([4.0], [True])]})  # -1
    r = _reaudit_change([a, b])
    assert (r["n_sessions"], r["n_turns"]) == (2, 3)
    assert r["change"]["mean"] == pytest.approx(1.0)  # (3 + -1) / 2, not the turn average (4+2-1)/3
    assert r["uncapped_twin_mean"] == pytest.approx(5 / 3) and r["capped_mean"] == pytest.approx(10 / 3)
    assert _reaudit_change([({"turns": [turn([1.0])]}, {"turns": [turn([2.0])]})])["change"] is None
