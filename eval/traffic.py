"""Many conversations driven live through ``axiswatch serve``, each at its own pace:
``python -m eval.traffic --out eval/results/traffic_observe.json`` (about two hours on 2 CPU cores).

:func:`drive` runs every conversation's user turns in order, one conversation
per worker thread, so the server's batcher batches whatever turns are waiting
(no lock-step between conversations: a short greeting does not wait for a long
story). After the last turn each session is read back from the store
(``GET /v1/sessions/{id}``) for its token pieces, pre-cap scores, stored states
and alerts. Greedy decoding, no system prompt; every session gets the given
policy.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from tqdm.auto import tqdm

from eval.live import Server, _post
from monitor.replay import tracked_scores

DATA = Path(__file__).resolve().parent / "data"
DRIFTING_DOMAINS = ("therapy", "philosophy")


def drive(server: Server, convs: list[dict], policy: str, max_tokens: int, run_id: str, workers: int = 48,
          on_turn: Callable[[int], None] | None = None) -> list[dict]:
    """One record per conversation: ``{id, group, category, policy, session_id, turns: [...], alerts}``."""
    sessions = [{"id": c["id"], "group": c["group"], "category": c.get("category") or c.get("domain") or c.get("kind"),
                 "policy": policy, "session_id": f"traffic-{run_id}-{policy}-{c['id']}", "user_turns": c["turns"],
                 "system": c.get("system"), "persona": c.get("persona"), "turns": []} for c in convs]

    with httpx.Client(limits=httpx.Limits(max_connections=workers + 4)) as client:
        def one(s: dict) -> None:
            history: list[dict] = [{"role": "system", "content": s["system"]}] if s["system"] else []
            for user in s["user_turns"]:
                history.append({"role": "user", "content": user})
                body = _post(client, server, s["session_id"], policy, list(history), max_tokens)
                aw, text = body["axiswatch"], body["choices"][0]["message"]["content"]
                history.append({"role": "assistant", "content": text})
                s["turns"].append({"user": user, "text": text, "scores": aw["scores"], "layer": aw.get("layer"),
                                   "mean": aw["mean"],
                                   "state": aw["state"], "running": aw.get("running"), "capped": aw["capped"],
                                   "turn_index": aw["turn"], "finish_reason": body["choices"][0]["finish_reason"]})
                if on_turn is not None:
                    on_turn(len(aw["scores"]))

        with ThreadPoolExecutor(max_workers=workers) as pool:
            for f in [pool.submit(one, s) for s in sessions]:
                f.result()  # a failed conversation fails the run, with its message
        read_back(client, server, sessions)
    for s in sessions:
        del s["user_turns"]
    return sessions


def read_back(client: httpx.Client, server: Server, sessions: list[dict], timeout_s: float = 180.0) -> None:
    """Token pieces, pre-cap scores, capping flags, stored states and alerts from the store (the
    persistence worker writes them a moment after each turn)."""
    deadline = time.monotonic() + timeout_s
    for s in sessions:
        want = len(s["turns"])
        while True:
            r = client.get(f"{server.url}/v1/sessions/{s['session_id']}", headers=server.headers(), timeout=60)
            doc = r.json() if r.status_code == 200 else {}
            rows = [t for t in doc.get("turns", []) if t["role"] == "assistant"]
            if len(rows) >= want or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        by_turn = {t["turn"]: t for t in rows}
        s["stored"] = len(rows) >= want
        s["alerts"] = [{k: a.get(k) for k in ("turn", "token_index", "level", "score", "threshold")}
                       for a in doc.get("alerts", [])]
        s["interventions"] = doc.get("interventions", [])
        for t in s["turns"]:
            row = by_turn.get(t["turn_index"]) or {}
            t["tokens"] = row.get("tokens") or []
            t["pre_cap_scores"] = tracked_scores(t["scores"], row.get("pre_cap_scores"))
            t["cap_flags"] = row.get("capped") or [False] * len(t["scores"])
            t["stored_state"] = row.get("state")


SETS = ("benign", "drift", "scripts", "persona")


def load_traffic(sets: tuple[str, ...] = SETS) -> list[dict]:
    """The benign traffic set, the drifting conversations, the evaluation's 20 scripts (coding and writing
    count as benign, therapy and philosophy as drifting) and the held-out persona sessions (a persona in the
    system prompt or asked for in the user's first turn; group ``persona``); the longest conversations first."""
    convs: list[dict] = []
    if "benign" in sets:
        convs += [{**c, "group": "benign"} for c in json.loads((DATA / "benign_traffic.json").read_text())["conversations"]]
    if "drift" in sets:
        convs += [{**c, "group": "drift"}
                  for c in json.loads((DATA / "drift_conversations.json").read_text())["conversations"]]
    if "scripts" in sets:
        for dom, cs in json.loads((DATA / "conversations.json").read_text())["domains"].items():
            grp = "drift-eval" if dom in DRIFTING_DOMAINS else "benign-eval"
            convs += [{**c, "domain": dom, "category": dom, "group": grp} for c in cs]
    if "persona" in sets:
        convs += [{**c, "category": c["kind"], "group": "persona"}
                  for c in json.loads((DATA / "persona_traffic.json").read_text())["sessions"]]
    return sorted(convs, key=lambda c: -len(c["turns"]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval.traffic", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--policy", default="observe", choices=["observe", "flag", "cap"])
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--limit", type=int, default=None, help="only the first N conversations (a smoke run)")
    ap.add_argument("--skip-done", type=Path, default=None, metavar="FILE",
                    help="leave out the conversations an earlier run already wrote to FILE (its ids)")
    ap.add_argument("--sets", default=",".join(SETS),
                    help=f"comma-separated traffic sets to drive (default: all of {', '.join(SETS)})")
    ap.add_argument("--axis", type=Path, default=None, metavar="DIR",
                    help="serve this axis folder (its calibrated alerting) instead of the shipped default")
    args = ap.parse_args(argv)
    sets = tuple(x.strip() for x in args.sets.split(",") if x.strip())
    if not sets or any(x not in SETS for x in sets):
        ap.error(f"--sets takes a comma-separated subset of {', '.join(SETS)}")
    convs = load_traffic(sets)
    if args.skip_done is not None:
        done = {s["id"] for s in json.loads(args.skip_done.read_text())}
        convs = [c for c in convs if c["id"] not in done]
    convs = convs[: args.limit]
    budget = sum(len(c["turns"]) for c in convs) * args.max_tokens
    with tempfile.TemporaryDirectory(prefix="axiswatch-traffic-") as tmp, Server(Path(tmp), batch_size=48, axis=args.axis) as srv, \
            tqdm(total=budget, unit="tok", desc=f"{len(convs)} conversations", mininterval=2) as bar:
        out = drive(srv, convs, args.policy, args.max_tokens, time.strftime("%Y%m%d%H%M%S"),
                    on_turn=lambda n: bar.update(args.max_tokens))
    args.out.write_text(json.dumps(out) + "\n")
    print(f"{len(out)} sessions written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
