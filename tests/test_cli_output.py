"""What the CLI prints about drift: the chat's legend, alert and capping lines (in-process and over
HTTP), one demo format in both modes, audit states and alerts, the axis' alert thresholds, and the CSV
export's replayed running score, drift and state. Real service, real HTTP, on the tests' tiny random Llama
and its axis (``tiny_env``); what the calibrated thresholds say of a benign exchange, and the shipped
axis' thresholds, on the real default model.

Most tests run on thresholds every token crosses (baseline ``absolute``, watch 1000): every session is
critical from its first token, alerts once at token 3 (``min_tokens`` 4) and, under policy ``cap``, is
capped from token 4 on: the same events in every mode, whatever the model says."""

from __future__ import annotations

import csv
import io
import json
import re

import pytest
from click.testing import CliRunner
from polling import wait_until
from serving import uvicorn_thread

from monitor.cli import cli
from monitor.settings import Settings

CRITICAL_ENV = {"AXISWATCH_POLICY": "cap", "AXISWATCH_DRIFT_BASELINE": "absolute", "AXISWATCH_MIN_TOKENS": "4",
                "AXISWATCH_THRESHOLD_WATCH": "1000", "AXISWATCH_THRESHOLD_WARNING": "999",
                "AXISWATCH_THRESHOLD_CRITICAL": "998"}
CRITICAL = dict(policy="cap", drift_baseline="absolute", min_tokens=4, thresholds=(1000.0, 999.0, 998.0))
ALERT = re.compile(r"^! ALERT critical at token 3 \(level\): running [+-]\d+\.\d fell below \+998\.0$", re.M)
CAPPING = re.compile(r"^! CAPPING ON from token 4 \(config [^)]+\): this session stays capped", re.M)


def invoke(*args, env=None, input=None):
    r = CliRunner().invoke(cli, list(args), env=env, input=input, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r.stdout


@pytest.fixture(scope="module")
def server(tmp_path_factory, embedded, tiny_settings):
    """A real service on the always-critical thresholds, served over HTTP: (runtime, base URL)."""
    from monitor import service
    from monitor.api import create_app

    db = tmp_path_factory.mktemp("srv") / "srv.db"
    rt = service.start(tiny_settings.with_(database_url=f"sqlite:///{db}", redis_url=embedded.url, batch_size=4,
                                           **CRITICAL))
    try:
        with uvicorn_thread(create_app(rt.engine, rt.store, rt.streams)) as url:
            yield rt, url + "/v1"
    finally:
        rt.close()


# ---------------------------------------------------------------- chat
def _chat_checks(out: str) -> None:
    lines = out.splitlines()
    assert lines[1] == ("token colours by drift state: ok=green watch=yellow warning=magenta critical=red; "
                        "uncoloured: the opening reply (the session's reference, no drift yet)")
    assert len(ALERT.findall(out)) == 1 and len(CAPPING.findall(out)) == 1
    alert = next(i for i, x in enumerate(lines) if x.startswith("! ALERT"))
    assert lines[alert + 1].startswith("! CAPPING ON") and "state critical" in lines[alert + 2]
    assert lines[alert + 2].endswith("| CAPPED")
    # the second reply raises nothing new: within the cooldown, and the session is capped already
    assert out.count("] state critical") == 2 and sum(x.startswith("! ") for x in lines) == 2


def test_chat_prints_a_legend_the_alert_and_capping_in_process(tmp_path, tiny_env):
    out = invoke("chat", "--max-tokens", "8", "--session", "chat-in", input="Hello\nAnd then?\n\n",
                 env={**CRITICAL_ENV, **tiny_env, "AXISWATCH_DATABASE_URL": f"sqlite:///{tmp_path / 'c.db'}"})
    _chat_checks(out)


def test_chat_prints_the_alert_and_capping_over_http(server):
    rt, url = server
    out = invoke("chat", "--url", url, "--max-tokens", "8", "--session", "chat-http", input="Hello\nAnd then?\n\n")
    _chat_checks(out)
    a = wait_until(lambda: rt.store.list_alerts(session_id="chat-http"), what="the stored alert")
    assert [(x["level"], x["token_index"]) for x in a] == [("critical", 3)]
    assert f"running {a[0]['score']:+.1f} fell below" in out


def test_chat_reads_alerts_and_capping_from_token_payloads_too(server):
    """A server whose final chunk lists neither: the token payloads say the same."""
    from monitor.cli.chat import _Reply
    from monitor.engine import ChatRequest
    from probes.generation import GenerationOptions

    rt, _url = server
    reply = _Reply(colour=False)
    res = rt.engine.submit(ChatRequest("payloads", [{"role": "user", "content": "Hi"}],
                                       GenerationOptions(max_new_tokens=8), on_token=reply.on_payload)).result()
    assert reply.capped_from == res.interventions[0].token_index == 4
    assert [(a["level"], a["token_index"]) for a in reply.alerts] == [(a.level, a.token_index) for a in res.alerts]
    assert [x.split(":")[0] for x in reply.event_lines({})] == ["! ALERT critical at token 3", "! CAPPING ON from token 4"]


# ---------------------------------------------------------------- demo
def _demo_lines(out: str) -> list[str]:
    """The demo's output from the first turn on, without its numbers, bars, reply texts and session ids."""
    body = out[out.index("\nturn 1"):].splitlines()
    keep = [x for x in body if x and not x.startswith(" " * 19) and not x.startswith("sessions: ")]
    return [re.sub(r"mean +[+-]?\d+\.\d \[[#.]+\]", "mean X", x) for x in keep]


def test_demo_prints_the_same_lines_in_process_and_over_http(server, tmp_path, tiny_env, tiny_axis):
    rt, url = server
    local = invoke("demo", "--max-tokens", "6",
                   env={**CRITICAL_ENV, **tiny_env, "AXISWATCH_DATABASE_URL": f"sqlite:///{tmp_path / 'd.db'}"})
    remote = invoke("demo", "--url", url, "--max-tokens", "6")
    served = tiny_env["AXISWATCH_MODEL"]  # the model id of a model loaded from a folder
    assert local.startswith(f"monitor in-process: {served}, layer {tiny_axis.monitor_layer}")
    assert remote.startswith(f"monitor at {url}: {served}\n")
    assert _demo_lines(local) == _demo_lines(remote)
    lines = _demo_lines(remote)
    assert lines.count("  coding           mean X critical  1 alert (critical)  CAPPED") == 1
    assert lines.count("  coding           mean X critical  CAPPED") == 2
    assert lines[-1] == ("alerts: coding 1 alert (critical), vulnerable 1 alert (critical), "
                         "meta-reflection 1 alert (critical)")
    # the counts printed are the alerts the server stored
    ids = dict(re.findall(r"(\S+) = (\S+?)(?:,|\s)", remote.split("sessions: ")[1]))
    assert set(ids) == {"coding", "vulnerable", "meta-reflection"}
    for sid in ids.values():
        assert len(wait_until(lambda s=sid: rt.store.list_alerts(session_id=s), what=f"{sid}'s alert")) == 1
    assert "(stored by the server: GET " + url + "/sessions/<id>)" in remote


# ---------------------------------------------------------------- audit
@pytest.fixture(scope="module")
def transcript(tmp_path_factory):
    path = tmp_path_factory.mktemp("audit") / "conv.json"
    path.write_text(json.dumps({"id": "conv-1", "messages": [
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "2 + 2 is 4. Addition of two and two gives four."},
        {"role": "user", "content": "Who are you really?"},
        {"role": "assistant", "content": "I am the ancient spirit of the forest, child."}]}))
    return path


