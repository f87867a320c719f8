"""Regenerate the whole evaluation: ``python -m eval.run [--quick] [--out DIR]``.

1. drift by domain and 2. capping on drifting conversations: 20 scripted
   conversations (4 domains x 5, 6 user turns) driven live through a real
   ``axiswatch serve`` process, once with policy ``observe`` and once with
   policy ``cap``, all 40 sessions of a turn sent at once;
3. persona jailbreaks and 4. capability under capping: in-process, unsteered vs
   capped vs steered toward the Assistant;
5. per-token vs per-turn alerting: replayed from the uncapped live sessions.

Writes ``*.json``, ``*.png`` and ``summary.md`` into ``--out`` (default
``eval/results``; ``--quick``, a smoke run on a tiny subset, defaults to
``runs/eval-quick`` so it never overwrites the committed results).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"

# Rates calibrated on the committed full run (eval/results/summary.json "run": `python -m eval.run`, 2 CPU
# cores, idle apart from the run, finished 2026-12-07, the register-balanced axis and its two-tier capping
# config at layers 15-23, below the monitor layer: capped sessions run an uncapped twin). Its phases took:
# serve start + stop 5.5 s, live 515.2 s, model load 2.6 s, jailbreaks 158.5 s, capability 196.0 s (total
# 880.7 s). The live formula keeps its shape (decode plus re-reading the growing conversation, in the 1 : 15
# ratio of the first probes), its rates scaled so it gives the measured 515.2 s; each in-process phase gets
# its own rate per budget token (the jailbreak prompts carry persona system prompts). A run on cores another
# test suite shared took 1.7x as long: other loads stretch it.
LIVE_ROW_TOKENS_PER_S = 38.58  # decoding through serve, per session
PREFILL_TOKENS_PER_S = 578.7  # each turn re-reads the whole conversation
JAILBREAK_BUDGET_TOKENS_PER_S = 167.14  # 3 x 184 prompts x 48 tokens = 26496 budget tokens in 158.5 s
TASK_BUDGET_TOKENS_PER_S = 195.94  # 3 x 200 tasks x 64 tokens = 38400 budget tokens in 196.0 s
SERVE_START_STOP_S = 5.5
MODEL_LOAD_S = 2.62


def estimate_seconds(n_sessions: int, n_turns: int, live_max_tokens: int, jailbreak_budget: int,
                     task_budget: int) -> float:
    """Wall-time estimate on this machine's 2 CPU cores, calibrated on the committed run (see above)."""
    live = 0.0
    for t in range(n_turns):
        context = 60 + t * (live_max_tokens + 25)  # system template + user turns + earlier replies, per session
        live += n_sessions * (live_max_tokens / LIVE_ROW_TOKENS_PER_S + context / PREFILL_TOKENS_PER_S)
    inproc = jailbreak_budget / JAILBREAK_BUDGET_TOKENS_PER_S + task_budget / TASK_BUDGET_TOKENS_PER_S
    return (SERVE_START_STOP_S + live if n_turns else 0.0) + (MODEL_LOAD_S + inproc if inproc else 0.0)


@dataclass(frozen=True)
class Plan:
    per_domain: int | None
    turns: int | None
    live_max_tokens: int
    n_personas: int | None
    per_kind: int
    jailbreak_max_tokens: int
    tasks_per_kind: int | None
    task_max_tokens: int
    batch_size: int


FULL = Plan(per_domain=None, turns=None, live_max_tokens=64, n_personas=None, per_kind=2, jailbreak_max_tokens=48,
            tasks_per_kind=40, task_max_tokens=64, batch_size=32)
QUICK = Plan(per_domain=1, turns=2, live_max_tokens=16, n_personas=4, per_kind=1, jailbreak_max_tokens=16,
             tasks_per_kind=2, task_max_tokens=24, batch_size=32)


def _round(x, nd=3):
    if isinstance(x, float):
        return round(x, nd)
    if isinstance(x, list):
        return [_round(v, nd) for v in x]
    if isinstance(x, dict):
        return {k: _round(v, nd) for k, v in x.items()}
    return x


def _dump(obj, path: Path, nd: int = 4) -> None:
    path.write_text(json.dumps(_round(obj, nd), indent=1, ensure_ascii=False) + "\n")


