"""The dashboard's Rescore page on a rescore document (what `axiswatch sessions rescore --out` writes; the
page never runs the model): run headless with Streamlit's AppTest, and in a real browser (Debian's
chromium, served by the real `axiswatch dashboard`) where there is one."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from monitor.drift import DriftConfig, DriftTracker, Thresholds
from monitor.rescore import detectors_for, replay_alerts, session_outcome
from monitor.rescore_report import document

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "dashboard" / "views" / "rescore.py"
TH, CONFIG = Thresholds(-5.0, -10.0, -15.0), DriftConfig(reference_tokens=4, min_tokens=2)
FELL = [(1, [1.0, -1.0, 0.5, -0.5, 0.0]), (3, [-12.0] * 10 + [-25.0] * 20)]
CALM = [(1, [2.0] * 8), (3, [1.0] * 8)]


def tracker(th=TH):
    return DriftTracker(th, CONFIG, policy="flag", detectors=detectors_for("drift", th, CONFIG))


def stored(sid, turns, alerts):
    return {"id": sid, "source": "live", "policy": "flag", "model_id": "m", "created_at": 1.0,
            "turns": [{"turn": n, "role": "assistant", "text": "x", "scores": s, "state": "ok"} for n, s in turns],
            "alerts": [a.as_dict() for a in alerts]}


@pytest.fixture
def doc_path(tmp_path):
    """A document of three sessions: one that fell, rescored with quieter thresholds (its critical alerts
    dropped), one that stayed calm, one skipped."""
    quiet = Thresholds(-8.0, -20.0, -40.0)
    fell, _ = replay_alerts(tracker(), FELL)
    sessions = [session_outcome(stored("sess-fell", FELL, fell), dict(FELL), tracker(quiet)).as_dict(),
                session_outcome(stored("sess-calm", CALM, []), dict(CALM), tracker(quiet)).as_dict(),
                {**session_outcome(stored("sess-gone", [], []), {}, tracker(quiet)).as_dict(), "skipped": "erased"}]
    doc = document(sessions, created_at=time.time(), database="sqlite:///aw.db", model="m",
                   axis={"path": "/axes/quiet", "fingerprint": "abc123", "monitor_layer": 26, "model_id": "m"},
                   detector="drift", detectors=[d.describe() for d in detectors_for("drift", quiet, CONFIG)])
    path = tmp_path / "rescore.json"
    path.write_text(json.dumps(doc))
    return path, doc


def run_page(**query) -> AppTest:
    at = AppTest.from_file(str(PAGE), default_timeout=60)
    at.query_params.update(query)
    return at.run()


def test_without_a_document_the_page_asks_for_one():
    at = run_page()
    assert not at.exception and "Upload a rescore document" in at.info[0].value


def test_the_page_shows_the_summary_the_sessions_and_their_alerts(doc_path):
    path, doc = doc_path
    at = run_page(file=str(path))
    assert not at.exception and not at.error, [e.value for e in at.error]
    m = {x.label: x.value for x in at.metric}
    s = doc["summary"]
    assert m == {"sessions rescored": str(s["rescored"]), "sessions changed": "1", "alerts kept": str(s["alerts"]["kept"]),
                 "added": "0", "dropped": str(s["alerts"]["dropped"])}
    assert s["alerts"]["dropped"] > 0
    levels = next(d.value for d in at.dataframe if "sessions_recorded" in d.value.columns)
    assert list(levels["level"]) == ["watch", "warning", "critical", "all"]
    assert list(levels["dropped"])[-1] == s["alerts"]["dropped"]
    sessions = next(d.value for d in at.dataframe if "rescored peak" in d.value.columns)
    assert list(sessions["session"]) == ["sess-fell", "sess-gone"]  # changed or skipped only, at first
    assert "/axes/quiet" in at.caption[0].value and "drift (-8.0 / -20.0 / -40.0)" in at.caption[0].value
    alerts = next(d.value for d in at.dataframe if "outcome" in d.value.columns)
    assert set(alerts["outcome"]) == {"➖ dropped", "✔️ kept"} or set(alerts["outcome"]) == {"➖ dropped"}
    assert len(alerts) == len(doc["sessions"][0]["kept"]) + len(doc["sessions"][0]["dropped"])
    at.toggle(key="rescore-changed").set_value(False).run()
    sessions = next(d.value for d in at.dataframe if "rescored peak" in d.value.columns)
    assert list(sessions["session"]) == ["sess-fell", "sess-calm", "sess-gone"]


@pytest.mark.parametrize("name, content, why", [
    ("notes.txt", "{}", "is a .json file"),
    ("missing.json", None, "cannot be read"),
    ("other.json", '{"kind": "axiswatch.audit"}', "not a rescore document"),
])
def test_a_bad_document_is_a_red_box(tmp_path, name, content, why):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    at = run_page(file=str(path))
    assert not at.exception and why in at.error[0].value


# ---------------------------------------------------------------- in a real browser
CHROMIUM, DRIVER = shutil.which("chromium") or "/usr/bin/chromium", shutil.which("chromedriver") or "/usr/bin/chromedriver"
AXISWATCH = str(Path(sys.executable).parent / "axiswatch")
browser_missing = not (Path(CHROMIUM).exists() and Path(DRIVER).exists())
if browser_missing and os.environ.get("AXISWATCH_REQUIRE_BROWSER") == "1":
    raise RuntimeError("AXISWATCH_REQUIRE_BROWSER=1 but chromium/chromedriver are missing")


@pytest.mark.skipif(browser_missing, reason="no chromium/chromedriver (apt-get install -y chromium chromium-driver)")
def test_the_page_in_a_browser_opens_an_upload(doc_path, tmp_path):
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    from serving import free_port, wait_http

    from monitor.store import Store

    path, doc = doc_path
    Store(f"sqlite:///{tmp_path / 'aw.db'}").migrate()  # the dashboard serves a deployment's store
    port = free_port()
    env = {**os.environ, "AXISWATCH_DATABASE_URL": f"sqlite:///{tmp_path / 'aw.db'}"}
    proc = subprocess.Popen([AXISWATCH, "dashboard", "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,2000"):
        opts.add_argument(flag)
    driver = None
    try:
        wait_http(f"http://127.0.0.1:{port}/_stcore/health", proc)
        driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
        driver.get(f"http://127.0.0.1:{port}/rescore")
        wait = WebDriverWait(driver, 45, poll_frequency=0.25, ignored_exceptions=(StaleElementReferenceException,))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "input[type='file']"))[0].send_keys(str(path))
        values = lambda d: {m.find_element(By.CSS_SELECTOR, "[data-testid='stMetricLabel']").text:  # noqa: E731
                            m.find_element(By.CSS_SELECTOR, "[data-testid='stMetricValue']").text
                            for m in d.find_elements(By.CSS_SELECTOR, "[data-testid='stMetric']")}
        got = wait.until(lambda d: values(d) if len(values(d)) == 5 else None)
        assert got["sessions changed"] == "1" and got["dropped"] == str(doc["summary"]["alerts"]["dropped"])
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "[data-testid='stDataFrame']")) == 3)
        assert wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".vega-embed"))  # the turn means chart
        assert "Session sess-fell" in driver.page_source
        out = Path(os.environ.get("AXISWATCH_TEST_ARTIFACTS", ROOT / "test-artifacts"))
        out.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(out / "rescore.png"))
    finally:
        if driver is not None:
            driver.quit()
        proc.terminate()
        proc.wait(20)
