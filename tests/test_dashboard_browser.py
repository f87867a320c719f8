"""The dashboard in a real headless browser (Debian's chromium and chromedriver, driven by Selenium).

The pages are served by the real ``axiswatch dashboard`` on a store seeded by the real service and a
real redis-server; the audit test runs the README's main command (``axiswatch serve --dashboard``).
Screenshots go to ``$AXISWATCH_TEST_ARTIFACTS`` (default ``test-artifacts/``). Without chromium the
tests are skipped, unless ``AXISWATCH_REQUIRE_BROWSER=1`` (CI sets it) makes that a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("AXISWATCH_TEST_ARTIFACTS", ROOT / "test-artifacts"))
CHROMIUM, DRIVER = shutil.which("chromium") or "/usr/bin/chromium", shutil.which("chromedriver") or "/usr/bin/chromedriver"

if not (Path(CHROMIUM).exists() and Path(DRIVER).exists()):
    if os.environ.get("AXISWATCH_REQUIRE_BROWSER") == "1":
        raise RuntimeError("AXISWATCH_REQUIRE_BROWSER=1 but chromium/chromedriver are missing: "
                           "apt-get install -y chromium chromium-driver")
    pytest.skip("no chromium/chromedriver (apt-get install -y chromium chromium-driver)", allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402
from serving import free_port, wait_http  # noqa: E402

AXISWATCH = str(Path(sys.executable).parent / "axiswatch")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def browser():
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-extensions", "--window-size=1500,2200"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def dashboard(dashboard_db):
    db, redis_url, ids = dashboard_db
    port = free_port()
    env = dict(os.environ, AXISWATCH_DATABASE_URL=db, REDIS_URL=redis_url)
    proc = subprocess.Popen([AXISWATCH, "dashboard", "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/_stcore/health", proc)
        yield f"http://127.0.0.1:{port}", ids, db, redis_url
    finally:
        stop(proc)


def shot(driver, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 20_000  # a rendered page, not a blank one
    return path


def tokens(driver) -> list:
    return driver.find_elements(By.CSS_SELECTOR, "span.aw-tok:not(.aw-legend span)")


def wait_for(driver, what, timeout_s: float = 45.0):
    return WebDriverWait(driver, timeout_s, poll_frequency=0.25).until(lambda d: what(d) or None)


def test_session_view_draws_chart_and_heatmap(browser, dashboard):
    url, ids, db, _ = dashboard
    from monitor.store import Store

    sid = ids["meta-reflection"]
    stored = Store(db).get_session(sid)
    n = sum(len(t["scores"] or []) for t in stored["turns"])
    browser.get(f"{url}/session?id={sid}")
    chart = wait_for(browser, lambda d: [e for e in d.find_elements(By.CSS_SELECTOR, ".vega-embed svg, "
                                                                                    ".vega-embed canvas")
                                         if e.size["height"] > 200])
    assert chart[0].size["width"] > 600
    spans = wait_for(browser, lambda d: list(d.find_elements(By.CSS_SELECTOR, "span.aw-tok[data-score]")))
    assert len(spans) == n
    scores = [t for turn in stored["turns"] for t in (turn["scores"] or [])]
    assert float(spans[5].get_attribute("data-score")) == pytest.approx(scores[5], abs=1e-3)
    assert "score" in spans[5].get_attribute("title") and "running" in spans[5].get_attribute("title")
    capped = browser.find_elements(By.CSS_SELECTOR, "span.aw-tok.aw-capped[data-score]")
    assert len(capped) == sum(sum(t["capped"] or []) for t in stored["turns"]) > 0
    path = shot(browser, "session-view")
    print(f"screenshot: {path}")


def test_session_view_updates_live_from_redis(browser, dashboard):
    url, ids, _, redis_url = dashboard
    from monitor.streams import Streams

    sid, streams = ids["coding"], Streams.from_url(redis_url)
    browser.get(f"{url}/session?id={sid}")
    before = len(wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "span.aw-tok[data-score]")))
    browser.execute_script("window.awMark = 1")  # gone if the page were reloaded
    streams.publish_live(sid, {"kind": "tokens", "session_id": sid, "turn": 99, "start": 0,
                               "scores": [1.0, -30.0, -31.0], "state": "warning", "running": -12.0,
                               "capped": False, "final": False})
    try:
        # refreshed by the 2-second live fragment (seconds here; a loaded CI machine gets a wide margin)
        t0 = time.monotonic()
        wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "span.aw-tok[data-score]")) == before + 3, 30)
        assert browser.execute_script("return window.awMark") == 1  # in place, without reloading the page
        print(f"live tokens on the page {time.monotonic() - t0:.1f} s after they reached Redis")
        assert "generating" in browser.page_source
        shot(browser, "session-live")
    finally:  # the seeded Redis is shared with other tests
        streams.r.delete(streams.live_key(sid))
        streams.r.zrem(streams.key("live_index"), sid)


def column(driver, n: int) -> list[str]:
    """The texts of a table's column ``n`` (1-based) as drawn: the data grid paints on a canvas and
    mirrors the rows it shows in an accessible table of ``gridcell`` elements."""
    return [c.get_attribute("textContent") for c in driver.find_elements(
        By.CSS_SELECTOR, f"[data-testid='stDataFrame'] td[role='gridcell'][aria-colindex='{n}']")]


def test_overview_alerts_and_axis_pages_render(browser, dashboard):
    url, ids, db, _ = dashboard
    from monitor.store import Store

    sessions = {s["id"]: s for s in Store(db).list_sessions(limit=500)}
    assert set(ids.values()) <= set(sessions)
    browser.get(url)
    # every stored session's row is drawn, each with its stored state
    wait_for(browser, lambda d: sorted(column(d, 1)) == sorted(sessions))
    assert "Sessions" in browser.page_source
    assert [c.split()[-1] for c in column(browser, 2)] == [sessions[s]["state"] for s in column(browser, 1)]
    assert f"sessions\n{len(sessions)}" in [m.text for m in browser.find_elements(By.CSS_SELECTOR,
                                                                                 "[data-testid='stMetric']")]
    shot(browser, "overview")
    browser.get(f"{url}/alerts")
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "[data-testid='stDataFrame']"))
    assert "dead-lettered" in browser.page_source  # the delivery legend
    shot(browser, "alerts")
    browser.get(f"{url}/axis")
    charts = wait_for(browser, lambda d: list(d.find_elements(By.CSS_SELECTOR, ".vega-embed")) if len(
        d.find_elements(By.CSS_SELECTOR, ".vega-embed")) >= 3 else None)
    assert len(charts) >= 3 and "L21-26_p90" in browser.page_source  # the shipped capping config
    shot(browser, "axis")


def test_session_picker_takes_any_typed_id(browser, dashboard):
    """The picker lists only the most recent sessions: any other id can be typed (here one that so far
    exists only in the live tail, so it is in no list)."""
    url, _, _, redis_url = dashboard
    from selenium.webdriver.common.keys import Keys

    from monitor.streams import Streams

    sid, streams = "typed-live-only", Streams.from_url(redis_url)
    streams.publish_live(sid, {"kind": "tokens", "session_id": sid, "turn": 1, "start": 0, "scores": [3.0, -2.0],
                               "tokens": ["Hi", "!"], "state": "ok", "running": 1.0, "capped": False, "final": True})
    try:
        browser.get(f"{url}/session")
        [box] = wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "[data-testid='stSelectbox'] input"))
        box.click()
        box.send_keys(sid)
        wait_for(browser, lambda d: [o for o in d.find_elements(By.CSS_SELECTOR, "[role='option']") if sid in o.text])
        box.send_keys(Keys.ENTER)
        spans = wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "span.aw-tok[data-score]"))
        assert [float(x.get_attribute("data-score")) for x in spans] == [3.0, -2.0]
        assert browser.current_url.endswith(f"/session?id={sid}")
    finally:
        streams.r.delete(streams.live_key(sid))
        streams.r.zrem(streams.key("live_index"), sid)


def test_main_command_serves_dashboard_and_audits_an_upload(browser, tmp_path):
    """`axiswatch serve --dashboard` (the README's main command): upload the bundled transcript on the
    audit page; it is scored by the service, stored, and drawn."""
    api, ui = free_port(), free_port()
    env = dict(os.environ, AXISWATCH_PORT=str(api), AXISWATCH_DASHBOARD_PORT=str(ui),
               AXISWATCH_DATABASE_URL=f"sqlite:///{tmp_path / 'main.db'}")
    env.pop("REDIS_URL", None)  # the embedded redis-server, as on a fresh machine
    proc = subprocess.Popen([AXISWATCH, "serve", "--dashboard"], env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_http(f"http://127.0.0.1:{api}/readyz", proc, 180)
        wait_http(f"http://127.0.0.1:{ui}/_stcore/health", proc, 90)
        browser.get(f"http://127.0.0.1:{ui}/audit")
        upload = wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "input[type='file']"))
        sample = Path(str(resources.files("probes") / "data" / "sample_conversation.json"))
        upload[0].send_keys(str(sample))
        button = wait_for(browser, lambda d: [b for b in d.find_elements(By.TAG_NAME, "button")
                                              if b.text.strip() == "Score transcript" and b.is_enabled()])
        button[0].click()
        spans = wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "span.aw-tok[data-score]"), 120)
        assert len(spans) > 50
        assert browser.find_elements(By.CSS_SELECTOR, ".vega-embed")
        assert "scored 1 conversation" in browser.page_source
        shot(browser, "audit-upload")
    finally:
        stop(proc)
