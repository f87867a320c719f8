"""The evaluation traffic in a store, as ``serve`` would have recorded it under policy ``flag`` with the
shipped axis, for ``axiswatch sessions rescore`` to re-read (docs/rescore.md):

``python -m eval.traffic_store load --db runs/traffic.db`` (about 5 minutes on 2 cores), then
``axiswatch sessions rescore --database-url sqlite:///runs/traffic.db --axis DIR --out runs/rescore.json``, then
``python -m eval.traffic_store table runs/rescore.json`` (the summary by group, as markdown).

- ``eval/results/traffic_new_axis.json``: 230 sessions driven live through ``serve`` against the shipped axis
  (policy ``observe``, which generates what ``flag`` generates): stored as ``live`` sessions with the tokens
  and scores they were served with;
- ``eval/results/traffic_observe.json``: 294 sessions driven live with the second release's axis: their
  replies read back with the shipped axis by teacher forcing (:func:`probes.audit.score_conversation`),
  stored as ``audit`` sessions, as ``axiswatch audit`` / ``POST /v1/audit`` would record them.

Each reply's scores go through one drift tracker per session (policy ``flag``, the shipped axis'
calibration, :func:`monitor.replay.replay`: the engine's own rule), which gives its state, running score
and tracker snapshot and the alerts ``flag`` records (with their resolutions); each reply records its
input's chain of messages (the template's own system prompt first when the session has none), as the
engine does. Session and turn times are spread back from now (one minute between sessions), so
``--since`` selects the newest. The recorded alerts are therefore exactly those of the shipped axis.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

from monitor.conversation import chain
from monitor.drift import DriftTracker
from monitor.records import AlertEvent, AlertUpdate, TurnRecord
from monitor.replay import replay
from monitor.rescore import Alert, compare_alerts, replay_alerts
from monitor.rescore_report import level_rows, summarise_groups
from monitor.settings import Settings, shipped_dir
from monitor.store import Store

RESULTS = Path(__file__).resolve().parent / "results"
NEW, OBSERVED = RESULTS / "traffic_new_axis.json", RESULTS / "traffic_observe.json"
GROUPS = {"benign": "benign", "benign-eval": "benign", "drift": "drifting", "drift-eval": "drifting",
          "persona": "persona"}


def session_records(sid: str, source: str, system: str | None, replies: list[dict], tracker: DriftTracker,
                    template_system: str | None, model_id: str, layer: int, t0: float):
    """Turn, alert and alert-update records of one session: ``replies`` hold ``user``, ``text``, ``tokens``,
    ``scores`` per exchange. Turns are numbered as the engine numbers a live session's (user 0, reply 1...)."""
    turns, alerts, updates = [], [], []
    history = [{"role": "system", "content": system}] if system else []
    prefix = [] if system or not template_system else [{"role": "system", "content": template_system}]
    sent: set[str] = set()
    opened: list[tuple[str, str]] = []  # (event id, level) of the alerts not yet resolved
    meta = dict(source=source, model_id=model_id, policy="flag")
    for k, r in enumerate(replies):
        user_no, reply_no, at = 2 * k, 2 * k + 1, t0 + 10 * k
        history.append({"role": "user", "content": r["user"]})
        turns.append(TurnRecord.build(sid, user_no, "user", r["user"], layer, created_at=at, **meta))
        nodes = chain(prefix + history)
        out = next(replay(tracker, [(reply_no, r["scores"])]))
        for ev in out.events:
            if ev.kind == "alert":
                a = AlertEvent(sid, reply_no, ev.token_index, ev.level, ev.running, ev.threshold, policy="flag",
                               created_at=at + 1, excerpt="".join(r["tokens"][:ev.token_index + 1])[-200:],
                               detector=ev.detector)
                alerts.append(a)
                opened.append((a.event_id, a.level))
            elif ev.kind == "resolve":
                rank = ("ok", "watch", "warning", "critical").index
                updates += [AlertUpdate(sid, e, "resolved", turn=reply_no, token_index=ev.token_index, created_at=at + 2)
                            for e, lvl in opened if rank(lvl) > rank(ev.level)]
                opened = [(e, lvl) for e, lvl in opened if rank(lvl) <= rank(ev.level)]
        turns.append(TurnRecord.build(
            sid, reply_no, "assistant", r["text"], layer, tokens=r["tokens"], scores=r["scores"],
            state=out.summary.state, running=out.summary.running, input_head=nodes[-1]["h"],
            input=[n for n in nodes if n["h"] not in sent], tracker=tracker.snapshot(), created_at=at + 1, **meta))
        sent |= {n["h"] for n in nodes}
        history.append({"role": "assistant", "content": r["text"]})
    return turns, alerts, updates


