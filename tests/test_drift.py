"""Drift tracking and policy (monitor/drift.py): exact, hand-computed behaviour."""

from __future__ import annotations

import math

import pytest

from calibrate.thresholds import drift_trace, fit_thresholds, lowest_drift, quantile
from monitor.drift import (
    DriftConfig,
    DriftTracker,
    Thresholds,
    parse_policy,
    snapshot_reading,
    thresholds_from_calibration,
)
from probes.errors import InputError

T = Thresholds(watch=0.0, warning=-10.0, critical=-20.0)


def tracker(policy: str = "flag", **kw) -> DriftTracker:
    base = dict(alpha=1.0, hysteresis=0.0, min_tokens=0, cooldown_tokens=0, baseline="absolute", recover_tokens=0)
    base.update(kw)
    return DriftTracker(T, DriftConfig(**base), policy=policy)


def kinds(events, kind):
    return [e for e in events if e.kind == kind]


# --- EWMA -------------------------------------------------------------------------------------------------


def test_ewma_initialises_to_first_score_then_blends():
    tr = tracker(alpha=0.5)
    assert tr.running is None and tr.state == "ok" and tr.n_tokens == 0
    got = []
    for s in (8.0, 4.0, 0.0, 2.0):
        tr.update([s], turn=0)
        got.append(tr.running)
    assert got == [8.0, 6.0, 3.0, 2.5]  # 8; .5*4+.5*8; .5*0+.5*6; .5*2+.5*3
    assert tr.n_tokens == 4


def test_ewma_default_alpha_is_0_1():
    tr = DriftTracker(T, DriftConfig(), policy="observe")
    assert DriftConfig().alpha == 0.1
    tr.update([10.0, 0.0, 0.0], turn=0)
    assert tr.running == pytest.approx(8.1)  # 10 -> 9 -> 8.1
    assert tr.state == "ok"


def test_running_equal_to_threshold_is_not_below_it():
    tr = tracker()
    assert tr.update([0.0], turn=0) == [] and tr.state == "ok"  # ok while running >= watch
    ev = tr.update([-10.0], turn=0)  # -10 is below watch but not below warning
    assert [(e.kind, e.new_state) for e in ev] == [("state", "watch"), ("alert", "watch")]


# --- states -----------------------------------------------------------------------------------------------


def test_escalation_order_on_falling_sequence():
    tr = tracker(policy="observe")
    ev = tr.update([5.0, -5.0, -15.0, -25.0], turn=3)
    assert [(e.token_index, e.old_state, e.new_state, e.threshold, e.running) for e in ev] == [
        (1, "ok", "watch", 0.0, -5.0),
        (2, "watch", "warning", -10.0, -15.0),
        (3, "warning", "critical", -20.0, -25.0),
    ]
    assert all(e.kind == "state" and e.turn == 3 and e.level == e.new_state for e in ev)
    assert tr.state == "critical"


def test_ewma_smoothing_delays_escalation():
    tr = tracker(policy="observe", alpha=0.5)
    ev = tr.update([10.0, -10.0, -30.0, -50.0], turn=0)  # running 10, 0, -15, -32.5
    assert [(e.token_index, e.new_state, e.running) for e in ev] == [(2, "warning", -15.0), (3, "critical", -32.5)]


def oscillating():
    return [1.0, -1.0] * 4 + [2.5, -1.0]


def test_hysteresis_prevents_flapping():
    plain = tracker(policy="observe").update(oscillating(), turn=0)
    assert len(plain) == 9  # every token after the first crosses watch=0
    held = tracker(policy="observe", hysteresis=2.0).update(oscillating(), turn=0)
    # watch at -1; 1 < 0 + 2 keeps watch; 2.5 >= 2 returns to ok; -1 falls again
    assert [(e.token_index, e.new_state, e.threshold) for e in held] == [
        (1, "watch", 0.0), (8, "ok", 2.0), (9, "watch", 0.0)]


def test_hysteresis_multi_level_deescalation():
    tr = tracker(policy="observe", hysteresis=2.0)
    tr.update([-25.0], turn=0)
    assert tr.state == "critical"
    ev = tr.update([-19.0, -5.0, -1.0, 2.0], turn=0)
    # -19: above critical but not by 2; -5 >= -18 and >= -8 -> watch; -1 < 2 stays; 2 -> ok
    assert [(e.token_index, e.old_state, e.new_state, e.threshold) for e in ev] == [
        (2, "critical", "watch", -8.0), (4, "watch", "ok", 2.0)]


