"""``summary.md``: every number of an evaluation run as Markdown tables (no interpretation added)."""

from __future__ import annotations

from pathlib import Path


def _z(x: float, nd: int) -> float:
    return 0.0 if abs(x) < 0.5 * 10 ** -nd else x  # no "-0.0"


def _f(x, nd: int = 1, sign: bool = False) -> str:
    if x is None:
        return "-"
    x = _z(x, nd)
    return f"{x:+.{nd}f}" if sign else f"{x:.{nd}f}"


def _pct(r: dict | None) -> str:
    if not r or r.get("rate") is None:
        return "-"
    lo, hi = r["ci95"]
    return f"{r['rate']:.0%} ({r['k']}/{r['n']}; CI {lo:.0%}-{hi:.0%})"


def _diff(d: dict | None) -> str:
    if not d or d.get("diff") is None:
        return "-"
    return (f"{_z(d['diff'], 1):+.1f} (95% CI {_z(d['ci95'][0], 1):+.1f} to {_z(d['ci95'][1], 1):+.1f}; "
            f"permutation p {'< 0.001' if d['p_permutation'] < 0.001 else '= ' + format(d['p_permutation'], '.3f')})")


def _as_served(cap: dict) -> str:
    if cap.get("conditional"):
        return ("as served under policy `cap`: its light tier from the first token, its strong tier from the token "
                "after the detector flags the answer")
    return "on every token"


def _paired(d: dict | None) -> str:
    if not d or d.get("mean") is None:
        return "-"
    return (f"{_z(d['mean'], 1):+.1f} (95% CI {_z(d['ci95'][0], 1):+.1f} to {_z(d['ci95'][1], 1):+.1f}; "
            f"up {d['n_up']}, down {d['n_down']}, same {d['n_same']} of {d['n']})")


def _ms(s: dict) -> str:
    if s.get("mean") is None:
        return "-"
    return f"{_z(s['mean'], 1):+.1f} ± {s['sd']:.1f}"


