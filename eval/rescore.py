"""Stored traffic scored again with another axis, by teacher forcing: what ``serve`` would have scored.

``python -m eval.rescore --axis DIR --traffic eval/results/traffic_observe.json --out runs/rescored.json``

Under policy ``observe`` (and ``flag``) the axis never changes what the model generates, only how its
tokens are scored, so a conversation recorded live with one axis can be scored with another by reading its
replies back through the model (:func:`probes.audit.score_conversation`, the audit's teacher forcing).
Every session keeps its text, group, category and labels; each turn's ``scores`` become the new axis'
scores at its monitor layer (the scores recorded live move to ``served_scores``). The persona answers of
the evaluation (``eval/results/jailbreak.json``, unsteered) can be added as single-turn sessions of group
``persona`` with ``--jailbreak``; their offline-judge labels come along.

Traffic served with the axis under study (``eval.traffic --axis DIR``) needs no rescoring: ``--served``
keeps the scores it was served with (only the persona replies are judged), and ``--check N`` teacher-forces
N of its sessions to show that the served scores are the ones teacher forcing gives.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tqdm.auto import tqdm

DATA = Path(__file__).resolve().parent / "data"


def messages_of(session: dict) -> list[dict]:
    """The conversation a recorded session held: its system prompt (if any), then user and assistant turns."""
    msgs = [{"role": "system", "content": session["system"]}] if session.get("system") else []
    for t in session["turns"]:
        msgs += [{"role": "user", "content": t["user"]}, {"role": "assistant", "content": t["text"]}]
    return msgs


def jailbreak_sessions(path: Path) -> list[dict]:
    """The unsteered persona answers of ``eval.run``'s jailbreak suite as single-turn sessions."""
    doc = json.loads(path.read_text())
    prompts = {p["name"]: p["prompt"] for p in json.loads((DATA / "personas.json").read_text())["personas"]}
    return [{"id": f"jailbreak-{k:03d}", "group": "persona", "category": "system_single_eval",
             "persona": a["persona"], "system": prompts[a["persona"]], "judge": a["judge"],
             "turns": [{"user": a["question"], "text": a["text"]}]}
            for k, a in enumerate(doc["answers"]["unsteered"])]


def judge_personas(sessions: list[dict]) -> None:
    """Offline-judge labels (0-3, 3: fully in role) for every reply of the persona sessions that have none:
    the role prompt is the system prompt, or for a persona asked for in the user's turn, that first turn.
    ``judge`` on the session is its first reply's score."""
    from calibrate.judge import JudgeItem, make_judge

    judge = make_judge("offline")
    todo = [s for s in sessions if s.get("group") == "persona" and "judge" not in s]
    items = [JudgeItem(s.get("persona") or "persona", s.get("system") or s["turns"][0]["user"], t["user"], t["text"])
             for s in todo for t in s["turns"]]
    scores = iter(judge.score(items)) if items else iter(())
    for s in todo:
        for t in s["turns"]:
            t["judge"] = int(next(scores))
        s["judge"] = s["turns"][0]["judge"] if s["turns"] else None


def rescore(sessions: list[dict], axis_dir: Path) -> list[dict]:
    from probes.artifacts import load_axis
    from probes.audit import score_conversation
    from probes.models import load_model

    art = load_axis(axis_dir, roles=False)
    lm = load_model()
    art.check(lm.model_id, lm.hidden_size, lm.n_layers)
    unit, layer = art.unit(), art.monitor_layer
    out = []
    for s in tqdm(sessions, desc="rescore", unit="session", mininterval=2):
        scored = score_conversation(lm, messages_of(s), unit, layer)
        turns = []
        for t, sc in zip(s["turns"], scored):
            turns.append({**{k: v for k, v in t.items() if k not in ("scores", "pre_cap_scores")},
                          "served_scores": t.get("scores"), "scores": sc.scores, "tokens": sc.tokens})
        out.append({**s, "turns": turns, "axis": str(axis_dir), "layer": layer})
    return out


