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

from monitor.conversation import walk
from monitor.drift import DriftConfig, DriftTracker, Thresholds, snapshot_reading
from monitor.errors import AxiswatchError, InputError
from monitor.live import ended, live_turns
from monitor.records import SOURCES, STATES
from monitor.replay import replay, tracked_scores
from monitor.streams import REDIS_DOWN

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
    axis_dir: Path | None  # on the replica's host: may not exist where the dashboard runs
    capping: dict | None
    api_url: str
    origin: str  # "redis" (a running replica said so) or "settings" (read from disk, no replica seen)
    drift: dict = field(default_factory=dict)
    axis_meta: dict | None = None  # axis.json, as the replica published it (None: read the folder)
    axis_report: dict | None = None  # report.json, likewise (None: read the folder, if it has one)


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
        except REDIS_DOWN as e:  # fall back to the files
            log.warning("cannot read the deployment from Redis: %s", e)
    if info:
        drift = info.get("drift") or {}
        return Deployment(info.get("model_id", ""), info.get("layer"), info.get("policy", "flag"),
                          Thresholds(**info["thresholds"]), float(drift.get("alpha", 0.1)),
                          Path(info["axis_dir"]) if info.get("axis_dir") else None,
                          info.get("capping"), info.get("api") or settings.api_url(), "redis", drift,
                          info.get("axis_meta"), info.get("axis_report"))
    axis_dir = settings.axis_dir()
    meta = _read_json(axis_dir / "axis.json", "axis metadata")
    layer = meta.get("monitor_layer")
    thresholds, drift = settings.drift_setup(meta.get("calibration", {}))
    cap_dir = settings.capping_dir()
    capping = _read_json(cap_dir / "capping.json", "capping config") if cap_dir is not None else None
    report = _read_json(axis_dir / "report.json", "axis report") if (axis_dir / "report.json").exists() else None
    return Deployment(meta.get("model_id", ""), layer, settings.policy, thresholds, drift.alpha, axis_dir,
                      capping, settings.api_url(), "settings",
                      drift.as_dict(),
                      meta, report)


def state_of(score: float | None, th: Thresholds) -> str:
    """The band a score lies in (no hysteresis: for colouring, not for alerting)."""
    if score is None or not math.isfinite(score):
        return "ok"
    return ("ok" if score >= th.watch else "watch" if score >= th.warning
            else "warning" if score >= th.critical else "critical")


# ---------------------------------------------------------------- overview
def _stored_page(store, states, sources, since, limit) -> dict[str, dict]:
    """The stored sessions that match the filters (in SQL), newest activity first; ``since`` is about
    activity (a long session active now is shown)."""
    rows = store.list_sessions(state=states or None, source=sources or None,
                               active_since=since if since is not None else 0.0, limit=limit)
    return {r["id"]: r for r in rows}


def overview(store, streams, *, states: list[str] | None = None, sources: list[str] | None = None,
             since: float | None = None, limit: int = 500, now: float | None = None,
             live_window_s: float = LIVE_WINDOW_S) -> list[dict[str, Any]]:
    """One row per session, newest activity first: stored history merged with the live tail.
    ``since``: only sessions active (updated or live) at or after it.

    A session generating right now shows its live running score and state even before its turn
    reaches the store; one that only exists in Redis so far is listed with source ``live``. The
    filters reach every stored session (they run in SQL); a live session is filtered on its live state.
    """
    for s in states or ():
        if s not in STATES:
            raise InputError(f"state must be one of {STATES}, not {s!r}")
    for s in sources or ():
        if s not in SOURCES:
            raise InputError(f"source must be one of {SOURCES}, not {s!r}")
    now = time.time() if now is None else now
    stored = _stored_page(store, states, sources, since, limit)
    live_ts, latest = {}, {}
    if streams is not None:
        try:
            live_ts = streams.live_sessions(now - live_window_s)
            latest = streams.live_latest(sorted(live_ts))
        except REDIS_DOWN as e:  # history only
            log.warning("live tail unavailable: %s", e)
    skip = set()  # live sessions the filters rule out without loading them
    for sid in [sid for sid in live_ts if sid not in stored]:  # off the filtered page, or not stored yet
        lv = latest.get(sid)
        if states and lv is not None and lv.get("state", "ok") not in states:
            skip.add(sid)  # its live state is filtered out, and so is its stored one (SQL did not match it)
        elif sources and (m := store.session_meta(sid)) is not None and m["source"] not in sources:
            skip.add(sid)  # a session's source never changes
        elif (s := store.get_session(sid)) is not None:
            stored[sid] = {k: v for k, v in s.items() if k not in ("turns", "alerts", "interventions")}
    ids = (set(stored) | set(live_ts)) - skip
    open_alerts = store.open_alert_counts(sorted(ids))
    readings = {sid: snapshot_reading(snap) for sid, snap in store.last_trackers(sorted(set(stored) & ids)).items()}
    rows = []
    for sid in ids:
        r = stored.get(sid)
        lv = latest.get(sid)
        row = dict(session_id=sid, state=r["state"] if r else "ok", running=r["running"] if r else None,
                   turns=r["n_turns"] if r else 0, tokens=r["n_tokens"] if r else 0,
                   capped=bool(r["capped"]) if r else False, interrupted=bool(r["interrupted"]) if r else False,
                   open_alerts=open_alerts.get(sid, 0), source=r["source"] if r else "live",
                   model=r["model_id"] if r else "", created=r["created_at"] if r else live_ts[sid],
                   last_activity=max(r["updated_at"] if r else 0.0, live_ts.get(sid, 0.0)), generating=False)
        row["detector"], row["statistic"] = readings.get(sid, (None, None))
        if lv and live_ts.get(sid, 0.0) >= (r["updated_at"] if r else 0.0):  # the live tail is newer
            # the statistic beside the live state (a replica of an earlier release leaves it out: none shown)
            row.update(detector=lv.get("detector"), statistic=lv.get("statistic"))
            row.update(state=lv.get("state", row["state"]), running=lv.get("running", row["running"]),
                       capped=bool(lv.get("capped")) or row["capped"], generating=not ended(lv))
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
    tokens: list[dict]  # i, turn, t, token, score, pre_cap, capped, running, drift, reference, state, detector
    # (the one the state comes from after this token) and statistic (its value)
    turns: list[dict]  # turn, role, text, start, end, mean, state, n_tokens, live, generating
    alerts: list[dict]  # stored alerts, each with its session-wide token position ``i``
    interventions: list[dict]  # with ``i``: the first capped token
    live: bool = False  # some tokens come from the live tail (a turn not stored yet)
    stored: dict | None = None  # the store's whole session (for export), None when only live so far
    generating: bool = False  # a live turn has not had its final entry yet
    # the statistic the state comes from, (detector, value): the replayed tracker's after the last turn on
    # show (what the store's snapshot of that turn holds), or while a turn is live the tail's newest entry's
    reading: tuple[str | None, float | None] = (None, None)

    @property
    def id(self) -> str:
        return self.session.get("id", "")