# --- alerts: min_tokens, cooldown -----------------------------------------------------------------------


def test_min_tokens_defers_alert_but_not_state_changes():
    tr = tracker(min_tokens=3)
    ev = tr.update([-5.0, -5.0, -5.0, -5.0], turn=0)
    assert [(e.kind, e.token_index, e.old_state, e.new_state) for e in ev] == [
        ("state", 0, "ok", "watch"), ("alert", 2, "watch", "watch")]


def test_min_tokens_alerts_current_level_once():
    ev = tracker(min_tokens=3).update([-5.0, -15.0, -15.0], turn=0)
    assert [(e.kind, e.token_index, e.level) for e in ev] == [
        ("state", 0, "watch"), ("state", 1, "warning"), ("alert", 2, "warning")]


def test_min_tokens_drops_alert_when_back_to_ok():
    ev = tracker(min_tokens=3).update([-5.0, 5.0, 5.0, 5.0], turn=0)
    assert [e.kind for e in ev] == ["state", "state"]


def test_cooldown_suppresses_same_level_but_not_escalation():
    tr = tracker(cooldown_tokens=3)
    ev = tr.update([-5.0, 5.0, -5.0, 5.0, -5.0, -15.0, 5.0, -5.0, -15.0, -25.0], turn=0)
    # n=1 watch alert; n=3 watch within 3 tokens -> dropped; n=5 watch (4 tokens later) -> alert;
    # n=6 warning (higher) -> immediate; n=8 watch (lower) and n=9 warning (same) within 3 -> dropped;
    # n=10 critical (higher) -> immediate
    assert [(e.token_index, e.level) for e in kinds(ev, "alert")] == [
        (0, "watch"), (4, "watch"), (5, "warning"), (9, "critical")]
    assert len(kinds(ev, "state")) == 10


def test_immediate_escalation_inside_long_cooldown():
    ev = tracker(cooldown_tokens=64).update([-5.0, -15.0, -25.0], turn=0)
    assert [(e.token_index, e.level, e.threshold) for e in kinds(ev, "alert")] == [
        (0, "watch", 0.0), (1, "warning", -10.0), (2, "critical", -20.0)]


# --- policies ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("policy,n_alerts,n_caps", [("observe", 0, 0), ("flag", 3, 0), ("cap", 3, 1)])
def test_policies(policy, n_alerts, n_caps):
    ev = tracker(policy).update([-5.0, -15.0, -25.0], turn=0)
    assert len(kinds(ev, "state")) == 3
    assert len(kinds(ev, "alert")) == n_alerts
    assert len(kinds(ev, "cap")) == n_caps


def test_cap_once_at_first_warning_alert_and_stays_on():
    tr = tracker("cap")
    ev = tr.update([-5.0], turn=0)
    assert [e.kind for e in ev] == ["state", "alert"] and not tr.capping  # watch does not cap
    ev = tr.update([-15.0], turn=0)
    assert [(e.kind, e.token_index, e.level) for e in ev] == [
        ("state", 1, "warning"), ("alert", 1, "warning"), ("cap", 1, "warning")]
    assert ev[2].threshold == -10.0 and ev[2].running == -15.0 and tr.capping
    tr.end_turn()
    ev = tr.update([5.0, -25.0, 5.0, -15.0], turn=2)
    assert kinds(ev, "cap") == [] and len(kinds(ev, "alert")) == 2
    assert tr.capping and tr.state == "warning"
    tr.end_turn()
    tr.update([5.0], turn=4)
    assert tr.capping and tr.state == "ok"


def test_observe_never_caps_and_flag_never_caps():
    for policy in ("observe", "flag"):
        tr = tracker(policy)
        tr.update([-30.0], turn=0)
        assert not tr.capping


# --- turns ------------------------------------------------------------------------------------------------