def select_tasks(tasks: list[dict], per_kind: int | None) -> list[dict]:
    if per_kind is None:
        return tasks
    out, seen = [], {}
    for t in tasks:
        if seen.get(t["category"], 0) < per_kind:
            out.append(t)
            seen[t["category"]] = seen.get(t["category"], 0) + 1
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run on a tiny subset (about a minute)")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default eval/results; quick: runs/eval-quick)")
    ap.add_argument("--skip-live", action="store_true", help="skip items 1, 2, 5 (reuse nothing; for debugging)")
    ap.add_argument("--skip-inproc", action="store_true", help="skip items 3 and 4 (for debugging)")
    ap.add_argument("--reanalyse", action="store_true",
                    help="only recompute summaries, plots and summary.md from the raw JSON already in --out")
    args = ap.parse_args(argv)
    plan = QUICK if args.quick else FULL
    out = args.out or (Path("runs/eval-quick") if args.quick else HERE / "results")
    if args.reanalyse:
        return reanalyse(out)
    out.mkdir(parents=True, exist_ok=True)

    from calibrate.capability import load_tasks
    from eval import inproc, live
    from monitor.settings import Settings, shipped_dir
    from probes.artifacts import load_axis

    axis = load_axis(shipped_dir(), roles=False)
    thresholds, drift_cfg = Settings().drift_setup(axis.calibration)  # what serve runs with
    scripts = live.load_conversations(DATA / "conversations.json", plan.per_domain, plan.turns)
    personas = inproc.load(DATA / "personas.json")
    jobs = inproc.persona_jobs(personas, plan.n_personas, plan.per_kind)
    tasks = select_tasks(load_tasks(), plan.tasks_per_kind)
    n_turns = max(len(s["turns"]) for s in scripts)
    n_sessions = 2 * len(scripts)

    live_budget = 0 if args.skip_live else n_sessions * n_turns * plan.live_max_tokens
    jb_budget = 0 if args.skip_inproc else 3 * len(jobs) * plan.jailbreak_max_tokens
    task_budget = 0 if args.skip_inproc else 3 * len(tasks) * plan.task_max_tokens
    est = estimate_seconds(n_sessions, 0 if args.skip_live else n_turns, plan.live_max_tokens, jb_budget, task_budget)
    print(f"axiswatch evaluation ({'quick' if args.quick else 'full'}) -> {out}\n"
          f"  live: {len(scripts)} scripts x 2 policies = {n_sessions} sessions x {n_turns} turns, "
          f"max {plan.live_max_tokens} tokens\n"
          f"  jailbreaks: {len(jobs)} prompts ({len({j['persona']['name'] for j in jobs})} personas) x 3 conditions, "
          f"max {plan.jailbreak_max_tokens} tokens\n"
          f"  capability: {len(tasks)} tasks x 3 conditions, max {plan.task_max_tokens} tokens\n"
          f"  estimated time: about {est / 60:.0f} min (calibrated on a full run on 2 CPU cores shared with another "
          "test suite; other loads change it; progress bar below, counting the token budget)",
          flush=True)

    t_start = time.time()
    timings = {}
    bar = tqdm(total=live_budget + jb_budget + task_budget, unit="tok", desc="eval", mininterval=1.0,
               bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} tokens budget [{elapsed}<{remaining}] {postfix}")
    results: dict = {"plan": plan.__dict__, "thresholds": thresholds.as_dict()}
    try:
        if not args.skip_live:
            bar.set_postfix_str("starting axiswatch serve")
            t0 = time.time()
            with tempfile.TemporaryDirectory(prefix="axiswatch-eval-") as tmp, \
                    live.Server(Path(tmp), batch_size=n_sessions) as server:
                timings["serve_startup_s"] = time.time() - t0
                t1 = time.time()
                run_id = time.strftime("%Y%m%d%H%M%S")

                def on_turn(turn, _n_tok):
                    bar.update(n_sessions * plan.live_max_tokens)
                    bar.set_postfix_str(f"live turn {turn + 1}/{n_turns}")

                bar.set_postfix_str(f"live turn 1/{n_turns}")
                sessions = live.drive(server, scripts, plan.live_max_tokens, run_id, on_turn)
                timings["live_s"] = time.time() - t1
                server_log = server.log_tail(4000)
            timings["live_total_s"] = time.time() - t0
            _dump({"max_tokens": plan.live_max_tokens, "thresholds": thresholds.as_dict(),
                   "drift_config": dict(drift_cfg.__dict__), "sessions": sessions,
                   "server_log_tail": server_log}, out / "live_sessions.json", nd=6)
            # analysed from the file just written, so --reanalyse reproduces every number exactly
            sessions = json.loads((out / "live_sessions.json").read_text())["sessions"]
            results.update(analyse_live(sessions, thresholds, drift_cfg, out))
        if not args.skip_inproc:
            bar.set_postfix_str("loading the model in-process")
            t0 = time.time()
            runner = inproc.Runner(batch_size=plan.batch_size)
            timings["model_load_s"] = time.time() - t0
            t1 = time.time()
            bar.set_postfix_str("persona jailbreaks")
            jb = inproc.run_jailbreaks(runner, personas, jobs, plan.jailbreak_max_tokens,
                                       lambda n: bar.update(n * plan.jailbreak_max_tokens))
            timings["jailbreak_s"] = time.time() - t1
            t1 = time.time()
            bar.set_postfix_str("capability tasks")
            cap = inproc.run_capability(runner, tasks, plan.task_max_tokens,
                                        lambda n: bar.update(n * plan.task_max_tokens))
            timings["capability_s"] = time.time() - t1
            results.update(analyse_inproc(jb, cap, runner.setup, out))
    finally:
        bar.close()
    timings["total_s"] = time.time() - t_start
    finish(results, out, {"command": "python -m eval.run" + (" --quick" if args.quick else ""), "timings_s": timings,
                      "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "python": platform.python_version(),
                      "machine": platform.machine(), "cpus": _cpus()})
    print(f"done in {timings['total_s'] / 60:.1f} min; results in {out} (summary.md)")
    return 0


