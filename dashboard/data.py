"""The dashboard's data: plain functions over the store and Redis, no Streamlit.

Everything here returns plain dicts and lists, so it is unit-tested on a temporary
database and a real Redis without a browser. It never imports torch or ``probes``
(tests/test_dashboard_data.py checks): the history comes from :class:`monitor.store.Store`,
the live tail and the running deployment's settings from :class:`monitor.streams.Streams`.

Token positions: ``i`` numbers the scored tokens of a whole session in order (turn by turn),
``t`` the token within its turn, as in the stored turns and the alerts' ``token_index``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from monitor.drift import DriftConfig, DriftTracker, Thresholds, thresholds_from_calibration
from monitor.errors import AxiswatchError, InputError
from monitor.records import SOURCES, STATES

log = logging.getLogger(__name__)

LIVE_WINDOW_S = 300.0  # a session with a live entry this recent shows as active
STATE_RANK = {s: i for i, s in enumerate(STATES)}


# ---------------------------------------------------------------- the deployment
@dataclass(frozen=True)
class Deployment:
    """What the engine runs with: the thresholds the bands are drawn at, the axis folder, the API."""

    model_id: str
    layer: int | None
    policy: str
    thresholds: Thresholds
    alpha: float
    axis_dir: Path
    capping: dict | None
    api_url: str
    origin: str  # "redis" (a running replica said so) or "settings" (read from disk, no replica seen)
    drift: dict = field(default_factory=dict)


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{what} not found: {path}") from None
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"{what} {path} cannot be read: {e}") from None


def deployment(streams, settings) -> Deployment:
    """The running replica's deployment from Redis; without one, the same from the settings' axis folder."""
    info = None
    if streams is not None:
        try:
            info = streams.deployment()
        except Exception as e:  # noqa: BLE001 - Redis down: fall back to the files
            log.warning("cannot read the deployment from Redis: %s", e)
    if info:
        drift = info.get("drift") or {}
        return Deployment(info.get("model_id", ""), info.get("layer"), info.get("policy", "flag"),
                          Thresholds(**info["thresholds"]), float(drift.get("alpha", 0.1)), Path(info["axis_dir"]),
                          info.get("capping"), info.get("api") or _api(settings), "redis", drift)
    axis_dir = settings.axis_dir()
    meta = _read_json(axis_dir / "axis.json", "axis metadata")
    layer = meta.get("monitor_layer")
    stats = meta.get("calibration", {}).get("layers", {}).get(str(layer), {})
    cap_dir = Path(settings.capping) if settings.capping else axis_dir
    capping = _read_json(cap_dir / "capping.json", "capping config") if (cap_dir / "capping.json").exists() else None
    return Deployment(meta.get("model_id", ""), layer, settings.policy,
                      settings.drift_thresholds(thresholds_from_calibration(stats)), settings.ewma_alpha, axis_dir,
                      capping, _api(settings), "settings",
                      {"alpha": settings.ewma_alpha, "hysteresis": settings.hysteresis,
                       "min_tokens": settings.min_tokens, "cooldown_tokens": settings.cooldown_tokens})


def _api(settings) -> str:
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    return f"http://{host}:{settings.port}"


def state_of(score: float | None, th: Thresholds) -> str:
    """The band a score lies in (no hysteresis: for colouring, not for alerting)."""
    if score is None or not math.isfinite(score):
        return "ok"
    return ("ok" if score >= th.watch else "watch" if score >= th.warning
            else "warning" if score >= th.critical else "critical")


# ---------------------------------------------------------------- overview
def overview(store, streams, *, states: list[str] | None = None, sources: list[str] | None = None,
             since: float | None = None, limit: int = 500, now: float | None = None,
             live_window_s: float = LIVE_WINDOW_S) -> list[dict[str, Any]]:
    """One row per session, newest activity first: stored history merged with the live tail.
    ``since``: only sessions active (updated or live) at or after it.

    A session generating right now shows its live running score and state even before its turn
    reaches the store; one that only exists in Redis so far is listed with source ``live``.
    """
    for s in states or ():
        if s not in STATES:
            raise InputError(f"state must be one of {STATES}, not {s!r}")
    for s in sources or ():
        if s not in SOURCES:
            raise InputError(f"source must be one of {SOURCES}, not {s!r}")
    now = time.time() if now is None else now
    # newest activity first; ``since`` is about activity (a long session active now is shown)
    stored = {r["id"]: r for r in store.list_sessions(active_since=since if since is not None else 0.0, limit=limit)}
    live_ts, latest = {}, {}
    if streams is not None:
        try:
            live_ts = streams.live_sessions(now - live_window_s)
            latest = streams.live_latest(sorted(live_ts))
        except Exception as e:  # noqa: BLE001 - Redis down: history only
            log.warning("live tail unavailable: %s", e)
    missing = [sid for sid in live_ts if sid not in stored]
    for sid in missing:  # live sessions older than the listed page, or not stored yet
        if (s := store.get_session(sid)) is not None:
            stored[sid] = {k: v for k, v in s.items() if k not in ("turns", "alerts", "interventions")}
    open_alerts = store.open_alert_counts(sorted(set(stored) | set(live_ts)))
    rows = []
    for sid in set(stored) | set(live_ts):
        r = stored.get(sid)
        lv = latest.get(sid)
        row = dict(session_id=sid, state=r["state"] if r else "ok", running=r["running"] if r else None,
                   turns=r["n_turns"] if r else 0, tokens=r["n_tokens"] if r else 0,
                   capped=bool(r["capped"]) if r else False, interrupted=bool(r["interrupted"]) if r else False,
                   open_alerts=open_alerts.get(sid, 0), source=r["source"] if r else "live",
                   model=r["model_id"] if r else "", created=r["created_at"] if r else live_ts[sid],
                   last_activity=max(r["updated_at"] if r else 0.0, live_ts.get(sid, 0.0)), generating=False)
        if lv and live_ts.get(sid, 0.0) >= (r["updated_at"] if r else 0.0):  # the live tail is newer
            row.update(state=lv.get("state", row["state"]), running=lv.get("running", row["running"]),
                       capped=bool(lv.get("capped")) or row["capped"], generating=not lv.get("final", False))
            if row["generating"]:
                row["tokens"] += int(lv.get("start", 0)) + len(lv.get("scores") or [])
        rows.append(row)
    if states:
        rows = [r for r in rows if r["state"] in states]
    if sources:
        rows = [r for r in rows if r["source"] in sources]
    if since is not None:
        rows = [r for r in rows if r["last_activity"] >= since]
    rows.sort(key=lambda r: (-r["last_activity"], r["session_id"]))
    return rows[:limit]


# ---------------------------------------------------------------- one session
@dataclass
class SessionView:
    """A session as the chart and the heatmap draw it."""

    session: dict  # the stored session (id, source, state, ...) without its lists; {} when only live so far
    tokens: list[dict]  # i, turn, t, token, score, pre_cap, capped, running, state
    turns: list[dict]  # turn, role, text, start, end, mean, state, n_tokens, live
    alerts: list[dict]  # stored alerts, each with its session-wide token position ``i``
    interventions: list[dict]  # with ``i``: the first capped token
    live: bool = False  # some tokens come from the live tail (a turn not stored yet)
    stored: dict | None = None  # the store's whole session (for export), None when only live so far

    @property
    def id(self) -> str:
        return self.session.get("id", "")


def session_view(store, streams, session_id: str, dep: Deployment) -> SessionView | None:
    """The stored turns, then any newer turn from the live tail; per-token running scores replayed
    through the same drift tracker the engine uses. None when the session is unknown everywhere."""
    stored = original = store.get_session(session_id)
    entries = []
    if streams is not None:
        try:
            entries = streams.read_live(session_id, count=100_000)
        except Exception as e:  # noqa: BLE001 - Redis down: history only
            log.warning("live tail of %s unavailable: %s", session_id, e)
    if stored is None and not entries:
        return None
    stored = stored or {"id": session_id, "turns": [], "alerts": [], "interventions": []}
    knobs = {k: v for k, v in dep.drift.items() if k in ("hysteresis", "min_tokens", "cooldown_tokens")}
    tracker = DriftTracker(dep.thresholds, DriftConfig(alpha=dep.alpha, **knobs), policy="observe")
    tokens: list[dict] = []
    turns: list[dict] = []
    for t in stored["turns"]:
        start = len(tokens)
        scores = t.get("scores") or []
        pre, capped, pieces = t.get("pre_cap_scores"), t.get("capped"), t.get("tokens") or []
        for k, sc in enumerate(scores):
            tracker.update([sc], t["turn"])
            tokens.append(dict(i=len(tokens), turn=t["turn"], t=k, token=pieces[k] if k < len(pieces) else "",
                               score=sc, pre_cap=pre[k] if pre else None, capped=bool(capped[k]) if capped else False,
                               running=tracker.running, state=tracker.state))
        if scores:
            tracker.end_turn()
        turns.append(dict(turn=t["turn"], role=t["role"], text=t["text"], start=start, end=len(tokens),
                          mean=t.get("mean"), state=t.get("state"), n_tokens=len(scores), live=False))
    done = {t["turn"] for t in stored["turns"]}
    live_turns: dict[int, list[tuple[float, bool, str]]] = {}  # turn -> (score, capping on, text) per token
    live_meta: dict[int, dict] = {}
    for e in entries:  # newer turns only: a stored turn is the record, the tail a display buffer
        d = e.data
        turn = d.get("turn")
        if not isinstance(turn, int) or turn in done:
            continue
        buf = live_turns.setdefault(turn, [])
        start = int(d.get("start", len(buf)))
        if start == len(buf):  # in order (a gap means the tail was capped: keep what follows the gap out)
            scores = d.get("scores") or []
            pieces = d.get("tokens") or [""] * len(scores)
            buf.extend((float(x), bool(d.get("capped")), p) for x, p in zip(scores, pieces))
        live_meta[turn] = d
    for turn in sorted(live_turns):
        start = len(tokens)
        for k, (sc, on, piece) in enumerate(live_turns[turn]):
            tracker.update([sc], turn)
            tokens.append(dict(i=len(tokens), turn=turn, t=k, token=piece, score=sc, pre_cap=None, capped=on,
                               running=tracker.running, state=tracker.state))
        if live_turns[turn]:
            tracker.end_turn()
        scores = [sc for sc, _, _ in live_turns[turn]]
        turns.append(dict(turn=turn, role="assistant", text="", start=start, end=len(tokens),
                          mean=sum(scores) / len(scores) if scores else None, state=live_meta[turn].get("state"),
                          n_tokens=len(scores), live=True))
    starts = {t["turn"]: t["start"] for t in turns}

    def at(rec: dict) -> dict:
        return {**rec, "i": starts.get(rec["turn"], 0) + int(rec["token_index"])}

    info = {k: v for k, v in stored.items() if k not in ("turns", "alerts", "interventions")}
    return SessionView(info, tokens, turns, [at(a) for a in stored["alerts"]],
                       [at(x) for x in stored["interventions"]], live=bool(live_turns), stored=original)


def turn_means(view: SessionView) -> list[dict]:
    """Assistant turns with their mean score, in order (``n``: position among assistant turns)."""
    out = [t for t in view.turns if t["role"] == "assistant" and t["n_tokens"]]
    return [dict(n=k + 1, turn=t["turn"], mean=t["mean"], state=t["state"], tokens=t["n_tokens"])
            for k, t in enumerate(out)]


def compare(a: SessionView, b: SessionView) -> list[dict]:
    """Assistant turn means of two sessions side by side (aligned by position), with b - a."""
    ma, mb = turn_means(a), turn_means(b)
    rows = []
    for k in range(max(len(ma), len(mb))):
        x = ma[k]["mean"] if k < len(ma) else None
        y = mb[k]["mean"] if k < len(mb) else None
        rows.append(dict(n=k + 1, a=x, b=y, diff=None if x is None or y is None else y - x))
    return rows


# ---------------------------------------------------------------- alerts
def alerts_feed(store, *, status: str | None = None, level: str | None = None, unacknowledged: bool = False,
                limit: int = 200) -> list[dict]:
    """Alerts newest first with their webhook delivery status."""
    return store.list_alerts(status=status, level=level, acknowledged=False if unacknowledged else None, limit=limit)


# ---------------------------------------------------------------- audit
def audit_body(raw: bytes) -> bytes:
    """An uploaded transcript file as the JSON body ``/v1/audit`` takes: JSON as is, JSONL as a list."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"the file is not UTF-8 text ({e})") from None
    if not text.strip():
        raise InputError("the file is empty")
    try:
        json.loads(text)
        return raw
    except json.JSONDecodeError:
        pass
    docs = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                docs.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise InputError(f"line {n} is neither part of a JSON document nor a JSONL record: {e}") from None
    return json.dumps(docs).encode()