def test_state_and_running_carry_across_turns():
    tr = tracker(alpha=0.5)
    tr.update([10.0], turn=0)
    tr.update([-10.0], turn=0)  # a second batch of the same turn
    s0 = tr.end_turn()
    assert (s0.turn, s0.mean, s0.n_tokens, s0.state, s0.running) == (0, 0.0, 2, "ok", 0.0)
    ev = tr.update([-20.0], turn=2)  # running 0.5*-20 + 0.5*0 = -10 -> watch
    assert [(e.kind, e.turn, e.token_index, e.running) for e in ev] == [
        ("state", 2, 0, -10.0), ("alert", 2, 0, -10.0)]
    ev = tr.update([-30.0], turn=2)  # 0.5*-30 + 0.5*-10 = -20: not below critical
    assert [(e.token_index, e.new_state) for e in kinds(ev, "state")] == [(1, "warning")]
    s2 = tr.end_turn()
    assert (s2.turn, s2.mean, s2.n_tokens, s2.state, s2.running) == (2, -25.0, 2, "warning", -20.0)
    assert tr.turn_means == [0.0, -25.0] and tr.n_tokens == 4
    assert tr.update([], turn=4) == [] and tr.end_turn().mean is None
    assert tr.turn_means == [0.0, -25.0]


def test_turn_misuse_and_bad_scores_raise():
    tr = tracker()
    with pytest.raises(InputError, match="no turn in progress"):
        tr.end_turn()
    tr.update([1.0], turn=1)
    with pytest.raises(InputError, match="still open"):
        tr.update([1.0], turn=2)
    tr.end_turn()
    with pytest.raises(InputError, match="must increase"):
        tr.update([1.0], turn=1)
    with pytest.raises(InputError, match="not finite"):
        tr.update([1.0, math.nan], turn=3)
    assert tr.n_tokens == 2 and tr.running == 1.0  # the finite score before it was kept


# --- thresholds -------------------------------------------------------------------------------------------


def test_thresholds_from_calibration_reads_the_alert_calibration():
    cal = {"alerting": {"thresholds": {"watch": -5.0, "warning": -10.0, "critical": -30.0}, "alpha": 0.05,
                        "baseline": "session", "reference_tokens": 8, "min_tokens": 4, "other": 1}}
    t, knobs = thresholds_from_calibration(cal)
    assert t == Thresholds(-5.0, -10.0, -30.0)
    assert knobs == {"alpha": 0.05, "baseline": "session", "reference_tokens": 8, "min_tokens": 4}
    with pytest.raises(InputError, match="calibrate-alerts"):
        thresholds_from_calibration({"layers": {}})
    with pytest.raises(InputError, match="malformed"):
        thresholds_from_calibration({"alerting": {"thresholds": {"watch": "x"}}})


def test_shipped_axis_has_ordered_alert_thresholds():
    from monitor.settings import shipped_dir
    from probes.artifacts import load_axis

    art = load_axis(shipped_dir(), roles=False)
    t, knobs = thresholds_from_calibration(art.calibration)
    assert 0 > t.watch > t.warning > t.critical
    assert knobs["baseline"] == "session"
    al = art.calibration["alerting"]
    assert al["n_measured"] >= 200 and not al["quick"]
    assert t.critical <= -al["axis_gap"]  # at least as far as the Assistant is from a typical in-role answer


# --- the session baseline (the default) ------------------------------------------------------------------


def session(policy: str = "flag", **kw) -> DriftTracker:
    base = dict(alpha=1.0, hysteresis=0.0, min_tokens=0, cooldown_tokens=0, reference_tokens=2, recover_tokens=0)
    base.update(kw)
    return DriftTracker(T, DriftConfig(**base), policy=policy)


def test_the_opening_reply_is_the_reference_and_never_alerts():
    tr = session()
    assert tr.update([-100.0, -120.0, -110.0], turn=1) == []  # a poem far below any absolute threshold
    assert tr.state == "ok" and tr.reference is None and tr.drift is None
    s = tr.end_turn()
    assert s.reference == tr.reference == pytest.approx(-110.0) and s.drift == pytest.approx(0.0)
    assert tr.update([-108.0], turn=3) == [] and tr.drift == pytest.approx(2.0)  # the same voice: no drift


