"""The alerting study (eval/alert_study.py): rules replayed over served traffic, pure; and the committed study
reproduces from the committed inputs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from eval import alert_study as A  # noqa: E402
from monitor.drift import DriftConfig, Thresholds  # noqa: E402

TH = Thresholds(-10.0, -20.0, -30.0)
CFG = DriftConfig(alpha=1.0, min_tokens=0, reference_tokens=1)


def sess(sid: str, group: str, turns: list[list[float]]) -> dict:
    return {"id": sid, "group": group, "category": "c", "turns": [{"scores": t} for t in turns]}


def test_first_alerts_counts_session_tokens_and_levels():
    s = sess("d1", "drift", [[20.0, 20.0], [15.0, 5.0, -15.0]])  # reference 20; drift -5, -15, -35
    first = A.first_alerts(s, TH, CFG)
    assert first == {"watch": 3, "warning": 4, "critical": 4}  # -35 jumps from watch to critical: warning too


def test_evaluate_rates_and_turn_mean_comparison():
    sessions = [sess("b1", "benign", [[-40.0], [-42.0]]),  # a poem session: low, but no fall
                sess("b2", "benign", [[10.0]]),  # one reply: never compared
                sess("d1", "drift", [[20.0], [20.0, -5.0, 15.0], [-20.0]]),
                sess("d2", "drift", [[20.0], [19.0]])]
    out = A.evaluate(sessions, TH, CFG)
    assert out["warning"]["benign"]["rate"] == 0.0 and out["warning"]["drifting"]["k"] == 1
    # the running score is at warning on token 2 (drift -25); the turn means only at the end of turn 3 (token 4):
    # turn 2 averages 10 (drift -10), turn 3 is -20 (drift -40)
    tm = out["turn_means_at_warning"]
    assert tm["caught_by_both"] == 1 and tm["running_earlier"] == 1 and tm["median_tokens_earlier"] == 2


def test_split_is_fixed_by_id_within_each_group():
    sessions = [sess(f"b{i}", "benign", [[0.0]]) for i in range(5)] + [sess(f"d{i}", "drift", [[0.0]]) for i in range(4)]
    dev, rep = A.split(list(reversed(sessions)))
    assert [s["id"] for s in dev] == ["b0", "b2", "b4", "d0", "d2"] and [s["id"] for s in rep] == ["b1", "b3", "d1", "d3"]


def test_selection_prefers_the_least_smoothing_unless_a_smoother_rule_clearly_wins():
    traffic = [sess(f"b{i}", "benign", [[0.0], [0.0]]) for i in range(4)]
    traffic += [sess(f"d{i}", "drift", [[20.0], [20.0 - 10 * i]]) for i in range(8)]
    calib = [[[0.0], [-float(k) / 10]] for k in range(40)]
    rules = (A.Rule("fast", DriftConfig(alpha=1.0, min_tokens=0, reference_tokens=1)),
             A.Rule("same", DriftConfig(alpha=1.0, min_tokens=0, reference_tokens=1)))
    res = A.study(traffic, calib, None, rules)
    assert res["chosen"] == "fast"  # a tie goes to the first rule

    def row(name, benign, caught):
        return {"rule": name, "dev": {"warning": {"benign": {"rate": benign}, "drifting": {"k": caught}}}}

    rows = [row("a", 0.0, 5), row("b", 0.01, 6), row("c", 0.5, 20), row("d", 0.02, 7), row("e", 0.0, 8)]
    assert A.select(rows)[0]["rule"] == "d"  # b is one more (noise), c breaks the budget, e is one more than d
    assert A.select(rows[:2])[0]["rule"] == "a"
    chosen, met = A.select([row("x", 0.3, 9), row("y", 0.1, 1)])
    assert chosen["rule"] == "y" and not met  # none within budget: the fewest false alerts


RELEASE2 = ROOT / "eval" / "results" / "release2"


@pytest.mark.skipif(not (RELEASE2 / "alerting_study.json").exists(), reason="no committed study")
def test_release_2s_study_reproduces_from_its_committed_inputs():
    """The second release's alert study (the traffic it recorded, its axis' calibration scores and gap, in
    eval/results/release2) reruns to the same numbers, and its chosen rule is the thresholds that axis shipped."""
    traffic = json.loads((ROOT / "eval" / "results" / "traffic_observe.json").read_text())
    cal = A.load_calibration(RELEASE2 / "alert_calibration_scores.json")
    axis = json.loads((RELEASE2 / "axis.json").read_text())
    stats = axis["calibration"]["layers"][str(axis["monitor_layer"])]
    gap = stats["default_mean"] - stats["roles_score3"]["p50"]

    got = A.study(traffic, cal, gap)
    assert json.loads(json.dumps(got)) == json.loads((RELEASE2 / "alerting_study.json").read_text())
    shipped = axis["calibration"]["alerting"]["thresholds"]
    chosen = next(r for r in got["rows"] if r["rule"] == got["chosen"])
    assert chosen["thresholds"] == pytest.approx(shipped)  # the study's chosen rule is what serve ran
    assert chosen["report"]["warning"]["benign"]["rate"] <= A.BUDGET
