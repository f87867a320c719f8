"""The dashboard in a real headless browser (Debian's chromium and chromedriver, driven by Selenium).

The pages are served by the real ``axiswatch dashboard`` on a store seeded by the real service and a
real redis-server; the audit test runs the README's main command (``axiswatch serve --dashboard``).
Screenshots go to ``$AXISWATCH_TEST_ARTIFACTS`` (default ``test-artifacts/``). Without chromium the
tests are skipped, unless ``AXISWATCH_REQUIRE_BROWSER=1`` (CI sets it) makes that a failure.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from urllib.parse import quote

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("AXISWATCH_TEST_ARTIFACTS", ROOT / "test-artifacts"))
CHROMIUM, DRIVER = shutil.which("chromium") or "/usr/bin/chromium", shutil.which("chromedriver") or "/usr/bin/chromedriver"

# the pages draw what the real service wrote with the default model (dashboard_db), and serve runs it
pytestmark = pytest.mark.smollm

if not (Path(CHROMIUM).exists() and Path(DRIVER).exists()):
    if os.environ.get("AXISWATCH_REQUIRE_BROWSER") == "1":
        raise RuntimeError("AXISWATCH_REQUIRE_BROWSER=1 but chromium/chromedriver are missing: "
                           "apt-get install -y chromium chromium-driver")
    pytest.skip("no chromium/chromedriver (apt-get install -y chromium chromium-driver)", allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402
from serving import free_port, wait_http  # noqa: E402

from monitor.settings import shipped_dir  # noqa: E402
from probes.artifacts import load_capping  # noqa: E402

AXISWATCH = str(Path(sys.executable).parent / "axiswatch")
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
DRAWN_HOOK = """window.awDrawn = new Set();
const fill = CanvasRenderingContext2D.prototype.fillText;
CanvasRenderingContext2D.prototype.fillText = function (text, ...rest) {
  window.awDrawn.add(String(text)); return fill.call(this, text, ...rest); };"""
# where the data grids paint each text, and the clip it is painted in: the grid clips every column to its
# box (and a cell whose wrapped lines overflow it to the cell), so a text wider than its column is painted
# whole and shown cut off; the canvas calls that set the clip are followed through save/restore
PAINT_HOOK = """window.awPainted = [];
(() => {
  const P = CanvasRenderingContext2D.prototype, state = new WeakMap();
  let contexts = 0;
  const of = c => { let s = state.get(c);
    if (!s) state.set(c, s = {id: ++contexts, clip: null, stack: [], path: null}); return s; };
  const box = (c, x, y, w, h) => { const m = c.getTransform(), xs = [m.a * x + m.e, m.a * (x + w) + m.e],
    ys = [m.d * y + m.f, m.d * (y + h) + m.f]; return [Math.min(...xs), Math.min(...ys), Math.max(...xs), Math.max(...ys)]; };
  const meet = (a, b) => [Math.max(a[0], b[0]), Math.max(a[1], b[1]), Math.min(a[2], b[2]), Math.min(a[3], b[3])];
  const hull = (a, b) => [Math.min(a[0], b[0]), Math.min(a[1], b[1]), Math.max(a[2], b[2]), Math.max(a[3], b[3])];
  const hook = (name, f) => { const orig = P[name]; P[name] = function (...a) { f(this, a); return orig.apply(this, a); }; };
  hook("beginPath", c => { of(c).path = null; });
  hook("rect", (c, [x, y, w, h]) => { const s = of(c), b = box(c, x, y, w, h); s.path = s.path ? hull(s.path, b) : b; });
  hook("clip", c => { const s = of(c); if (s.path) s.clip = s.clip ? meet(s.clip, s.path) : s.path; });
  hook("save", c => { const s = of(c); s.stack.push(s.clip); });
  hook("restore", c => { const s = of(c); s.clip = s.stack.length ? s.stack.pop() : null; });
  hook("fillText", (c, [text, x, y]) => {
    if (c.canvas.isConnected && !c.canvas.closest('[data-testid="stDataFrame"]')) return;  // a chart's
    const t = String(text), m = c.measureText(t), a = c.textAlign;
    const x0 = a === "right" || a === "end" ? x - m.width : a === "center" ? x - m.width / 2 : x;
    const b = box(c, x0, y - m.actualBoundingBoxAscent, m.width, m.actualBoundingBoxAscent + m.actualBoundingBoxDescent);
    if (window.awPainted.length > 50000) window.awPainted.splice(0, 25000);
    window.awPainted.push({ctx: of(c).id, text: t, box: b, y: c.getTransform().d * y + c.getTransform().f,
                           clip: of(c).clip}); });
})();"""
# the texts the grids painted, a cell's wrapped lines joined (the grid paints a column's cells one after
# another, each line of a cell 18.2 px under the one before: 1.4 times 13 px of text; the next cell's first
# line is further down), each with whether all of it lay inside its clip
PAINTED_JS = """const out = []; let last = null;
for (const p of window.awPainted) {
  const inside = !p.clip || (p.box[0] >= p.clip[0] - 0.5 && p.box[1] >= p.clip[1] - 0.5 && p.box[2] <= p.clip[2] + 0.5
                             && p.box[3] <= p.clip[3] + 0.5);
  const next = last && p.ctx === last.ctx && String(p.clip) === String(last.clip) && Math.abs(p.box[0] - last.box[0]) < 0.5
    && Math.abs(p.y - last.y - 18.2) < 1;
  if (next) { out[out.length - 1][0] += p.text; out[out.length - 1][1] &&= inside; } else out.push([p.text, inside]);
  last = p; }