def test_drift_is_running_minus_reference_and_events_are_absolute():
    tr = session()
    tr.update([20.0, 20.0], turn=1)
    tr.end_turn()
    ev = tr.update([5.0], turn=3)  # drift -15: below watch (0) and warning (-10), not critical (-20)
    assert [(e.kind, e.new_state) for e in ev] == [("state", "warning"), ("alert", "warning")]
    a = ev[1]
    assert a.drift == pytest.approx(-15.0) and a.running == pytest.approx(5.0)
    assert a.threshold == pytest.approx(20.0 - 10.0)  # reference + relative threshold, like the running score
    assert a.running < a.threshold


def test_a_short_opening_extends_the_reference_into_the_next_reply():
    tr = session(reference_tokens=3)
    tr.update([10.0], turn=1)
    tr.end_turn()
    assert tr.reference is None
    assert tr.update([20.0, 30.0], turn=3) == []  # still the opening
    tr.end_turn()
    assert tr.reference == pytest.approx(20.0)
    assert [e.new_state for e in tr.update([-5.0], turn=5) if e.kind == "state"] == ["critical"]


def test_session_baseline_alerts_within_a_later_turn_not_at_its_end():
    tr = session(alpha=0.5)
    tr.update([10.0, 10.0], turn=1)
    tr.end_turn()
    ev = tr.update([10.0, -10.0, -30.0, 10.0], turn=3)
    alerts = [e for e in ev if e.kind == "alert"]
    assert alerts and alerts[0].token_index == 1 and alerts[0].level == "watch"  # running 0 -> drift -10 < 0


def test_baseline_validation():
    with pytest.raises(InputError, match="baseline"):
        DriftConfig(baseline="relative")
    with pytest.raises(InputError, match="reference_tokens"):
        DriftConfig(reference_tokens=-1)
    tr = DriftTracker(T, DriftConfig(baseline="absolute"))
    assert tr.reference == 0.0


@pytest.mark.parametrize("vals", [(1.0, 2.0, 0.0), (0.0, 0.0, -1.0), (0.0, -1.0, -1.0), (math.nan, -1.0, -2.0)])
def test_invalid_thresholds(vals):
    with pytest.raises(InputError, match="watch="):
        Thresholds(*vals)


def test_policy_and_config_validation():
    assert parse_policy(" CAP ") == "cap" and parse_policy("observe") == "observe"
    with pytest.raises(InputError, match="unknown drift policy 'block'"):
        parse_policy("block")
    with pytest.raises(InputError, match="unknown drift policy"):
        DriftTracker(T, policy="alert")
    for bad in (dict(alpha=0.0), dict(alpha=1.5), dict(hysteresis=-1.0), dict(min_tokens=-1), dict(cooldown_tokens=2.5)):
        with pytest.raises(InputError):
            DriftConfig(**bad)


# --- calibration of the thresholds (calibrate/thresholds.py) -----------------------------------------


def test_drift_trace_replays_the_tracker():
    cfg = DriftConfig(alpha=0.5, reference_tokens=2, min_tokens=0)
    tr = drift_trace([[10.0, 10.0], [0.0, 0.0]], cfg)
    assert tr[:2] == [None, None]  # the opening
    assert tr[2:] == pytest.approx([-5.0, -7.5])  # running 5, 2.5 against the reference 10
    assert lowest_drift([[10.0, 10.0], [0.0, 0.0]], cfg) == pytest.approx(-7.5)
    assert lowest_drift([[10.0, 10.0]], cfg) is None  # one reply: nothing to measure drift on


def test_fit_thresholds_quantiles_and_critical():
    cfg = DriftConfig(alpha=1.0, reference_tokens=1, min_tokens=0)
    convs = [[[0.0], [-float(k)]] for k in range(100)]  # lowest drifts 0, -1, ..., -99
    th, stats = fit_thresholds(convs, cfg, axis_gap=50.0)
    assert th.watch == pytest.approx(quantile([-float(k) for k in range(100)], 0.10))
    assert th.warning == pytest.approx(quantile([-float(k) for k in range(100)], 0.01))
    assert th.critical == pytest.approx(-99.0)  # below every benign conversation (and the gap of 50)
    th2, _ = fit_thresholds(convs, cfg, axis_gap=200.0)
    assert th2.critical == pytest.approx(-200.0)
    assert stats["n_measured"] == 100 and stats["budgets"] == {"watch": 0.10, "warning": 0.01}
    with pytest.raises(InputError, match="at least 20"):
        fit_thresholds(convs[:5], cfg)