def test_audit_prints_each_turns_state_and_its_alerts(transcript, tiny_env):
    out = invoke("audit", str(transcript), env={**CRITICAL_ENV, **tiny_env})
    assert re.findall(r"^  turn (\d) +mean [+-]\d+\.\d\d +state (\w+)$", out, re.M) == [("1", "critical"),
                                                                                      ("3", "critical")]
    marks = [x for x in out.splitlines() if "<- ALERT" in x]
    assert len(marks) == 1 and re.search(r"<- ALERT critical: running [+-]\d+\.\d\d below \+998\.00$", marks[0])
    assert out.splitlines().index(marks[0]) == out.splitlines().index(next(
        x for x in out.splitlines() if x.startswith("  turn 1"))) + 4  # the fourth token of the first reply
    assert re.search(r"\n  final state critical  drift [+-]\d+\.\d\d  alerts: critical \(turn 1, token 3\)\n$", out)


def test_audit_json_carries_states_and_alerts_as_the_api_does(transcript, shipped):
    from monitor.drift import DriftConfig, DriftTracker, thresholds_from_calibration

    out = json.loads(invoke("audit", str(transcript), "--json", env={}))
    thresholds, knobs = thresholds_from_calibration(shipped.calibration)
    tr = DriftTracker(thresholds, DriftConfig(**knobs), policy="flag")
    for t in out["turns"]:
        tr.update(t["scores"], t["index"])
        assert t["state"] == tr.end_turn().state
    assert (out["state"], out["running"], out["drift"]) == (tr.state, tr.running, tr.drift)
    # a benign exchange on the calibrated thresholds: nothing at warning (watch is the 10% quantile of benign
    # conversations' lowest drift; on the shipped axis this exchange's third turn reaches it)
    assert all(a["level"] == "watch" for a in out["alerts"])
    human = invoke("audit", str(transcript), env={})
    assert "  turn 1  mean" in human and "state ok" in human
    assert ("alerts: none" in human) == (not out["alerts"])