return out;"""
# per metric: its label, its value, and any element in it whose text is cut off (wider than its box)
METRICS_JS = """return [...document.querySelectorAll('[data-testid="stMetric"]')].map(m => [
  m.querySelector('[data-testid="stMetricLabel"]').textContent, m.querySelector('[data-testid="stMetricValue"]').textContent,
  [...m.querySelectorAll('*')].filter(e => e.clientWidth > 0 && e.scrollWidth > e.clientWidth).map(e => e.textContent)])"""
# per table: how far its grid overflows its own box, and how far the table reaches past the page's content
TABLES_JS = """const page = document.querySelector('[data-testid="stMainBlockContainer"]');
const inner = page.getBoundingClientRect().right - parseFloat(getComputedStyle(page).paddingRight);
return [...document.querySelectorAll('[data-testid="stDataFrame"]')].filter(t => t.offsetParent !== null).map(t => {
  const s = t.querySelector('.dvn-scroller');
  return [s ? s.scrollWidth - s.clientWidth : null, Math.round(t.getBoundingClientRect().right - inner)]; })"""


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
    # the data grid paints its cells on a canvas: record every text painted, to check what a cell shows
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": DRAWN_HOOK})
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": PAINT_HOOK})
    yield driver
    driver.quit()


@contextmanager
def served(db: str, redis_url: str | None = None):
    """``axiswatch dashboard`` on the store ``db`` (and Redis, if given): its base URL."""
    port = free_port()
    env = dict(os.environ, AXISWATCH_DATABASE_URL=db, **({"REDIS_URL": redis_url} if redis_url else {}))
    proc = subprocess.Popen([AXISWATCH, "dashboard", "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/_stcore/health", proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def dashboard(dashboard_db):
    db, redis_url, ids = dashboard_db
    with served(db, redis_url) as url:
        yield url, ids, db, redis_url


# session ids that differ only at their end, as the service names them (a demo's, a live chat's) and as an
# audit may (the caller's id: up to 200 characters, spaces allowed)
LONG_IDS = ["demo-meta-reflection_3f9a1c0b7e5d2a4c1b09", "demo-meta-reflection_3f9a1c0b7e5d2a4c1b7f",
            "sess_0a1b2c3d4e5f60718293",
            *(("audited transcript " + "0123456789abcdef" * 12)[:198] + end for end in ("-1", "-2"))]


@pytest.fixture(scope="module")
def long_ids_dashboard(tmp_path_factory):
    """The dashboard on a store of its own (no Redis): a session for each of ``LONG_IDS`` with one alert,
    the first session's acknowledged, the second's resolved. Its URL and the ids."""
    from monitor.records import AlertEvent, AlertUpdate, TurnRecord
    from monitor.store import Store

    db = f"sqlite:///{tmp_path_factory.mktemp('long-ids') / 'ids.db'}"
    store, now = Store(db), time.time()
    store.migrate()
    store.write([TurnRecord(sid, 1, "assistant", "I am", 21, ["I", " am"], [1.0, -9.0], state="warning", running=-4.0,
                            source="audit" if sid.startswith("audit") else "live", model_id=MODEL,
                            created_at=now - 60 + k)
                 for k, sid in enumerate(LONG_IDS)],
                [AlertEvent(sid, 1, 1, "warning", -4.0, -3.0, event_id=f"evt-{k}", created_at=now - 50 + k)
                 for k, sid in enumerate(LONG_IDS)])
    store.acknowledge_alert("evt-0", by="oncall@example.com")
    store.write(updates=[AlertUpdate(LONG_IDS[1], "evt-1", "resolved")])
    store.close()
    with served(db) as url:
        yield url, LONG_IDS


def shot(driver, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 20_000  # a rendered page, not a blank one
    return path


def tokens(driver) -> list:
    return driver.find_elements(By.CSS_SELECTOR, "span.aw-tok:not(.aw-legend span)")


def wait_for(driver, what, timeout_s: float = 45.0):
    """Poll ``what(driver)`` until it is truthy; an element Streamlit re-rendered while it was read (stale) is
    read again at the next poll."""
    return WebDriverWait(driver, timeout_s, poll_frequency=0.25, ignored_exceptions=(StaleElementReferenceException,)
                         ).until(lambda d: what(d) or None)


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
        # the header's state is the live tail's, as the generating turn's own header says (the store says ok)
        assert "state warning · generating (from the live tail)" in browser.page_source
        wait_for(browser, lambda d: metric_values(d).get("state") == "🟠 warning", 10)
        assert metric_values(browser)["peak state"] == "🟠 warning"
        shot(browser, "session-live")
    finally:  # the seeded Redis is shared with other tests
        streams.r.delete(streams.live_key(sid))
        streams.r.zrem(streams.key("live_index"), sid)


def metric_values(driver) -> dict[str, str]:
    return {label: value for label, value, _ in driver.execute_script(METRICS_JS)}


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
    shipped_id = load_capping(shipped_dir()).id
    assert len(charts) >= 3 and html.escape(shipped_id, quote=False) in browser.page_source  # the shipped config
    shot(browser, "axis")


@pytest.mark.parametrize("width", [1400, 1280])
def test_metrics_and_tables_fit_the_page(browser, dashboard, width):
    """at 1400 px the state metrics were cut off ("crit..."), the Sessions and Alerts tables were
    wider than the page. At 1400 and 1280 px (the sidebar open) every metric's text is whole and every
    table's grid fits its box and the page, on every page that has them."""
    url, ids, _, _ = dashboard
    browser.set_window_size(width, 2200)
    grid = "[data-testid='stDataFrame'] .dvn-scroller"
    try:
        for path, ready in (("", grid), ("/alerts", grid), (f"/session?id={ids['meta-reflection']}", grid),
                            ("/axis", ".vega-embed"), ("/audit", "[role='tab']")):
            browser.get(url + path)
            wait_for(browser, lambda d, ready=ready: d.find_elements(By.CSS_SELECTOR, ready))
            if path.startswith("/session"):
                wait_for(browser, lambda d: metric_values(d).get("peak state"))
                [toggle] = [e for e in browser.find_elements(By.CSS_SELECTOR, "[data-testid='stExpander'] summary")
                            if "Token table" in e.text]
                toggle.click()  # the token table too
                wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, grid)) >= 3)
            if path == "/audit":
                [tab] = [t for t in browser.find_elements(By.CSS_SELECTOR, "[role='tab']") if "Compare" in t.text]
                tab.click()
                wait_for(browser, lambda d: [e for e in d.find_elements(By.CSS_SELECTOR, grid) if e.is_displayed()])
            time.sleep(1.0)  # layout settles (fonts, the grid's column sizing)
            metrics = browser.execute_script(METRICS_JS)
            assert metrics or path == "/audit"
            assert [(label, value, cut) for label, value, cut in metrics if cut] == [], (width, path)
            tables = browser.execute_script(TABLES_JS)
            assert tables
            assert [t for t in tables if t[0] is None or t[0] > 0 or t[1] > 1] == [], (width, path, tables)
            shot(browser, f"fit-{width}-{path.strip('/').split('?')[0] or 'sessions'}")
    finally:
        browser.set_window_size(1500, 2200)