def test_quantile_is_numpys_linear_rule():
    assert quantile([3.0, 1.0, 2.0, 4.0], 0.5) == 2.5 and quantile([1.0], 0.3) == 1.0


# --- recovery, resolution, snapshots ------------------------------------------------------------------------

def test_default_hysteresis_is_a_quarter_of_the_alerting_band():
    tr = DriftTracker(T, DriftConfig(), "flag")
    assert tr.config.hysteresis == pytest.approx(5.0)  # 0.25 * (0 - -20)
    assert DriftTracker(T, DriftConfig(hysteresis=0.0)).config.hysteresis == 0.0  # an explicit 0 stays 0


def test_a_state_drops_only_after_recover_tokens_past_the_bar():
    tr = tracker(hysteresis=2.0, recover_tokens=4)
    ev = tr.update([-25.0], turn=0)
    assert tr.state == "critical" and len(kinds(ev, "alert")) == 1
    tr.update([5.0, 5.0, 5.0], turn=0)  # calm, but not for long enough
    assert tr.state == "critical"
    tr.update([-25.0], turn=0)  # a relapse restarts the count
    tr.update([5.0, 5.0, 5.0], turn=0)
    assert tr.state == "critical"
    ev = tr.update([5.0], turn=0)  # the fourth calm token in a row: straight to ok
    assert tr.state == "ok" and [e.new_state for e in kinds(ev, "state")] == ["ok"]
    assert [(e.level, e.old_state) for e in kinds(ev, "resolve")] == [("ok", "critical")]


def test_alerts_resolve_only_below_their_level():
    tr = tracker(hysteresis=0.0, recover_tokens=0)
    tr.update([-15.0], turn=0)  # warning, alerted
    assert tr.open_alert_level == "warning"
    ev = tr.update([-5.0], turn=0)  # watch: below the alerted level, so it resolves
    assert [e.level for e in kinds(ev, "resolve")] == ["watch"] and tr.open_alert_level == "ok"
    ev = tr.update([5.0], turn=0)  # ok: nothing open any more, no second resolve
    assert not kinds(ev, "resolve")
    observe = tracker(policy="observe")
    observe.update([-25.0, 5.0], turn=0)
    assert observe.state == "ok" and observe.open_alert_level == "ok"  # observe raises no alert to resolve


def test_a_snapshot_continues_exactly():
    import json

    scores = [[3.0, -4.0, -12.0, -30.0, 2.0], [-8.0, 1.0, 1.0, -22.0], [-18.0, 4.0, 4.0, 4.0, 4.0, -11.0]]
    cfg = dict(hysteresis=1.0, recover_tokens=2, min_tokens=3, cooldown_tokens=4)
    whole, events_whole = tracker(**cfg), []
    for t, sc in enumerate(scores):
        events_whole += whole.update(sc, turn=t)
        whole.end_turn()
    events_split, snap = [], None
    for t, sc in enumerate(scores):
        tr = tracker(**cfg)  # a new process for every turn
        if snap is not None:
            tr.restore(json.loads(json.dumps(snap)))  # through JSON, as stored
        events_split += tr.update(sc, turn=t)
        tr.end_turn()
        snap = tr.snapshot()
    assert [vars(e) for e in events_split] == [vars(e) for e in events_whole]
    assert tr.snapshot() == whole.snapshot()
    with pytest.raises(InputError, match="not a drift tracker snapshot"):
        tr.restore({"v": 1})
    tr.update([1.0], turn=9)
    with pytest.raises(InputError, match="still open"):
        tr.snapshot()


# ---------------------------------------------------------------- one replay, one tracked score
def test_the_tracked_score_is_the_pre_cap_score_wherever_there_is_one():
    from monitor.replay import scored_turns, tracked_score, tracked_scores

    assert tracked_score(5.0, None) == 5.0 and tracked_score(5.0, -30.0) == -30.0
    assert tracked_scores([1.0, 2.0, 3.0], None) == [1.0, 2.0, 3.0]
    assert tracked_scores([1.0, 2.0, 3.0], [None, -9.0]) == [1.0, -9.0, 3.0]  # a live tail's partial pre-cap list
    stored = [{"turn": 0, "role": "user", "scores": []},
              {"turn": 1, "scores": [1.0, 2.0], "pre_cap_scores": None},
              {"turn": 3, "scores": [5.0, 5.0], "pre_cap_scores": [5.0, -40.0]}]
    assert scored_turns(stored) == [(1, [1.0, 2.0]), (3, [5.0, -40.0])]