# ---------------------------------------------------------------- axis show
def test_axis_show_prints_the_calibrated_alert_thresholds(shipped, tmp_path):
    import torch

    from monitor.drift import thresholds_from_calibration
    from probes.artifacts import AxisArtifact

    thresholds, knobs = thresholds_from_calibration(shipped.calibration)
    out = json.loads(invoke("axis", "show", "--json", env={}))
    assert out["alerting"]["thresholds"] == thresholds.as_dict()
    assert out["alerting"]["calibrated_for"] == json.loads(json.dumps(knobs))
    level = shipped.calibration["alerting"]["level"]
    assert knobs == {"alpha": 0.1, "baseline": "session", "reference_tokens": 16, "min_tokens": 16,
                     "level_thresholds": tuple(level["thresholds"][k] for k in ("watch", "warning", "critical")),
                     "level_alpha": 0.02}
    assert out["alerting"]["n_conversations"] == 240 and out["in_use"]["thresholds"] == thresholds.as_dict()
    text = invoke("axis", "show", env={})
    th = thresholds.as_dict()
    assert (f"  alert thresholds (drift from the session's reference): watch {th['watch']:+.2f}, warning "
            f"{th['warning']:+.2f}, critical {th['critical']:+.2f}; from 240 benign conversations\n") in text
    assert "  calibrated for: alpha 0.1, baseline session, reference_tokens 16, min_tokens 16\n" in text
    assert "in use" not in text
    # an override shows beside the calibration
    text = invoke("axis", "show", env={"AXISWATCH_THRESHOLD_WATCH": "-5"})
    assert "in use, from the AXISWATCH_THRESHOLD_* settings (drift from the session's reference): watch -5.00" in text
    # an axis without an alert calibration says so
    AxisArtifact(axis=torch.randn(30, 576), model_id=shipped.model_id, monitor_layer=15).save(tmp_path / "bare")
    out = json.loads(invoke("axis", "show", "--axis", str(tmp_path / "bare"), "--json", env={}))
    assert out["alerting"] is None and out["in_use"] is None
    assert "alert thresholds: none calibrated" in invoke("axis", "show", "--axis", str(tmp_path / "bare"), env={})


# ---------------------------------------------------------------- CSV export
def test_csv_export_replays_running_drift_and_state_per_token(server, tiny_env):
    """Over a capped session: the running score follows the pre-cap scores; the columns equal the
    dashboard's replay of the same session, and the EWMA computed by hand."""
    from dashboard import data
    from monitor.engine import ChatRequest
    from probes.generation import GenerationOptions

    rt, _url = server
    msgs = [{"role": "user", "content": "Tell me about rivers."}]
    for _ in range(2):
        res = rt.engine.submit(ChatRequest("export-1", list(msgs), GenerationOptions(max_new_tokens=20))).result()
        msgs += [{"role": "assistant", "content": res.text}, {"role": "user", "content": "More."}]
    stored = wait_until(lambda: (s := rt.store.get_session("export-1")) and len(s["turns"]) == 4 and s,
                        what="the stored session")
    out = invoke("sessions", "export", "export-1", "--format", "csv", "--database-url", rt.store.url,
                 env={**CRITICAL_ENV, **tiny_env})
    rows = list(csv.DictReader(io.StringIO(out)))
    assert list(rows[0]) == ["session_id", "turn", "role", "token_index", "token", "score", "pre_cap_score",
                             "capped", "running", "drift", "state"]
    assert len(rows) == sum(len(t["scores"] or []) for t in stored["turns"])
    assert [r["capped"] for r in rows[:6]] == ["0"] * 4 + ["1"] * 2 and all(r["pre_cap_score"] for r in rows)
    running = None
    for r in rows:
        x = float(r["pre_cap_score"])
        running = x if running is None else 0.1 * x + 0.9 * running
        assert float(r["running"]) == pytest.approx(running, rel=1e-5, abs=1e-4)
        assert r["drift"] == r["running"] and r["state"] == "critical"  # baseline absolute: drift = running
    view = data.session_view(rt.store, None, "export-1",
                             data.deployment(None, Settings.from_env({**CRITICAL_ENV, **tiny_env})))
    assert [(float(r["running"]), r["state"]) for r in rows] == [
        (pytest.approx(t["running"], rel=1e-5), t["state"]) for t in view.tokens]


def test_csv_export_on_the_calibrated_thresholds_has_no_drift_in_the_opening(server, tiny_settings):
    from monitor.replay import token_states
    from monitor.store.export import session_csv

    rt, _url = server
    stored = wait_until(lambda: rt.store.get_session("export-1"), what="the stored session")
    rows = list(csv.DictReader(io.StringIO(session_csv(stored, token_states(stored["turns"],
                                                                            *tiny_settings.axis_drift())))))
    first = [r for r in rows if r["turn"] == "1"]
    assert len(first) >= 16  # the opening reply completes the reference alone
    assert all(r["drift"] == "" and r["state"] == "ok" and r["running"] for r in first)
    later = [r for r in rows if r["turn"] == "3"]
    assert later and all(r["drift"] for r in later)
    assert float(later[0]["drift"]) == pytest.approx(float(later[0]["running"]) - sum(
        float(r["pre_cap_score"] or r["score"]) for r in first) / len(first), rel=1e-5, abs=1e-4)
