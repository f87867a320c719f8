"""The evaluation's figures (matplotlib, Agg backend; one PNG per item)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from eval.stats import turn_means

COLORS = {"coding": "#1f77b4", "writing": "#2ca02c", "therapy": "#d62728", "philosophy": "#9467bd"}
COND_COLORS = {"unsteered": "#7f7f7f", "capped": "#ff7f0e", "steered": "#1f77b4"}


def _thresholds(ax, th: dict | None, labels: bool = True) -> None:
    """Threshold lines on a plot of raw scores: only when the thresholds are raw scores (baseline
    ``absolute``); drift-relative thresholds (``th`` None) apply to each session's own reference."""
    if th is None:
        return
    for name, style in (("watch", ":"), ("warning", "--"), ("critical", "-.")):
        ax.axhline(th[name], color="black", lw=0.9, ls=style, alpha=0.6, label=f"{name} threshold" if labels else None)


def drift_by_domain(summary: dict, sessions: list[dict], th: dict | None, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(9, 6.5))
    for d, tab in summary["domains"].items():
        xs = [r["turn"] for r in tab["by_turn"]]
        mean = [r["mean"] for r in tab["by_turn"]]
        sd = [r["sd"] or 0.0 for r in tab["by_turn"]]
        c = COLORS.get(d)
        for s in sessions:
            if s["policy"] == "observe" and s["domain"] == d:
                ax.plot(xs, turn_means(s), color=c, lw=0.7, alpha=0.3)
        ax.plot(xs, mean, color=c, lw=2.4, marker="o", label=f"{d} (mean of {tab['by_turn'][0]['n']}, band = ±1 SD)")
        ax.fill_between(xs, [m - s for m, s in zip(mean, sd)], [m + s for m, s in zip(mean, sd)], color=c, alpha=0.12)
    _thresholds(ax, th)
    ax.set_xticks(xs)
    ax.set_xlabel("assistant turn (position in the conversation)")
    ax.set_ylabel("turn mean of per-token scores at the monitor layer\n(projection on the Assistant Axis; higher = more Assistant-like)")
    ax.set_title("Drift by domain, uncapped (policy observe), live through axiswatch serve\n"
                 "thin lines: individual conversations")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def capping_trajectories(drift: dict, capping: dict, th: dict | None, path: Path) -> None:
    domains = list(drift["domains"])
    fig, axes = plt.subplots(1, len(domains), figsize=(4.2 * len(domains), 4.6), sharey=True, squeeze=False)
    for ax, d in zip(axes[0], domains):
        for tab, label, style, color in (
                (drift["domains"][d], "uncapped (observe)", "-", "#555555"),
                (capping["capped_table_reported"][d], "capped: score the service reports", "-", "#ff7f0e"),
                (capping["capped_table_pre_cap"][d], "capped: pre-cap score at the monitor layer", "--", "#8c564b")):
            xs = [r["turn"] for r in tab["by_turn"]]
            m = [r["mean"] for r in tab["by_turn"]]
            sd = [r["sd"] or 0.0 for r in tab["by_turn"]]
            ax.plot(xs, m, ls=style, color=color, lw=2, marker="o", ms=3, label=label)
            ax.fill_between(xs, [a - b for a, b in zip(m, sd)], [a + b for a, b in zip(m, sd)], color=color, alpha=0.08)
        _thresholds(ax, th, labels=(d == domains[0]))
        on = capping["switched_on"].get(d, {})
        ax.set_title(f"{d}: capping switched on in {on.get('capped', 0)}/{on.get('n', 0)}")
        ax.set_xticks(xs)
        ax.set_xlabel("assistant turn")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("turn mean score (higher = more Assistant-like)")
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.suptitle("Uncapped vs capped (policy cap) on the same scripts: mean ± 1 SD over conversations", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _bars(ax, groups: list[str], conds: list[str], values: dict, cis: dict, ylabel: str) -> None:
    width = 0.8 / len(conds)
    for k, cond in enumerate(conds):
        xs = [i + (k - (len(conds) - 1) / 2) * width for i in range(len(groups))]
        v = [values[cond][g] for g in groups]
        lo = [max(0.0, v[i] - cis[cond][g][0]) for i, g in enumerate(groups)]
        hi = [max(0.0, cis[cond][g][1] - v[i]) for i, g in enumerate(groups)]
        ax.bar(xs, v, width, yerr=[lo, hi], capsize=3, color=COND_COLORS.get(cond), label=cond)
        for x, y, top in zip(xs, v, [cis[cond][g][1] for g in groups]):
            ax.text(x, max(y, top) + 0.012, f"{y:.0%}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)


def jailbreak(summary: dict, n_prompts: int, n_personas: int, steer: float, path: Path) -> None:
    conds = list(summary)
    metrics = [("adopted", "judge: fully in role (score 3)"),
               ("non_assistant", "claims non-assistant identity\n(lexical detector)"),
               ("either", "either")]
    fig, ax = plt.subplots(figsize=(9, 5))
    groups = [m for m, _ in metrics]
    vals = {c: {m: summary[c]["all"][m]["rate"] for m in groups} for c in conds}
    cis = {c: {m: summary[c]["all"][m]["ci95"] for m in groups} for c in conds}
    _bars(ax, groups, conds, vals, cis, "fraction of answers (95% Wilson CI)")
    ax.set_xticklabels([lbl for _, lbl in metrics])
    ax.set_title(f"Persona jailbreaks: {n_personas} unseen persona system prompts x 4 questions = {n_prompts} answers\n"
                 f"unsteered vs capped (always on) vs steered toward the Assistant (+{steer} x mean norm)")
    ax.legend(title="condition")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def capability(summary: dict, n_tasks: int, path: Path) -> None:
    conds = list(summary)
    groups = ["all", *sorted(k for k in summary[conds[0]] if k not in ("all", "arithmetic_lenient", "identical_to_unsteered",
                                                                         "flips", "change"))]
    fig, ax = plt.subplots(figsize=(11, 5))
    vals = {c: {g: summary[c][g]["rate"] for g in groups} for c in conds}
    cis = {c: {g: summary[c][g]["ci95"] for g in groups} for c in conds}
    _bars(ax, groups, conds, vals, cis, "accuracy (graded by code; 95% Wilson CI)")
    ax.set_xticklabels([f"{g} (n={summary[conds[0]][g]['n']})" for g in groups])
    ax.set_title(f"Capability suite, {n_tasks} tasks graded by code: unsteered vs capped (always on) vs steered")
    ax.legend(title="condition")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def alerting(summary: dict, path: Path) -> None:
    rows = summary["rows"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 5))
    for group, ls in (("drifting", "-"), ("control", ":")):
        doms = ("therapy", "philosophy") if group == "drifting" else ("coding", "writing")
        rs = [r for r in rows if r["domain"] in doms]
        n = len(rs)
        if not n:
            continue
        horizon = max((r["n_tokens"] for r in rs), default=1)
        for key, color, label in (("per_token", "#d62728", "per-token running score (EWMA)"),
                                  ("per_turn", "#1f77b4", "per-turn mean")):
            vals = sorted(r[key] for r in rs if r[key] is not None)
            xs, ys = [0], [0.0]
            for i, v in enumerate(vals):
                xs += [v, v]
                ys += [i / n, (i + 1) / n]
            xs.append(horizon)
            ys.append(len(vals) / n)
            ax1.plot(xs, ys, ls=ls, color=color, lw=2, label=f"{label}, {group} ({len(vals)}/{n} caught)")
    ax1.set_xlabel("tokens since the start of the session")
    ax1.set_ylabel("fraction of conversations at warning or worse")
    ax1.set_title("When does the first warning come?")
    ax1.set_ylim(0, 1.05)
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=7, loc="upper left")
    order = sorted(rows, key=lambda r: (r["domain"], r["id"]))
    horizon = max((r["n_tokens"] for r in rows), default=1)
    for i, r in enumerate(order):
        c = COLORS.get(r["domain"], "black")
        if r["per_token"] is not None:
            ax2.scatter(r["per_token"], i, marker="o", color=c, s=28)
        if r["per_turn"] is not None:
            ax2.scatter(r["per_turn"], i, marker="s", facecolor="none", edgecolor=c, s=40)
        if r["per_token"] is not None and r["per_turn"] is not None:
            ax2.plot([r["per_token"], r["per_turn"]], [i, i], color=c, lw=0.8, alpha=0.6)
        if r["per_token"] is None and r["per_turn"] is None:
            ax2.scatter(horizon, i, marker="x", color=c, s=28)
    ax2.set_xlim(0, horizon * 1.04)
    from matplotlib.lines import Line2D

    ax2.legend(handles=[Line2D([], [], marker="o", ls="", color="gray", label="running score first below warning"),
                        Line2D([], [], marker="s", ls="", mfc="none", color="gray", label="first turn mean below warning"),
                        Line2D([], [], marker="x", ls="", color="gray", label="neither (at the session's end)")]
               + [Line2D([], [], marker="o", ls="", color=COLORS[d], label=d) for d in COLORS
                  if any(r["domain"] == d for r in rows)], fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=4)
    ax2.set_yticks(range(len(order)))
    ax2.set_yticklabels([r["id"] for r in order], fontsize=6)
    ax2.set_xlabel("tokens since the start of the session at the first warning")
    ax2.set_title("per conversation")
    ax2.grid(alpha=0.3)
    fig.suptitle("Per-token vs per-turn alerting at the warning threshold (uncapped runs)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