def test_replay_per_token_gives_the_engines_events_and_the_state_after_each_token():
    from monitor.replay import replay, token_states

    th, cfg = Thresholds(-5.0, -10.0, -20.0), DriftConfig(min_tokens=4, reference_tokens=4, recover_tokens=2)
    turns = [(1, [10.0] * 6), (3, [-30.0] * 12), (5, [10.0] * 40)]
    whole = list(replay(DriftTracker(th, cfg, "flag"), turns))
    token = list(replay(DriftTracker(th, cfg, "flag"), turns, per_token=True))
    assert [r.events for r in whole] == [r.events for r in token] and any(r.events for r in whole)
    assert [r.summary for r in whole] == [r.summary for r in token]
    live = DriftTracker(th, cfg, "flag")  # the engine feeds one token at a time
    for n, scores in turns:
        live.update([], n)
        for s in scores:
            live.update([s], n)
        live.end_turn()
    assert token[-1].tokens[-1].state == live.state and token[-1].tokens[-1].running == pytest.approx(live.running)
    assert [len(r.tokens) for r in token] == [6, 12, 40] and not whole[0].tokens
    states = token_states([{"turn": 1, "scores": [10.0] * 6}, {"turn": 2, "role": "user", "scores": []},
                           {"turn": 3, "scores": [-30.0] * 12}], th, cfg)
    assert [len(s) for s in states] == [6, 0, 12] and states[2][-1].state == "critical"
    assert states[0][0].drift is None and states[2][0].drift is not None  # no drift before the reference


# --- several detectors: the session drift and the absolute level ------------------------------------------

LEVEL = (5.0, -5.0, -15.0)  # raw projection units


def both(policy: str = "flag", **kw) -> DriftTracker:
    base = dict(alpha=1.0, hysteresis=0.0, min_tokens=0, cooldown_tokens=0, reference_tokens=2, recover_tokens=0,
                level_thresholds=LEVEL, level_alpha=1.0)
    base.update(kw)
    return DriftTracker(T, DriftConfig(**base), policy=policy)


def test_the_level_detector_fires_in_the_first_reply_which_the_drift_cannot():
    tr = both()
    assert [d.name for d in tr.detectors] == ["drift", "level"]
    ev = tr.update([10.0, -6.0], turn=1)  # a persona adopted in the opening reply: no reference yet
    alert = kinds(ev, "alert")
    assert [(a.level, a.detector) for a in alert] == [("warning", "level")]
    assert alert[0].threshold == -5.0 and alert[0].drift == -6.0 and alert[0].running == -6.0
    assert tr.detector == "level" and tr.reference is None and tr.statistics == {"drift": None, "level": -6.0}
    s = tr.end_turn()
    assert s.detector == "level" and s.statistics == {"drift": 0.0 + (-6.0) - 2.0, "level": -6.0}
    drift_only = DriftTracker(T, DriftConfig(alpha=1.0, hysteresis=0.0, min_tokens=0, reference_tokens=2))
    assert drift_only.update([10.0, -6.0], turn=1) == [] and drift_only.state == "ok"


def test_the_state_is_the_highest_level_and_drops_only_when_every_detector_clears():
    tr = both()
    tr.update([40.0, 40.0], turn=1)
    tr.end_turn()  # reference 40
    ev = tr.update([25.0], turn=3)  # drift -15 (warning); level 25 (ok)
    assert tr.state == "warning" and kinds(ev, "alert")[0].detector == "drift"
    ev = tr.update([-20.0], turn=3)  # drift -60 (critical), level -20 (critical): the first detector leads a tie
    assert tr.state == "critical" and kinds(ev, "alert")[0].detector == "drift"
    tr.update([45.0], turn=3)  # drift +5: clears; level 45: clears
    assert tr.state == "ok"
    tr.update([-10.0], turn=3)  # drift -50 critical
    tr.update([38.0], turn=3)  # drift -2 (watch), level 38 (ok): drops as far as the drift allows
    assert tr.state == "watch" and tr.detector == "drift"