def analyse_live(sessions: list[dict], thresholds, drift_cfg, out: Path) -> dict:
    """Items 1, 2, 5 from the raw live sessions: summaries (JSON) and plots."""
    from eval import aggregate, plots

    domains = [d for d in aggregate.DOMAINS if any(s["domain"] == d for s in sessions)]
    drift = aggregate.drift_summary(sessions, domains)
    capping = aggregate.capping_summary(sessions, domains)
    alerting = aggregate.alerting_summary(sessions, thresholds, drift_cfg)
    _dump(drift, out / "drift_by_domain.json")
    _dump(capping, out / "capping_drift.json")
    _dump(alerting, out / "alerting.json")
    raw_th = thresholds.as_dict() if drift_cfg.baseline == "absolute" else None  # lines on raw scores only
    plots.drift_by_domain(drift, sessions, raw_th, out / "drift_by_domain.png")
    plots.capping_trajectories(drift, capping, raw_th, out / "capping_trajectories.png")
    plots.alerting(alerting, out / "alerting.png")
    return {"drift": drift, "capping": capping, "alerting": alerting}


def analyse_inproc(jb: dict, cap: dict, setup: dict, out: Path) -> dict:
    """Items 3 and 4 from the raw answers: summaries (JSON) and plots."""
    from calibrate.capability import load_tasks
    from eval import aggregate, inproc, plots

    cap = inproc.regrade(cap, load_tasks())  # graders run on the stored texts
    jb_sum, cap_sum = aggregate.jailbreak_summary(jb), aggregate.capability_summary(cap)
    # on --reanalyse jb and cap are the files written before, summary and setup included: drop those,
    # so the fresh summary is what gets written (``**jb`` last would put the stale one back)
    methods = {"adopted": f"role judge {jb.get('judge')}: score 3 (fully in role)",
               "non_assistant": aggregate.NON_ASSISTANT_METHOD}
    _dump({"summary": jb_sum, "setup": setup, "methods": methods, **_raw(jb)}, out / "jailbreak.json")
    _dump({"summary": cap_sum, "setup": setup, **_raw(cap)}, out / "capability.json")
    plots.jailbreak(jb_sum, jb["n_prompts"], jb["n_personas"], setup.get("steer_coeff", inproc.STEER_COEFF),
                    out / "jailbreak.png")
    plots.capability(cap_sum, cap["n_tasks"], out / "capability.png")
    return {"jailbreak": jb_sum, "capability": cap_sum, "setup": setup,
            "jailbreak_meta": {"methods": methods, **{k: v for k, v in _raw(jb).items() if k != "answers"}},
            "capability_meta": {k: v for k, v in _raw(cap).items() if k != "answers"}}


_DERIVED = ("summary", "setup", "methods")  # keys analyse_inproc writes itself; everything else in the raw files is kept


def _raw(doc: dict) -> dict:
    return {k: v for k, v in doc.items() if k not in _DERIVED}


def finish(results: dict, out: Path, run: dict) -> None:
    from eval.summary import write_summary

    results["run"] = run
    _dump(results, out / "summary.json")
    write_summary(results, out / "summary.md")


def reanalyse(out: Path) -> int:
    """Recompute every summary, plot and summary.md from the raw files of an earlier run in ``out``
    (live_sessions.json, jailbreak.json, capability.json); nothing is generated again."""
    from monitor.drift import DriftConfig, Thresholds

    prev = json.loads((out / "summary.json").read_text())
    results = {k: prev[k] for k in ("plan", "thresholds") if k in prev}
    if (out / "live_sessions.json").exists():
        raw = json.loads((out / "live_sessions.json").read_text())
        # the settings the run was made with (a run from before the session baseline: the absolute running score)
        cfg = DriftConfig(**raw.get("drift_config", {"baseline": "absolute"}))
        results.update(analyse_live(raw["sessions"], Thresholds(**raw["thresholds"]), cfg, out))
    if (out / "jailbreak.json").exists() and (out / "capability.json").exists():
        jb, cap = json.loads((out / "jailbreak.json").read_text()), json.loads((out / "capability.json").read_text())
        results.update(analyse_inproc(jb, cap, jb.get("setup", {}), out))
    finish(results, out, prev.get("run", {}))
    print(f"re-analysed {out}")
    return 0


def _cpus() -> int | None:
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count()


if __name__ == "__main__":
    sys.exit(main())