def drift_config(dep: Deployment) -> DriftConfig:
    """The drift config the deployment runs with (what the engine's tracker does, the replay does)."""
    knobs = {k: v for k, v in dep.drift.items()
             if k in ("hysteresis", "min_tokens", "cooldown_tokens", "baseline", "reference_tokens", "recover_tokens",
                      "level_thresholds", "level_alpha")}
    return DriftConfig(alpha=dep.alpha, **knobs)


def model_input(stored: dict | None) -> dict:
    """What the model was given: ``system`` (the system prompt(s) of the first reply's input) and
    ``edits``: per reply whose input differed from the stored conversation, ``{turn, diverged_at,
    messages}`` (its input from the first message that differed on)."""
    if not stored:
        return {"system": [], "edits": []}
    nodes = stored.get("messages") or {}
    replies = [t for t in stored.get("turns", []) if t["role"] == "assistant" and t.get("input_head")]
    system = [m["content"] for m in walk(replies[0]["input_head"], nodes) if m["role"] == "system"] if replies else []
    edits = [{"turn": t["turn"], "diverged_at": t["diverged_at"],
              "messages": walk(t["input_head"], nodes)[t["diverged_at"]:]}
             for t in replies if t.get("diverged_at") is not None]
    return {"system": system, "edits": edits}