def painted(driver) -> list[tuple[str, bool]]:
    """What the grids painted since the last repaint(): each cell's text and whether it was shown whole."""
    return [(text, whole) for text, whole in driver.execute_script(PAINTED_JS)]


def repaint(driver, width: int) -> None:
    """The grids painted afresh at ``width`` px (a resize redraws them), the paints before forgotten."""
    driver.set_window_size(width - 1, 2200)
    time.sleep(0.5)
    driver.execute_script("window.awPainted = []")
    driver.set_window_size(width, 2200)
    time.sleep(1.5)  # layout settles, the grids redraw


def test_tables_show_whole_session_ids_and_statuses(browser, long_ids_dashboard):
    """At 1280 px the Sessions and Alerts tables cut session ids off at the column's edge (two demo
    sessions both read "demo-meta-reflection_3") and the status after "acknowle". On each page every
    session id is painted whole in its cell (wrapped onto as many lines as it takes), so no two sessions
    look the same, and so is the acknowledged alert's status; nothing else in the tables is cut off, and
    the tables still fit the page."""
    from dashboard.render import LIFECYCLE

    url, ids = long_ids_dashboard
    acked = LIFECYCLE["acknowledged"]
    cells = "[data-testid='stDataFrame'] td[role='gridcell']"
    try:
        for path, whole in (("", ids), ("/alerts", [*ids, acked]), (f"/session?id={quote(ids[0])}", [acked])):
            browser.set_window_size(1280, 2200)
            browser.get(url + path)
            # the rows are there (the grid's accessible table holds each cell's whole value)
            wait_for(browser, lambda d, whole=whole: set(whole) <= {c.get_attribute("textContent")
                                                                   for c in d.find_elements(By.CSS_SELECTOR, cells)})
            if path.startswith("/session"):  # the token table too
                [toggle] = [e for e in browser.find_elements(By.CSS_SELECTOR, "[data-testid='stExpander'] summary")
                            if "Token table" in e.text]
                toggle.click()
                wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "[data-testid='stDataFrame'] "
                                                                                 ".dvn-scroller")) >= 2)
            repaint(browser, 1280)
            got = painted(browser)
            shown = {"".join(text.split()) for text, ok in got if ok}  # a wrapped line loses its spaces at the wrap
            for text in whole:
                assert "".join(text.split()) in shown, (path, text, [t for t, _ in got if t[:8] == text[:8]])
            assert [text for text, ok in got if not ok] == [], path  # nothing cut off
            tables = browser.execute_script(TABLES_JS)
            assert tables and [t for t in tables if t[0] is None or t[0] > 0 or t[1] > 1] == [], (path, tables)
            shot(browser, f"whole-ids-1280-{path.strip('/').split('?')[0] or 'sessions'}")
    finally:
        browser.set_window_size(1500, 2200)