def submit_audit(api_url: str, body: bytes, policy: str = "observe", timeout_s: float = 600.0,
                 api_key: str | None = None) -> list[dict]:
    """Score a transcript file's bytes through the service's ``/v1/audit``; the scored sessions.

    Raises InputError with the service's own message when it refuses the file, AxiswatchError
    when the service cannot be reached."""
    headers = {"content-type": "application/json"}
    if api_key:
        headers["authorization"] = f"Bearer {api_key}"
    try:
        r = httpx.post(f"{api_url.rstrip('/')}/v1/audit", content=body, params={"policy": policy},
                       headers=headers, timeout=timeout_s)
    except httpx.HTTPError as e:
        raise AxiswatchError(f"cannot reach the probe service at {api_url} ({e}); start it with 'axiswatch serve'")
    if r.status_code >= 400:
        try:
            msg = r.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            msg = r.text[:300]
        raise InputError(f"the service refused the transcript ({r.status_code}): {msg}")
    return r.json()


def wait_stored(store, session_ids: list[str], timeout_s: float = 15.0, poll_s: float = 0.2) -> bool:
    """Wait until the persistence worker has stored these sessions' scored turns."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(store.get_session(sid) is not None and store.token_count(sid) > 0 for sid in session_ids):
            return True
        time.sleep(poll_s)
    return False


# ---------------------------------------------------------------- the axis
def axis_report(axis_dir: Path) -> dict:
    """The axis report (``report.json``) and metadata (``axis.json``) in an axis folder."""
    report = _read_json(Path(axis_dir) / "report.json", "axis report")
    meta = _read_json(Path(axis_dir) / "axis.json", "axis metadata")
    return {"report": report, "meta": meta}