def session_view(store, streams, session_id: str, dep: Deployment) -> SessionView | None:
    """The stored turns, then any newer turn from the live tail; per-token running scores replayed
    through the same drift tracker the engine uses. None when the session is unknown everywhere."""
    stored = original = store.get_session(session_id)
    entries = []
    if streams is not None:
        try:
            entries = streams.read_live(session_id, count=100_000)
        except REDIS_DOWN as e:  # history only
            log.warning("live tail of %s unavailable: %s", session_id, e)
    if stored is None and not entries:
        return None
    stored = stored or {"id": session_id, "turns": [], "alerts": [], "interventions": []}
    last_stored = max((t["turn"] for t in stored["turns"]), default=None)
    live = live_turns(entries, last_stored)
    shown = [(t["turn"], t.get("scores") or [], t.get("pre_cap_scores") or [], t.get("capped") or [],
              t.get("tokens") or []) for t in stored["turns"]]
    shown += [(turn, buf["scores"], buf["pre"], buf["capped"], buf["pieces"]) for turn, buf in live.items()]
    # the engine's tracker, replayed: it follows each token's pre-cap score where there is one (a capped
    # session that keeps drifting still escalates); the chart plots the post-cap score
    tracker = DriftTracker(dep.thresholds, drift_config(dep), policy="observe")
    after = {r.turn: r.tokens for r in replay(tracker, [(n, tracked_scores(sc, pre)) for n, sc, pre, _, _ in shown
                                                       if sc], per_token=True)}
    tokens: list[dict] = []
    offsets: list[int] = []  # each shown turn's first token in the session
    for turn, scores, pre, capped, pieces in shown:
        offsets.append(len(tokens))
        for k, (sc, st) in enumerate(zip(scores, after.get(turn, []))):
            tokens.append(dict(i=len(tokens), turn=turn, t=k, token=pieces[k] if k < len(pieces) else "", score=sc,
                               pre_cap=pre[k] if k < len(pre) else None,
                               capped=bool(capped[k]) if k < len(capped) else False, running=st.running,
                               drift=st.drift, reference=st.reference, state=st.state, detector=st.detector,
                               statistic=st.statistic))
    turns: list[dict] = []
    for t, start in zip(stored["turns"], offsets):
        n = len(t.get("scores") or [])
        turns.append(dict(turn=t["turn"], role=t["role"], text=t["text"], start=start, end=start + n,
                          mean=t.get("mean"), state=t.get("state"), n_tokens=n, live=False, generating=False))
    for (turn, buf), start in zip(live.items(), offsets[len(stored["turns"]):]):
        scores = buf["scores"]
        turns.append(dict(turn=turn, role="assistant", text="", start=start, end=start + len(scores),
                          mean=sum(scores) / len(scores) if scores else None, state=buf["last"].get("state"),
                          n_tokens=len(scores), live=True, generating=not ended(buf["last"])))
    starts = {t["turn"]: t["start"] for t in turns}

    def at(rec: dict) -> dict:
        return {**rec, "i": starts.get(rec["turn"], 0) + int(rec["token_index"])}

    info = {k: v for k, v in stored.items() if k not in ("turns", "alerts", "interventions")}
    reading = tracker.reading
    if live:  # the newest tail entry holds the engine's own reading (older replicas leave it out)
        newest = list(live.values())[-1]["last"]
        reading = (newest.get("detector"), newest.get("statistic")) if "detector" in newest else (None, None)
    return SessionView(info, tokens, turns, [at(a) for a in stored["alerts"]],
                       [at(x) for x in stored["interventions"]], live=bool(live), stored=original,
                       generating=any(t["generating"] for t in turns), reading=reading)


def current_state(view: SessionView) -> str:
    """The session's drift state now. While a turn newer than the store is on show it is the live
    tail's (its newest entry's ``state``, as that turn's header says), not the last stored turn's;
    else the stored session's."""
    live = [t for t in view.turns if t["live"] and t.get("state") in STATE_RANK]
    if live:
        return live[-1]["state"]
    if view.live and view.tokens:  # a tail entry without a state: the replayed tracker's
        return view.tokens[-1]["state"]
    state = view.session.get("state")
    return state if state in STATE_RANK else view.tokens[-1]["state"] if view.tokens else "ok"


def peak_state(view: SessionView) -> str:
    """The worst state the session reached: the store's ``peak_state`` (the worst state any stored turn
    ended in or any alert reached), the states its turns on show ended in (a live turn's from the tail)
    and its state now."""
    states = ([view.session.get("peak_state"), current_state(view)] + [t.get("state") for t in view.turns]
              + [a.get("level") for a in view.alerts])
    return max((s for s in states if s in STATE_RANK), key=STATE_RANK.__getitem__)


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
    """Alerts newest first with their lifecycle (``status``: open, acknowledged, resolved) and webhook
    delivery status; ``unacknowledged``: only the open ones."""
    rows = store.list_alerts(status=status, level=level, acknowledged=False if unacknowledged else None, limit=limit)
    return [a for a in rows if a["status"] == "open"] if unacknowledged else rows


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
        raise AxiswatchError(f"cannot reach the probe service at {api_url} ({e}); start it with 'axiswatch serve'") from None
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
def axis_report(dep: Deployment) -> dict:
    """The axis metadata (``axis.json``) and report (``report.json``) of the deployment: what the
    running replica published in Redis, else the files of its axis folder (on this host).

    ``{"meta", "report", "origin", "missing"}`` (origin: "redis" or "files"); ``report`` is empty and
    ``missing`` says why when there is none (an imported axis has none); InputError when neither exists."""
    meta, report, folder = dep.axis_meta, dep.axis_report, dep.axis_dir
    published = dep.origin == "redis" and report is not None  # where the report (what the page names) came from
    if meta is None or report is None:
        here = folder is not None and folder.is_dir()
        if meta is None and here and (folder / "axis.json").exists():
            meta = _read_json(folder / "axis.json", "axis metadata")
        if report is None and here and (folder / "report.json").exists():
            report = _read_json(folder / "report.json", "axis report")
    where = f"the axis folder {folder}" if folder is not None else "no axis folder"
    if meta is None and report is None:
        raise InputError(
            "No axis report or metadata: the running replica did not publish them in Redis (it runs an "
            f"older axiswatch: upgrade and restart it) and {where} cannot be read on this host.")
    missing = None if report is not None else (
        f"No axis report: the replica published none and {where} has no report.json here "
        "(`axiswatch compute-axis` writes one; an imported axis has none).")
    return {"meta": meta or {}, "report": report or {}, "origin": "redis" if published else "files", "missing": missing}