def _teacher_forced(sessions: list[dict]) -> dict[str, list[dict]]:
    """Each session's replies scored with the shipped axis by teacher forcing: id -> [{tokens, scores}]."""
    from probes.artifacts import load_axis
    from probes.audit import score_conversation
    from probes.models import load_model

    lm, art = load_model(), load_axis(shipped_dir(), roles=False)
    unit, out = art.unit(), {}
    for s in tqdm(sessions, desc="teacher forcing (shipped axis)", unit="session", mininterval=2):
        msgs = [{"role": "system", "content": s["system"]}] if s.get("system") else []
        for t in s["turns"]:
            msgs += [{"role": "user", "content": t["user"]}, {"role": "assistant", "content": t["text"]}]
        scored = {ts.index: ts for ts in score_conversation(lm, msgs, unit, art.monitor_layer)}
        first = 1 if s.get("system") else 0
        out[s["id"]] = [{"tokens": scored[first + 2 * k + 1].tokens, "scores": scored[first + 2 * k + 1].scores}
                        for k in range(len(s["turns"]))]
    return out


def load(db: Path, limit: int | None = None) -> dict:
    """Write the traffic into a new SQLite store at ``db``; counts, and the turns whose end state differs from
    the one ``serve`` reported live (the live sessions: a check that the replay is the engine's)."""
    from probes.models import load_model, template_default_system

    if db.exists():
        raise SystemExit(f"{db} exists: give a new path (the store is built from scratch)")
    s = Settings()
    thresholds, config = s.axis_drift()
    meta = json.loads((shipped_dir() / "axis.json").read_text())
    lm = load_model()
    template, model_id, layer = template_default_system(lm.tokenizer), lm.model_id, int(meta["monitor_layer"])
    new, observed = json.loads(NEW.read_text())[:limit], json.loads(OBSERVED.read_text())[:limit]
    forced = _teacher_forced(observed)
    store = Store(f"sqlite:///{db}")
    store.migrate()
    t0, counts, mismatched = time.time() - 60.0 * (len(new) + len(observed)) - 3600, {}, 0
    jobs = [(s, "live", s["turns"]) for s in new] + \
           [(s, "audit", [{**t, **f} for t, f in zip(s["turns"], forced[s["id"]])]) for s in observed]
    for k, (sess, source, replies) in enumerate(tqdm(jobs, desc="store", unit="session", mininterval=2)):
        tracker = DriftTracker(thresholds, config, policy="flag")
        turns, alerts, updates = session_records(sess["id"], source, sess.get("system"), replies, tracker, template,
                                                 model_id, layer, t0 + 60.0 * k)
        if source == "live":
            states = [t.state for t in turns if t.role == "assistant"]
            mismatched += sum(a != r.get("stored_state") for a, r in zip(states, replies))
        got = store.write(turns, alerts, updates=updates)
        for key, n in got.items():
            counts[key] = counts.get(key, 0) + n
    store.close()
    return {"db": str(db), "sessions": len(jobs), **counts, "live_states_differing": mismatched}


def group_of(path_list: list[Path]):
    groups = {s["id"]: GROUPS.get(s["group"], s["group"]) for p in path_list for s in json.loads(p.read_text())}
    return lambda sid: groups.get(sid, "other")