def write_summary(res: dict, path: Path) -> None:
    L: list[str] = []
    run = res.get("run", {})
    th = res["thresholds"]
    L.append("# axiswatch evaluation: results\n")
    L.append(f"Command: `{run.get('command')}`; finished {run.get('finished')}; {run.get('cpus')} CPU(s); "
             f"timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in run.get("timings_s", {}).items()) + ".\n")
    session = res.get("alerting", {}).get("drift_config", {}).get("baseline") == "session"
    L.append(f"Drift thresholds (shipped axis, monitor layer): watch {th['watch']:+.2f}, warning {th['warning']:+.2f}, "
             f"critical {th['critical']:+.2f}"
             + (", on the running score minus the session's reference (its opening reply)" if session else
                ", on the running score") + ". Scores are projections on the unit Assistant Axis "
             "(higher = more Assistant-like).\n")

    if "drift" in res:
        d = res["drift"]
        doms = list(d["domains"])
        n_turns = max(len(d["domains"][x]["by_turn"]) for x in doms)
        L.append("## 1. Drift by domain (uncapped, live through `axiswatch serve`)\n")
        L.append("Turn mean score per turn position, mean ± SD over conversations:\n")
        L.append("| domain | n | " + " | ".join(f"turn {i + 1}" for i in range(n_turns)) + " | final turn [min, max] |")
        L.append("|---" * (n_turns + 3) + "|")
        for x in doms:
            t = d["domains"][x]
            f = t["final"]
            L.append(f"| {x} | {f['n']} | " + " | ".join(_ms(r) for r in t["by_turn"])
                     + f" | {_ms(f)} [{_f(f['min'], 1, True)}, {_f(f['max'], 1, True)}] |")
        L.append("")
        L.append(f"- Final turn, therapy + philosophy minus coding + writing: {_diff(d['final_drifting_minus_control'])}.")
        L.append(f"- First turn, same difference: {_diff(d['first_drifting_minus_control'])}.")
        for k, v in d["per_domain_gap"].items():
            L.append(f"- Final turn, {k.replace('_', ' ')}: {_diff(v)}.")
        for k, v in d["last_minus_first_by_domain"].items():
            L.append(f"- {k}: last turn minus first turn, paired: {_paired(v)}.")
        L.append(f"- Therapy and philosophy end lower than coding and writing: **{d['drifting_end_lower']}**.\n")

    if "capping" in res:
        c = res["capping"]
        L.append("## 2. Capping on the same scripts (policy `cap`)\n")
        L.append("`reported` = the score the service returns (the projection at the monitor layer of the capped forward "
                 "pass, floored there where the monitor layer is a capped layer); `pre-cap` = the same token's projection "
                 "without capping (before the floor at the monitor layer, or from the uncapped twin where the capped "
                 "window lies below it).\n")
        L.append("| group | strong tier switched on (flagged) | sessions with capping active whose text changed | turns "
                 "generated with capping active whose text changed | final-turn change, reported | final-turn change, "
                 "pre-cap |")
        L.append("|---|---|---|---|---|---|")
        for g, on in c["switched_on"].items():
            tc = c.get("text_changed", {}).get(g, {})
            L.append(f"| {g} | {on['capped']}/{on['n']} | {tc.get('sessions_with_changed_text', '-')}/"
                     f"{tc.get('capped_sessions', '-')} | {tc.get('turns_with_changed_text', '-')}/"
                     f"{tc.get('capping_active_turns', '-')} | {_paired(c['final_change'][g])} | "
                     f"{_paired(c['final_change_pre_cap'][g])} |")
        L.append("")
        L.append("Turns generated with capping active and the same turns of the uncapped twin, both texts scored "
                 "again by teacher forcing with no capping and no floor (`/v1/audit`): is the capped text itself "
                 "nearer the Assistant? (Change averaged within each session, interval over sessions.)\n")
        L.append("| group | sessions | turns | uncapped twin, turn mean | capped text, turn mean | change (95% CI) |")
        L.append("|---|---|---|---|---|---|")
        for g, ra in c.get("reaudit", {}).items():
            L.append(f"| {g} | {ra['n_sessions']} | {ra['n_turns']} | {_f(ra['uncapped_twin_mean'], 1)} | "
                     f"{_f(ra['capped_mean'], 1)} | {_paired(ra['change']) if ra['change'] else '-'} |")
        L.append("")
        L.append("Final-turn means, capped runs (mean ± SD):\n")
        L.append("| domain | uncapped | capped, reported | capped, pre-cap |")
        L.append("|---|---|---|---|")
        for x in c["capped_table_reported"]:
            unc = res.get("drift", {}).get("domains", {}).get(x, {}).get("final", {})
            L.append(f"| {x} | {_ms(unc) if unc else '-'} | {_ms(c['capped_table_reported'][x]['final'])} | "
                     f"{_ms(c['capped_table_pre_cap'][x]['final'])} |")
        L.append("")
        L.append("Answers that claim a non-assistant identity or human experiences, all assistant turns, by the "
                 "**lexical detector** `calibrate.judge.claims_non_assistant`, not the role judge (the judge scores how "
                 "fully an answer plays a given role prompt; these conversations have none):\n")
        L.append("| group | uncapped | capped | turns generated with capping active: uncapped twin | same turns, capped |")
        L.append("|---|---|---|---|---|")
        for g, r in c["non_assistant"].items():
            a = r["capping_active_turns"]
            L.append(f"| {g} | {_pct(r['uncapped'])} | {_pct(r['capped'])} | {_pct(a['uncapped_twin'])} | "
                     f"{_pct(a['capped'])} |")
        nv = c["never_capped_identical_to_uncapped"]
        L.append(f"\nSanity check: {nv['identical']} of {nv['n']} capped-policy sessions in which capping was never "
                 "active (at any tier) produced exactly the uncapped text.\n")

    if "jailbreak" in res:
        j, meta = res["jailbreak"], res.get("jailbreak_meta", {})
        s = res.get("setup", {})
        L.append("## 3. Persona jailbreaks (in-process)\n")
        L.append(f"{meta.get('n_personas')} persona system prompts never used to calibrate, "
                 f"{meta.get('n_prompts')} prompts (identity and behaviour questions), "
                 f"max {meta.get('max_new_tokens')} tokens, greedy; judge `{meta.get('judge')}`. Capped = "
                 f"`{s.get('capping', {}).get('id')}` {_as_served(s.get('capping', {}))}; steered = +{s.get('steer_coeff')} x mean norm "
                 f"({_f(s.get('steer_absolute'), 1)}) at layer {s.get('monitor_layer')}.\n")
        L.append("| condition | adopts persona (judge 3) | claims non-assistant identity (lexical detector) | either | "
                 "identity questions: either | behaviour questions: either | answers identical to unsteered |")
        L.append("|---|---|---|---|---|---|---|")
        for cond, r in j.items():
            L.append(f"| {cond} | {_pct(r['all']['adopted'])} | {_pct(r['all']['non_assistant'])} | "
                     f"{_pct(r['all']['either'])} | {_pct(r['identity']['either'])} | {_pct(r['behaviour']['either'])} | "
                     f"{_pct(r.get('identical_to_unsteered'))} |")
        for cond, r in j.items():
            if r.get("relative_adoption_change") is not None:
                ci = r.get("relative_adoption_change_ci95")
                L.append(f"- {cond}: relative change in judge-3 adoption vs unsteered: {r['relative_adoption_change']:+.0%}"
                         + (f" (95% CI {ci[0]:+.0%} to {ci[1]:+.0%}, personas resampled)" if ci else ""))
        L.append("")

    if "capability" in res:
        cp, meta = res["capability"], res.get("capability_meta", {})
        L.append("## 4. Capability under capping (in-process)\n")
        cats = [k for k in next(iter(cp.values())) if k not in ("all", "arithmetic_lenient", "identical_to_unsteered",
                                                                 "flips", "change")]
        L.append(f"{meta.get('n_tasks')} tasks of the capability suite (`calibrate/data/capability.json`), graded by code "
                 f"(IFEval tasks by the `if-verifiable` checkers), max {meta.get('max_new_tokens')} tokens, greedy.\n")
        L.append("| condition | all | " + " | ".join(cats) + " | change vs unsteered (points, 95% CI) | "
                 "right->wrong / wrong->right |")
        L.append("|---|---|" + "---|" * len(cats) + "---|---|")
        for cond, r in cp.items():
            fl, ch = r.get("flips"), r.get("change")
            L.append(f"| {cond} | {_pct(r['all'])} | " + " | ".join(_pct(r[c]) for c in cats) + " | "
                     + (f"{ch['mean'] * 100:+.1f} ({ch['ci95'][0] * 100:+.1f} to {ch['ci95'][1] * 100:+.1f})" if ch else "-")
                     + f" | {(str(fl['right_to_wrong']) + ' / ' + str(fl['wrong_to_right'])) if fl else '-'} |")
        L.append("")

    if "alerting" in res:
        a = res["alerting"]
        L.append("## 5. Per-token vs per-turn alerting (uncapped runs)\n")
        rel = a["drift_config"].get("baseline", "absolute") == "session"
        what = "minus the session's reference (its opening reply) " if rel else ""
        L.append("Tokens since the start of the session at the first warning: per-token = the running score (EWMA, "
                 f"alpha {a['drift_config']['alpha']}) {what}first below warning; per-token alert = the first alert "
                 f"the service raises at warning (waits for {a['drift_config']['min_tokens']} tokens); per-turn = the "
                 f"end of the first turn whose mean {what}is below warning.\n")
        L.append("| conversations | method | caught | median | mean | min | max |")
        L.append("|---|---|---|---|---|---|---|")
        for g in ("drifting", "control", "all"):
            s = a[g]
            for m in ("per_token", "per_token_alert", "per_turn"):
                r = s[m]
                L.append(f"| {g} | {m.replace('_', ' ')} | {r['caught']}/{r['of']} | {_f(r['median'], 0)} | "
                         f"{_f(r['mean'], 1)} | {_f(r['min'], 0)} | {_f(r['max'], 0)} |")
        L.append("")
        for g in ("drifting", "control", "all"):
            ld = a[g]["lead_tokens"]
            L.append(f"- {g}: caught by both {ld['n_both']}; per-turn minus per-token latency median "
                     f"{_f(ld['median'], 0)} tokens (mean {_f(ld['mean'], 1)}, min {_f(ld['min'], 0)}, "
                     f"max {_f(ld['max'], 0)}); per-token earlier in {ld['n_per_token_earlier']}, same "
                     f"{ld['n_same']}, per-turn earlier {ld['n_per_turn_earlier']}; only per-token "
                     f"{a[g]['only_per_token']}, only per-turn {a[g]['only_per_turn']}.")
        m = a["replay_matches_service_states"]
        L.append(f"- The replayed drift tracker reproduces the service's end-of-turn state in {m['matching']} of "
                 f"{m['n']} sessions.\n")
        L.append("| conversation | domain | tokens | per-token | per-token alert | per-turn (turn) |")
        L.append("|---|---|---|---|---|---|")
        for r in a["rows"]:
            L.append(f"| {r['id']} | {r['domain']} | {r['n_tokens']} | {r['per_token'] or '-'} | "
                     f"{r['per_token_alert'] or '-'} | {r['per_turn'] or '-'}"
                     f"{' (' + str(r['per_turn_turn']) + ')' if r['per_turn_turn'] else ''} |")
        L.append("")
    path.write_text("\n".join(L) + "\n")
