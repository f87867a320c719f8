"""What ``deploy/`` ships: the Prometheus rules pass their own unit tests (``promtool test rules``, Debian's
``prometheus`` package), the Grafana dashboard's queries are valid PromQL, and every metric, label and label
value the rules and the dashboard name is one the real ``/metrics`` exports.

The export check runs the real service on the tests' tiny random Llama, on thresholds every token crosses (a
critical alert at token 3, capping from token 4), with alert webhooks to a real receiver that answers 500 and
one attempt per alert: one chat request then makes every labelled family appear (requests, alerts by level,
outbox, stream lag, webhook attempts, dead letters, the replica's heartbeat). Renaming a metric (or a label,
or a label value the rules match on) fails it. Without ``promtool`` on PATH the promtool tests are skipped,
unless ``AXISWATCH_REQUIRE_PROMTOOL=1`` (CI), when they fail."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml
from polling import wait_until
from prometheus_client.parser import text_string_to_metric_families
from serving import free_port, uvicorn_thread
from test_webhooks import SECRET, Receiver

from monitor.streams import Streams
from monitor.webhook_config import WebhookConfig

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
RULES = DEPLOY / "prometheus" / "axiswatch-rules.yml"
RULE_TESTS = sorted((DEPLOY / "prometheus").glob("*.test.yml"))
DASHBOARD = DEPLOY / "grafana" / "axiswatch-dashboard.json"
# every token is critical (baseline "absolute", watch 1000): an alert at token 3 whatever the model says
CRITICAL = dict(policy="cap", drift_baseline="absolute", min_tokens=4, thresholds=(1000.0, 999.0, 998.0))


# ---------------------------------------------------------------- what the rules and the dashboard ask for
def rule_exprs() -> list[str]:
    doc = yaml.safe_load(RULES.read_text())
    return [r["expr"] for g in doc["groups"] for r in g["rules"]]


def dashboard_exprs() -> list[str]:
    """Every ``expr`` in the dashboard JSON (panels, rows' panels, targets), wherever it sits."""
    return list(_exprs(json.loads(DASHBOARD.read_text())))


def _exprs(node):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "expr" and isinstance(v, str):
                yield v
            else:
                yield from _exprs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _exprs(v)


SELECTOR = re.compile(r"\b(axiswatch_[A-Za-z0-9_:]*)\s*(\{[^}]*\})?")
MATCHER = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')


def wanted(exprs: list[str]) -> dict[str, dict[str, set[str]]]:
    """metric name -> label name -> the label values the expressions match on (for ``=`` and for ``=~`` of
    plain alternatives ``a|b``); a label matched otherwise (``!=``, a real regex) maps to an empty set."""
    out: dict[str, dict[str, set[str]]] = {}
    for e in exprs:
        for name, braces in SELECTOR.findall(e):
            labels = out.setdefault(name, {})
            for label, op, value in MATCHER.findall(braces or ""):
                vals = labels.setdefault(label, set())
                if op == "=" or (op == "=~" and re.fullmatch(r"[A-Za-z0-9_]+(\|[A-Za-z0-9_]+)*", value)):
                    vals.update(value.split("|"))
    return out


def exported(text: str) -> dict[str, dict[str, set[str]]]:
    """What an exposition holds: sample name (``_total`` included) -> label name -> values seen."""
    out: dict[str, dict[str, set[str]]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = out.setdefault(s.name, {})
            for k, v in s.labels.items():
                labels.setdefault(k, set()).add(v)
    return out


def missing(want: dict[str, dict[str, set[str]]], have: dict[str, dict[str, set[str]]]) -> list[str]:
    """What is asked for but not exported, one line each (empty: all there)."""
    out = []
    for name, labels in sorted(want.items()):
        if name not in have:
            out.append(f"metric {name}")
            continue
        for label, values in sorted(labels.items()):
            if label not in have[name]:
                out.append(f"label {name}{{{label}}}")
            out += [f'value {name}{{{label}="{v}"}}' for v in sorted(values - have[name].get(label, set()))]
    return out


def sample(text: str, name: str, **labels: str) -> float | None:
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


def test_the_rules_and_the_dashboard_name_axiswatch_metrics():
    """The extraction itself finds what the files use (so the export check below cannot pass vacuously)."""
    rules, dash = wanted(rule_exprs()), wanted(dashboard_exprs())
    assert {"axiswatch_alerts_total", "axiswatch_webhook_attempts_total", "axiswatch_dead_letters",
            "axiswatch_stream_lag", "axiswatch_replica_heartbeat_timestamp_seconds"} <= set(rules)
    assert rules["axiswatch_alerts_total"] == {"level": {"critical"}}
    assert set(rules) <= set(dash)  # every metric an alert is about has a panel
    assert wanted(['max by (instance, what) (axiswatch_outbox{what=~"queued|redis_down"})']) == \
        {"axiswatch_outbox": {"what": {"queued", "redis_down"}}}


def test_the_dashboard_is_well_formed():
    d = json.loads(DASHBOARD.read_text())
    panels = d["panels"] + [p for r in d["panels"] for p in r.get("panels", [])]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    assert {v["name"] for v in d["templating"]["list"]} == {"datasource"}
    for p in panels:
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "${datasource}" and p["targets"], p["title"]
        assert all(t["expr"] and t["datasource"]["uid"] == "${datasource}" for t in p["targets"]), p["title"]
        assert len({t["refId"] for t in p["targets"]}) == len(p["targets"]), p["title"]


# ---------------------------------------------------------------- promtool
def promtool() -> str:
    exe = shutil.which("promtool")
    if exe is None:
        msg = "promtool is not on PATH (Debian: apt-get install prometheus)"
        if os.environ.get("AXISWATCH_REQUIRE_PROMTOOL") == "1":
            pytest.fail(msg + "; AXISWATCH_REQUIRE_PROMTOOL=1 requires it")
        pytest.skip(msg)
    return exe


def run(*args: str | Path, cwd: Path | None = None) -> str:
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=120, cwd=cwd)
    assert r.returncode == 0, f"{' '.join(map(str, args))} failed:\n{r.stdout}\n{r.stderr}"
    return r.stdout


def test_the_rules_pass_promtool():
    exe = promtool()
    assert RULE_TESTS, "no deploy/prometheus/*.test.yml"
    assert "SUCCESS" in run(exe, "check", "rules", RULES)
    assert "SUCCESS" in run(exe, "test", "rules", *RULE_TESTS)


def test_the_dashboard_queries_are_valid_promql(tmp_path):
    """Each panel query, with Grafana's interval variables filled in, as a recording rule promtool parses."""
    exe = promtool()
    exprs = dashboard_exprs()
    rules = [{"record": f"axiswatch_dashboard:query_{i}", "expr": re.sub(r"\$__(rate_)?interval", "5m", e)}
             for i, e in enumerate(exprs)]
    f = tmp_path / "dashboard-queries.yml"
    f.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert f"SUCCESS: {len(exprs)} rules found" in run(exe, "check", "rules", f)


# ---------------------------------------------------------------- the real /metrics
@pytest.fixture(scope="module")
def receiver():
    r = Receiver()
    r.mode = "error"  # every alert fails its one attempt: dead-lettered
    yield r
    r.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory, embedded, tiny_settings, receiver):
    from monitor import service
    from monitor.api import create_app

    hook = WebhookConfig(receiver.url, SECRET, max_attempts=1, base_delay_s=0.0, timeout_s=2.0)
    db = tmp_path_factory.mktemp("deploy") / "aw.db"
    rt = service.start(tiny_settings.with_(database_url=f"sqlite:///{db}", redis_url=embedded.url, batch_size=4,
                                           webhook=hook, **CRITICAL))
    try:
        with uvicorn_thread(create_app(rt.engine, rt.store, rt.streams)) as url:
            yield rt, url, hook
    finally:
        rt.close()