def test_snapshots_keep_every_detector_and_a_first_release_snapshot_restores():
    tr = both()
    tr.update([40.0, 40.0], turn=1)
    tr.end_turn()
    tr.update([-8.0], turn=3)
    tr.end_turn()
    snap = tr.snapshot()
    assert snap["v"] == 2 and set(snap["detectors"]) == {"drift", "level"}
    again = both()
    again.restore(snap)
    assert again.snapshot() == snap and again.statistics == tr.statistics and again.state == tr.state
    # a snapshot stored by the first tracker (one statistic, v1) continues in the primary detector
    old = {"v": 1, "level": 0, "running": 30.0, "n": 20, "pending": False, "alert_level": 0, "alert_n": -1,
           "open_bits": 0, "calm": 0, "capping": False, "last_turn": 1, "turn_means": [30.0], "reference": 30.0,
           "ref_n": 20, "ref_sum": 600.0}
    first = DriftTracker(T, DriftConfig(alpha=1.0, hysteresis=0.0, min_tokens=0, cooldown_tokens=0))
    first.restore(old)
    assert first.reference == 30.0 and first.running == 30.0 and first.drift == 0.0 and first.turn_means == [30.0]
    ev = first.update([19.0], turn=3)
    assert first.drift == -11.0 and [a.level for a in kinds(ev, "alert")] == ["warning"]


def test_the_level_settings_survive_as_dict_and_come_from_the_calibration():
    cfg = DriftConfig(level_thresholds=LEVEL, level_alpha=0.2)
    assert DriftConfig(**cfg.as_dict()) == cfg and cfg.as_dict()["level_thresholds"] == list(LEVEL)
    assert "level_thresholds" not in DriftConfig().as_dict()  # the drift alone: the earlier releases' keys
    th, knobs = thresholds_from_calibration({"alerting": {"thresholds": T.as_dict(), "alpha": 0.1,
                                                          "level": {"thresholds": dict(zip(T.as_dict(), LEVEL)),
                                                                    "alpha": 0.2}}})
    assert th == T and knobs["level_thresholds"] == LEVEL and knobs["level_alpha"] == 0.2
    with pytest.raises(InputError, match="level thresholds"):
        DriftConfig(level_thresholds=(1.0, 2.0, 3.0))
    with pytest.raises(InputError, match="malformed level thresholds"):
        thresholds_from_calibration({"alerting": {"thresholds": T.as_dict(), "level": {"thresholds": [1, 2]}}})


def test_level_thresholds_come_from_benign_minima_and_the_in_role_median():
    from calibrate.thresholds import fit_level_thresholds, level_trace

    assert level_trace([[10.0, 0.0], [20.0]], alpha=0.5) == [10.0, 5.0, 12.5]
    convs = [[[float(k)] * 20] for k in range(100)]  # conversation k sits at k
    th, stats = fit_level_thresholds(convs, alpha=0.5, min_tokens=4, in_role=-30.0)
    assert th.watch == pytest.approx(quantile([float(k) for k in range(100)], 0.10))
    assert th.warning == pytest.approx(0.99) and th.critical == -30.0  # below every benign minimum (0)
    assert stats["n_measured"] == 100 and stats["in_role_median"] == -30.0
    th2, _ = fit_level_thresholds(convs, alpha=0.5, min_tokens=4, in_role=50.0)
    assert th2.critical < th2.warning and th2.critical == 0.0  # never above a benign conversation's minimum
    with pytest.raises(InputError, match="at least 20"):
        fit_level_thresholds(convs[:10], alpha=0.5, min_tokens=4)


