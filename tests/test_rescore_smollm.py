"""`axiswatch sessions rescore` on live sessions of the real default model: the demo's vulnerable user and
meta-reflection conversations generated through the real engine (SmolLM2, the shipped axis, policy flag,
drift thresholds tight enough that they alert) into a real SQLite store. Rescored with the same axis and
thresholds, every alert is kept and none is added or dropped: teacher forcing gives back the scores the
generation's own forward pass gave."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from store_writer import StoreWriter

from monitor.backends.hf import HFBackend
from monitor.cli import cli
from monitor.demo import load_scripts
from monitor.engine import ChatRequest, Engine
from monitor.rescore_report import read_document
from monitor.settings import Settings, shipped_dir
from monitor.store import Store
from probes.generation import GenerationOptions

TIGHT = (-5.0, -10.0, -15.0)  # drift thresholds these short conversations cross
OPTS = GenerationOptions(max_new_tokens=48)


@pytest.fixture(scope="module")
def live_store(lm, shipped, tmp_path_factory):
    thresholds, drift = Settings(thresholds=TIGHT).axis_drift()  # what the command derives with --thresholds
    url = f"sqlite:///{tmp_path_factory.mktemp('rescore-smollm') / 'aw.db'}"
    store = Store(url)
    store.migrate()
    eng = Engine(HFBackend(lm, shipped), thresholds, drift=drift, policy="flag", publisher=StoreWriter(store),
                 session_lookup=store.session_meta)
    scripts = [s for s in load_scripts() if s["name"] in ("vulnerable", "meta-reflection")]
    histories = {s["name"]: [] for s in scripts}
    for k in range(3):  # both conversations' next turn in one batch, as the service batches them
        for s in scripts:
            histories[s["name"]].append({"role": "user", "content": s["turns"][k]})
        results = eng.run_batch([ChatRequest(n, list(h), OPTS) for n, h in histories.items()])
        for h, r in zip(histories.values(), results):
            h.append({"role": "assistant", "content": r.text})
    store.close()
    return url


def test_live_sessions_rescored_with_their_own_axis_keep_every_alert(live_store):
    r = CliRunner().invoke(cli, ["sessions", "rescore", "--axis", str(shipped_dir()), "--thresholds", "-5,-10,-15",
                                 "--json"], env={"AXISWATCH_DATABASE_URL": live_store}, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    doc = read_document(r.stdout)
    s = doc["summary"]
    assert s["rescored"] == 2 and s["alerts"]["recorded"] > 0
    assert s["alerts"]["kept"] == s["alerts"]["recorded"] and s["alerts"]["added"] == s["alerts"]["dropped"] == 0
    assert [d["name"] for d in doc["detectors"]] == ["drift", "level"]
    for x in doc["sessions"]:
        assert x["recorded_peak"] == x["rescored_peak"]
        for t in x["turns"]:
            assert t["rescored_tokens"] == t["recorded_tokens"] > 0
            assert t["rescored_mean"] == pytest.approx(t["recorded_mean"], abs=0.01)
            assert t["rescored_state"] == t["recorded_state"]