def scrape(url: str) -> str:
    r = httpx.get(url + "/metrics", timeout=30)
    assert r.status_code == 200, r.text
    return r.text


def scrape_when(url: str, name: str, value: float) -> str | None:
    """The exposition, once the sample ``name`` (no labels) has ``value``; else None."""
    text = scrape(url)
    return text if sample(text, name) == value else None


def test_every_metric_the_rules_and_dashboard_use_is_exported(server, receiver):
    rt, url, _ = server
    r = httpx.post(url + "/v1/chat/completions", timeout=120,
                   json={"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8,
                         "session_id": "deploy-1"})
    assert r.status_code == 200, r.text
    assert r.json()["axiswatch"]["state"] == "critical"
    # the alert worker's one attempt fails (HTTP 500): on the dead-letter list, as /metrics says
    text = wait_until(lambda: scrape_when(url, "axiswatch_dead_letters", 1), what="the dead-lettered alert on /metrics")
    assert receiver.answered(500)
    assert sample(text, "axiswatch_webhook_attempts_total", outcome="failed") == 1
    assert sample(text, "axiswatch_webhook_attempts_total", outcome="delivered") == 0
    assert sample(text, "axiswatch_alerts_total", level="critical") == 1
    beat = sample(text, "axiswatch_replica_heartbeat_timestamp_seconds", replica=rt.engine.replica)
    assert beat is not None and abs(time.time() - beat) < 10  # beats every 3 s
    have = exported(text)
    want = wanted(rule_exprs() + dashboard_exprs())
    assert missing(want, have) == [], "the rules or the dashboard use what /metrics does not export"
    # and the check bites: a renamed metric, or a renamed label value, is reported
    renamed = exported(text.replace("axiswatch_dead_letters", "axiswatch_dead_lettered"))
    assert missing(want, renamed) == ["metric axiswatch_dead_letters"]
    relabelled = exported(text.replace('outcome="failed"', 'outcome="error"'))
    assert missing(want, relabelled) == ['value axiswatch_webhook_attempts_total{outcome="failed"}']