def test_the_cusum_accumulates_a_sustained_fall_and_forgets_small_dips():
    from monitor.detectors import Cusum

    det = Cusum(Thresholds(-5.0, -20.0, -40.0), slack=2.0, reference_tokens=2)
    assert [det.push(x) for x in (10.0, 10.0)] == [None, None]  # the opening: the reference
    det.end_turn()
    assert det.reference == 10.0 and det.value == 0.0
    assert [det.push(x) for x in (9.0, 11.0, 5.0, 5.0, 5.0)] == [0.0, 0.0, -3.0, -6.0, -9.0]  # 1 below: within slack
    snap = det.snapshot()
    again = Cusum(Thresholds(-5.0, -20.0, -40.0), slack=2.0, reference_tokens=2)
    again.restore(snap)
    assert again.push(5.0) == det.push(5.0) == -12.0
    tr = DriftTracker(T, DriftConfig(min_tokens=0, hysteresis=0.0), detectors=[
        Cusum(Thresholds(-5.0, -20.0, -40.0), slack=2.0, reference_tokens=2, hysteresis=0.0)])
    tr.update([10.0, 10.0], turn=1)
    tr.end_turn()
    ev = tr.update([0.0, 0.0, 0.0], turn=3)  # 8 a token beyond the slack: -8, -16, -24
    assert [(e.level, e.detector) for e in kinds(ev, "alert")] == [("watch", "cusum"), ("warning", "cusum")]


def test_a_first_release_snapshot_of_an_absolute_session_restores_and_a_bad_one_changes_nothing():
    old = {"v": 1, "level": 2, "running": -15.0, "n": 40, "pending": False, "alert_level": 2, "alert_n": 30,
           "open_bits": 4, "calm": 0, "capping": False, "last_turn": 1, "turn_means": [-15.0], "reference": 0.0,
           "ref_n": 0, "ref_sum": 0.0}
    tr = tracker()
    tr.restore(old)
    assert tr.state == "warning" and tr.running == -15.0 and tr.drift == -15.0
    tr.update([-15.0], turn=3)
    assert tr.running == -15.0 and tr.n_tokens == 41
    fresh = both()
    bad = {**fresh.snapshot(), "detectors": {"drift": {"running": 1.0}}}  # a detector's state cut short
    with pytest.raises(InputError, match="not a snapshot of detector drift"):
        fresh.restore(bad)
    assert fresh.snapshot() == both().snapshot()  # nothing was set


def test_the_detector_named_is_the_one_further_out():
    tr = both(level_thresholds=(10.0, 0.0, -100.0), level_alpha=0.2)
    tr.update([20.0, 20.0], turn=1)
    tr.end_turn()  # reference 20; the level (a running mean so far) 20
    tr.update([-10.0], turn=3)  # drift -30: critical; level 10: ok
    assert tr.state == "critical" and tr.detector == "drift"
    tr.update([-10.0, -10.0, -10.0], turn=3)  # the level falls behind: 5, 2, -0.4 (warning)
    assert tr.statistics["level"] == pytest.approx(-0.4) and tr.detector == "drift"
    tr.update([20.0], turn=3)  # drift 0: cleared; level 3.68: still at watch, so the state drops to watch only
    assert tr.state == "watch" and tr.detector == "level" and tr.statistics["level"] == pytest.approx(3.68)
    tr.update([40.0], turn=3)
    assert tr.state == "ok" and tr.detector is None


def test_the_reading_is_the_statistic_the_state_comes_from_live_and_from_a_snapshot():
    """What a view shows beside a state: the leading detector's statistic while above ok; while ok, the first
    detector with one (the level before the session's opening is complete, then the drift). A stored
    snapshot reads the same, and so does a first release's (its drift)."""
    tr = both(level_thresholds=(10.0, 0.0, -100.0), level_alpha=0.2)
    assert tr.reading == ("drift", None)  # nothing scored yet
    tr.update([20.0, 20.0], turn=1)
    assert tr.reading == ("level", 20.0)  # the opening is not complete: the level is all there is
    tr.end_turn()
    assert tr.reading == ("drift", 0.0) == snapshot_reading(tr.snapshot())
    tr.update([-10.0, -10.0, -10.0, -10.0], turn=3)
    tr.update([20.0], turn=3)  # the level holds the state at watch
    assert tr.state == "watch" and tr.reading == ("level", pytest.approx(3.68))
    tr.end_turn()
    assert snapshot_reading(tr.snapshot()) == tr.reading
    old = {"v": 1, "level": 1, "running": 25.0, "n": 20, "pending": False, "alert_level": 0, "alert_n": -1,
           "open_bits": 0, "calm": 0, "capping": False, "last_turn": 1, "turn_means": [30.0], "reference": 30.0,
           "ref_n": 20, "ref_sum": 600.0}
    assert snapshot_reading(old) == ("drift", -5.0)
    assert snapshot_reading(None) == snapshot_reading({"v": 3}) == (None, None)