def test_axis_chart_title_counts_the_roles_it_plots(browser, dashboard):
    """the roles chart said "133 roles" over 40 bars: its title's count is the bars drawn."""
    url, _, _, _ = dashboard
    browser.get(f"{url}/axis")
    roles_js = """const e = [...document.querySelectorAll('.vega-embed')].find(
        e => (e.querySelector('.role-title-text') || {}).textContent?.startsWith('Roles along the axis'));
      return e && [e.querySelector('.role-title-text').textContent, e.querySelector('g.mark-rect.role-mark').children.length,
                   e.querySelectorAll('g.role-axis-label text').length];"""
    title, bars, labels = wait_for(browser, lambda d: d.execute_script(roles_js))
    m = re.search(r"Roles along the axis: (\d+) of (\d+)", title)
    assert m, title
    assert int(m.group(1)) == bars == 40 < int(m.group(2)) == 133
    assert labels >= bars  # every bar's role is labelled (x-axis ticks besides)
    shot(browser, "axis-roles")


def test_compare_table_draws_a_dash_not_none(browser, dashboard):
    """the compare table printed a literal "None" where one session has no such turn."""
    url, ids, _, redis_url = dashboard
    from monitor.streams import Streams

    sid, streams = ids["audit"], Streams.from_url(redis_url)  # session B of the compare tab: one more turn
    streams.publish_live(sid, {"kind": "tokens", "session_id": sid, "turn": 99, "start": 0, "scores": [1.0, -30.0],
                               "state": "warning", "running": -17.4, "capped": False, "final": False})
    try:
        browser.get(f"{url}/audit")
        [tab] = wait_for(browser, lambda d: [t for t in d.find_elements(By.CSS_SELECTOR, "[role='tab']")
                                             if "Compare" in t.text])
        tab.click()
        cells = "[data-testid='stDataFrame'] td[role='gridcell']"
        wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, cells)) == 16)  # 4 turns x 4 columns
        [grid] = browser.find_elements(By.CSS_SELECTOR, "[data-testid='stDataFrame']")
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", grid)
        drawn = wait_for(browser, lambda d: (lambda s: s if "—" in s else None)(
            d.execute_script("return [...window.awDrawn]")), 15)
        assert "None" not in drawn and "-14.50" in drawn, drawn  # turn 4: A has none, B has the live mean -14.5
        shot(browser, "compare-dash")
    finally:
        streams.r.delete(streams.live_key(sid))
        streams.r.zrem(streams.key("live_index"), sid)


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
        sample = Path(str(resources.files("monitor") / "data" / "sample_conversation.json"))
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