def test_a_replay_empties_the_dead_letters_on_metrics(server, receiver):
    from monitor.workers.dead_letters import replay_dead

    rt, url, hook = server
    wait_until(lambda: scrape_when(url, "axiswatch_dead_letters", 1), what="a dead letter")
    receiver.mode = "ok"
    try:
        assert replay_dead(rt.streams, rt.store, hook) == 1
    finally:
        receiver.mode = "error"
    text = scrape(url)
    assert sample(text, "axiswatch_dead_letters") == 0
    assert sample(text, "axiswatch_webhook_attempts_total", outcome="delivered") == 1


def test_a_scrape_without_redis_exports_no_stale_readings(server):
    """Redis unreachable: redis_up 0, and none of what is read from Redis (lag, attempts, dead letters,
    heartbeats) rather than old values."""
    from monitor.api import create_app

    rt, _, _ = server
    gone = Streams.from_url(f"redis://127.0.0.1:{free_port()}")
    with uvicorn_thread(create_app(rt.engine, rt.store, gone)) as url:
        scrape(url)  # a first scrape: nothing read yet either way
        text = scrape(url)
    assert sample(text, "axiswatch_redis_up") == 0
    have = exported(text)
    for name in ("axiswatch_stream_lag", "axiswatch_webhook_attempts_total", "axiswatch_dead_letters",
                 "axiswatch_replica_heartbeat_timestamp_seconds"):
        assert name not in have, name


def test_replicas_are_known_until_they_retire_or_fall_silent(embedded):
    """The heartbeat index behind axiswatch_replica_heartbeat_timestamp_seconds, on a prefix of its own."""
    from monitor.streams.client import REPLICA_MEMORY_S

    s = Streams.from_url(embedded.url, prefix=f"awdeploy-{os.getpid()}-{time.monotonic_ns()}")
    try:
        s.heartbeat("serve-a")
        s.heartbeat("serve-b")
        assert set(s.replicas()) == {"serve-a", "serve-b"} == s.alive(["serve-a", "serve-b", "serve-c"])
        assert abs(s.replicas()["serve-a"] - time.time()) < 5
        s.retire("serve-b")  # a clean stop: no longer listed, so no alert
        assert set(s.replicas()) == {"serve-a"}
        s.r.zadd(s.key("replicas"), {"serve-old": time.time() - REPLICA_MEMORY_S - 1})  # silent past memory
        assert set(s.replicas()) == {"serve-a"}
        s.heartbeat("serve-a")  # a heartbeat drops it from the index too
        assert s.r.zscore(s.key("replicas"), "serve-old") is None
    finally:
        for k in s.r.scan_iter(f"{s.prefix}:*"):
            s.r.delete(k)


def test_a_replica_that_stops_cleanly_leaves_the_heartbeat_list(tmp_path, embedded, tiny_settings):
    from monitor import service

    rt = service.start(tiny_settings.with_(database_url=f"sqlite:///{tmp_path / 'aw.db'}", redis_url=embedded.url),
                       workers=False)
    try:
        name = rt.engine.replica
        assert name in wait_until(lambda: rt.streams.replicas(), what="the replica's first heartbeat")
    finally:
        rt.close()
    assert name not in Streams.from_url(embedded.url).replicas()