def served(sessions: list[dict], axis_dir: Path, check: int = 0) -> tuple[list[dict], dict | None]:
    """The sessions as :func:`rescore` writes them, keeping the scores they were served with (the traffic was
    driven with this axis under policy ``observe`` or ``flag``: its scores are the model's own); sessions that
    hold no served scores (``--jailbreak``'s answers) are teacher-forced. With ``check`` > 0, that many served
    sessions (every k-th) are teacher-forced too and compared: ``{"sessions", "tokens", "mean_abs_diff",
    "max_abs_diff", "length_mismatches"}``."""
    from probes.artifacts import load_axis

    layer = load_axis(axis_dir, roles=False).monitor_layer
    have = [s for s in sessions if s["turns"] and all("scores" in t for t in s["turns"])]
    capped = sorted({s["id"] for s in have if s.get("policy") == "cap"})
    if capped:
        raise SystemExit(f"--served: {len(capped)} sessions were served under policy cap (their scores are "
                         f"capped ones), e.g. {capped[0]}: rescore them instead")
    moved = [s for s in have if any(t.get("layer") not in (None, layer) for t in s["turns"])]
    if moved:
        raise SystemExit(f"--served: session {moved[0]['id']} was scored at another layer than {axis_dir}'s "
                         f"monitor layer {layer}: it was served with another axis")
    kept = {s["id"] for s in have}
    forced = {s["id"]: s for s in rescore([s for s in sessions if s["id"] not in kept], axis_dir)} \
        if len(kept) < len(sessions) else {}
    out = [forced[s["id"]] if s["id"] in forced else
           {**s, "turns": [{**t, "served_scores": t["scores"]} for t in s["turns"]], "axis": str(axis_dir),
            "layer": layer} for s in sessions]
    if check <= 0 or not have:
        return out, None
    picked = have[:: max(1, len(have) // check)][:check]
    again = rescore(picked, axis_dir)
    diffs, mismatched = [], 0
    for a, b in zip(picked, again):
        for ta, tb in zip(a["turns"], b["turns"]):
            if len(ta["scores"]) != len(tb["scores"]):
                mismatched += 1
            diffs += [abs(x - y) for x, y in zip(ta["scores"], tb["scores"])]
    return out, {"sessions": len(picked), "tokens": len(diffs), "length_mismatches": mismatched,
                 "mean_abs_diff": sum(diffs) / len(diffs) if diffs else None,
                 "max_abs_diff": max(diffs) if diffs else None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval.rescore", description=__doc__.split("\n\n")[0])
    ap.add_argument("--axis", type=Path, required=True, help="axis folder to score with")
    ap.add_argument("--traffic", type=Path, action="append", default=[], help="eval.traffic output (repeatable)")
    ap.add_argument("--jailbreak", type=Path, default=None, help="eval.run's jailbreak.json: add its persona answers")
    ap.add_argument("--served", action="store_true",
                    help="the traffic was served with --axis (eval.traffic --axis): keep its scores, only judge")
    ap.add_argument("--check", type=int, default=0, metavar="N",
                    help="with --served: teacher-force N sessions and compare them with the served scores")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if args.check and not args.served:
        ap.error("--check compares served scores with teacher forcing: give --served too")
    sessions = [s for p in args.traffic for s in json.loads(p.read_text())]
    if args.jailbreak is not None:
        sessions += jailbreak_sessions(args.jailbreak)
    if not sessions:
        ap.error("nothing to score: give --traffic and/or --jailbreak")
    judge_personas(sessions)
    if args.served:
        out, parity = served(sessions, args.axis, args.check)
        if parity is not None:
            print(f"served vs teacher-forced scores over {parity['sessions']} sessions ({parity['tokens']} tokens): "
                  f"mean |diff| {parity['mean_abs_diff']:.4f}, max {parity['max_abs_diff']:.4f}, "
                  f"{parity['length_mismatches']} turns of another length")
    else:
        out = rescore(sessions, args.axis)
    args.out.write_text(json.dumps(out) + "\n")
    print(f"{len(out)} sessions scored with {args.axis} written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