def parity(doc: dict, served: Path) -> dict:
    """The document's rescored sessions against the same sessions as ``served`` recorded them live, with the
    axis the document rescored with (the traffic served with it): turns compared, those read back as another
    number of tokens, the mean and max |difference| of turn means; and the alerts the live scores raise
    (replayed with that axis' calibration, policy flag) against the rescore's, kept, added and dropped."""
    live = {s["id"]: s for s in json.loads(served.read_text())}
    thresholds, config = Settings(axis=doc["axis"]["path"]).axis_drift()
    diffs, other, n, alerts = [], 0, 0, {"kept": 0, "added": 0, "dropped": 0}
    for s in doc["sessions"]:
        rec = live.get(s["session_id"])
        if rec is None or s.get("skipped"):
            continue
        for t, lt in zip(s["turns"], rec["turns"]):
            n += 1
            other += len(lt["scores"]) != t["rescored_tokens"]
            diffs.append(abs(sum(lt["scores"]) / len(lt["scores"]) - t["rescored_mean"]))
        served_alerts, _ = replay_alerts(DriftTracker(thresholds, config, policy="flag"),
                                         [(t["turn"], lt["scores"]) for t, lt in zip(s["turns"], rec["turns"])])
        rescored = [Alert.from_dict({**a, "token_index": a.get("rescored_token_index", a["token_index"])})
                    for a in s["kept"]] + [Alert.from_dict(a) for a in s["added"]]
        c = compare_alerts(served_alerts, rescored)
        for k in alerts:
            alerts[k] += len(getattr(c, k))
    return {"turns": n, "other_token_count": other, "mean_abs_diff": sum(diffs) / len(diffs) if diffs else None,
            "max_abs_diff": max(diffs) if diffs else None, "alerts_served_vs_rescored": alerts}


def by_detector(sessions: list[dict]) -> dict[str, dict[str, int]]:
    """Alerts kept, added and dropped per detector (a kept alert's detector is the same on both sides)."""
    out: dict[str, dict[str, int]] = {}
    for s in sessions:
        for outcome in ("kept", "added", "dropped"):
            for a in s[outcome]:
                c = out.setdefault(a.get("detector") or "-", {"kept": 0, "added": 0, "dropped": 0})
                c[outcome] += 1
    return dict(sorted(out.items()))


def table(doc: dict, group) -> list[str]:
    """The rescore summary as markdown: alerts by level, then by group."""
    summ = doc["summary"]
    lines = ["| level | recorded | rescored | kept | added | dropped | sessions at or above (recorded -> rescored) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in level_rows(summ):
        reach = "" if r["sessions_recorded"] is None else f"{r['sessions_recorded']} -> {r['sessions_rescored']}"
        lines.append(f"| {r['level']} | {r['recorded']} | {r['rescored']} | {r['kept']} | {r['added']} | "
                     f"{r['dropped']} | {reach} |")
    lines += ["", "| detector | recorded | rescored | kept | added | dropped |", "| --- | --- | --- | --- | --- | --- |"]
    for det, c in by_detector(doc["sessions"]).items():
        lines.append(f"| {det} | {c['kept'] + c['dropped']} | {c['kept'] + c['added']} | {c['kept']} | {c['added']} | "
                     f"{c['dropped']} |")
    lines += ["", "| group | sessions | changed | alerts recorded | rescored | kept | added | dropped | "
              "at warning or above (recorded -> rescored) |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for g, s in summarise_groups(doc["sessions"], group).items():
        a, w = s["alerts"], s["sessions_at"]["warning"]
        lines.append(f"| {g} | {s['rescored']} | {s['changed']} | {a['recorded']} | {a['rescored']} | {a['kept']} | "
                     f"{a['added']} | {a['dropped']} | {w['recorded']} -> {w['rescored']} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval.traffic_store", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    lp = sub.add_parser("load", help="write the traffic into a new SQLite store")
    lp.add_argument("--db", type=Path, required=True)
    lp.add_argument("--limit", type=int, default=None, help="the first N sessions of each traffic file (a smoke run)")
    tp = sub.add_parser("table", help="a rescore document's summary by level and group, as markdown")
    tp.add_argument("rescore", type=Path)
    tp.add_argument("--served", type=Path, default=None,
                    help="traffic served live with the axis the document rescored with: compare turn means")
    args = ap.parse_args(argv)
    if args.cmd == "load":
        print(json.dumps(load(args.db, args.limit)))
        return 0
    doc = json.loads(args.rescore.read_text())
    print("\n".join(table(doc, group_of([NEW, OBSERVED]))))
    if args.served is not None:
        print(json.dumps(parity(doc, args.served)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
