"""The detection study's wiring (eval/detection_study.py) on synthetic scores: which rule catches what."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from eval import detection_study as D


def _session(sid, group, turns, category="x", judge=None):
    s = {"id": sid, "group": group, "category": category, "turns": [{"scores": t} for t in turns]}
    if judge is not None:
        s["judge"] = judge
    return s


def _traffic():
    rnd = random.Random(0)
    noisy = lambda mu, n=40, sd=1.0: [mu + rnd.gauss(0, sd) for _ in range(n)]  # noqa: E731
    # the calibration conversations vary more than the benign traffic: this test is about the wiring
    calibration = [[noisy(20, sd=3.0), noisy(20, sd=3.0), noisy(20, sd=3.0)] for _ in range(60)]
    sessions = [_session(f"b{i:02d}", "benign", [noisy(20), noisy(20)], "poem" if i % 4 < 2 else "code")
                for i in range(40)]
    sessions += [_session(f"d{i:02d}", "drift", [noisy(20), noisy(0), noisy(-40)], "therapy") for i in range(10)]
    sessions += [_session(f"p{i:02d}", "persona", [noisy(-40)], "user_single", judge=3) for i in range(10)]
    sessions += [_session(f"q{i:02d}", "persona", [noisy(20)], "user_single", judge=1) for i in range(4)]
    return sessions, calibration


def test_the_level_detector_catches_a_persona_in_its_first_reply_and_the_drift_cannot():
    sessions, calibration = _traffic()
    res = D.study(sessions, calibration, gap=30.0, in_role_median=-30.0)
    rows = {r["rule"]: r for r in res["rows"]}
    alone = rows["drift alone (alpha 0.1, warning at 1%)"]["report"]
    both = rows["drift + level (alpha 0.02), warning at 1% each"]["report"]
    assert alone["persona_in_role"]["k"] == 0 and alone["drift"]["rate"] == 1.0
    # the running score catches every drifting conversation within its falling turn, the turn means only at its end
    tm = alone["drift_turn_means_at_warning"]
    assert tm["caught_by_both"] == tm["running_earlier"] == 5 and tm["median_tokens_earlier"] > 0
    assert both["persona_in_role"]["rate"] == 1.0 and both["persona_in_role_by_end_of_first_reply"]["rate"] == 1.0
    assert both["drift"]["rate"] == 1.0 and both["benign"]["k"] == 0 and both["detectors_that_fired"]["level"] >= 5
    assert both["persona_all"]["n"] == 7 and both["persona_in_role"]["n"] == 5  # the report half of 14 sessions
    assert res["chosen"].startswith("drift + level") and res["counts"] == {"benign": 40, "drift": 10, "persona": 14}
    assert set(res["frontier_report_half"]) == {"1%", "2%", "5%"}
    assert set(both["benign_by_category"]) == {"poem", "code"}
    cusum = rows["cusum alone (slack 10, warning at 2%)"]["report"]
    assert cusum["drift"]["rate"] == 1.0 and cusum["persona_in_role"]["k"] == 0 and cusum["benign"]["k"] == 0


def test_the_hand_labels_check_the_judge_and_the_catch(tmp_path):
    sessions, calibration = _traffic()
    # the hand labels agree with the judge but on two sessions: one the judge put in role, one it did not
    labels = {s["id"]: s["judge"] for s in sessions if s["group"] == "persona"}
    labels["p00"], labels["q00"] = 2, 3
    path = tmp_path / "labels.jsonl"
    path.write_text("".join(f'{{"id": "{k}", "turn": 0, "label": {v}}}\n' for k, v in labels.items()))
    assert D.load_hand_labels(path) == labels
    h = D.study(sessions, calibration, gap=30.0, in_role_median=-30.0, hand_labels=labels)["hand_labels_all_halves"]
    assert h["n"] == 14 and h["agree"]["k"] == 12 and h["judge_in_role_hand_not"] == 1
    assert h["hand_in_role_judge_not"] == 1 and h["hand_in_role"] == 10 and 0 < h["kappa_adopted_vs_not"] < 1
    # q00 reads like the Assistant (scores near the benign ones): the rule misses the one the judge missed
    assert h["caught_among_hand_in_role"]["k"] == 9
    for bad, why in (('{"id": "p01", "turn": 0, "label": 4}\n', "bad.jsonl:1"),
                     ('{"id": "p01", "turn": 0, "label": true}\n', "bad.jsonl:1"),
                     ('{"id": "p01", "label": 3}\n{"id": "p01", "label": 2}\n', "labelled twice")):
        (tmp_path / "bad.jsonl").write_text(bad)
        with pytest.raises(ValueError, match=why):
            D.load_hand_labels(tmp_path / "bad.jsonl")


ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "eval" / "results"


@pytest.mark.skipif(not (RESULTS / "detection_study.json").exists(), reason="no committed study")
def test_the_committed_study_reproduces_and_its_chosen_rule_is_what_ships():
    """The detection study reruns from its committed inputs (the sessions as it read them, the calibration
    scores, the hand labels) to the committed numbers, and the rule it chose on the dev half is the one the
    shipped axis runs: its drift and level thresholds and the level's smoothing."""
    from calibrate.alerts import axis_gap, in_role_median
    from eval.alert_study import load_calibration
    from monitor.drift import thresholds_from_calibration
    from monitor.settings import shipped_dir
    from probes.artifacts import load_axis

    art = load_axis(shipped_dir(), roles=False)
    sessions = json.loads((RESULTS / "detection" / "sessions.json").read_text())
    hand = D.load_hand_labels(ROOT / "eval" / "data" / "persona_reply_labels.jsonl")
    got = D.study(sessions, load_calibration(RESULTS / "alert_calibration_scores.json"), axis_gap(art),
                  in_role_median(art), hand)
    assert json.loads(json.dumps(got)) == json.loads((RESULTS / "detection_study.json").read_text())
    chosen = next(r for r in got["rows"] if r["rule"] == got["chosen"])
    drift, knobs = thresholds_from_calibration(art.calibration)
    assert chosen["drift_thresholds"] == pytest.approx(drift.as_dict())
    assert chosen["level_thresholds"] == pytest.approx(dict(zip(("watch", "warning", "critical"),
                                                                knobs["level_thresholds"])))
    assert chosen["config"]["level_alpha"] == knobs["level_alpha"]
