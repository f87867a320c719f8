"""Stored traffic scored again with another axis, by teacher forcing: what ``serve`` would have scored.

``python -m eval.rescore --axis DIR --traffic eval/results/traffic_observe.json --out runs/rescored.json``

Under policy ``observe`` (and ``flag``) the axis never changes what the model generates, only how its
tokens are scored, so a conversation recorded live with one axis can be scored with another by reading its
replies back through the model (:func:`probes.audit.score_conversation`, the audit's teacher forcing).
Every session keeps its text, group, category and labels; each turn's ``scores`` become the new axis'
scores at its monitor layer (the scores recorded live move to ``served_scores``). The persona answers of
the evaluation (``eval/results/jailbreak.json``, unsteered) can be added as single-turn sessions of group
``persona`` with ``--jailbreak``; their offline-judge labels come along.
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval.rescore", description=__doc__.split("\n\n")[0])
    ap.add_argument("--axis", type=Path, required=True, help="axis folder to score with")
    ap.add_argument("--traffic", type=Path, action="append", default=[], help="eval.traffic output (repeatable)")
    ap.add_argument("--jailbreak", type=Path, default=None, help="eval.run's jailbreak.json: add its persona answers")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    sessions = [s for p in args.traffic for s in json.loads(p.read_text())]
    if args.jailbreak is not None:
        sessions += jailbreak_sessions(args.jailbreak)
    if not sessions:
        ap.error("nothing to score: give --traffic and/or --jailbreak")
    judge_personas(sessions)
    out = rescore(sessions, args.axis)
    args.out.write_text(json.dumps(out) + "\n")
    print(f"{len(out)} sessions scored with {args.axis} written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
