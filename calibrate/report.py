"""PNG plots of the compute-axis and calibrate-capping reports (matplotlib, no display)."""

from __future__ import annotations

from pathlib import Path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_axis_report(report: dict, layers: dict, folder: Path) -> list[Path]:
    """variance_explained.png, pc1_cosine.png, roles_along_axis.png."""
    plt = _plt()
    folder.mkdir(parents=True, exist_ok=True)
    m = report["monitor_layer"]
    out = []

    var = layers[str(m)]["variance_explained"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(range(1, len(var) + 1), var, color="#4c72b0")
    ax.plot(range(1, len(var) + 1), [sum(var[:i + 1]) for i in range(len(var))], "o-", color="#dd8452", label="cumulative")
    ax.set(xlabel="principal component of the role vectors", ylabel="fraction of variance",
           title=f"Persona space at layer {m}: variance explained")
    ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "variance_explained.png", dpi=110)
    plt.close(fig)
    out.append(folder / "variance_explained.png")

    n = len(report["per_layer"]["abs_cos_pc1_axis"])
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(range(n), report["per_layer"]["abs_cos_pc1_axis"], "o-", label="|cos(PC1, axis)|")
    if "abs_cos_pc2_axis" in report["per_layer"]:
        ax.plot(range(n), [v if v is not None else float("nan") for v in report["per_layer"]["abs_cos_pc2_axis"]],
                ".:", color="#8172b2", label="|cos(PC2, axis)|")
    ax.plot(range(n), [v if v is not None else float("nan") for v in report["per_layer"]["auroc_heldout"]], "s--",
            label="held-out AUROC (default vs role)")
    ax.axhline(0.71, color="grey", lw=0.8, ls=":", label="paper's floor 0.71")
    ax.axvline(m, color="red", lw=0.8, label=f"monitor layer {m}")
    ax.set(xlabel="layer (output of decoder block L)", ylim=(0, 1.02), title="Axis quality per layer")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(folder / "pc1_cosine.png", dpi=110)
    plt.close(fig)
    out.append(folder / "pc1_cosine.png")

    roles = report["roles_along_axis"]
    fig, ax = plt.subplots(figsize=(7, max(4, 0.13 * len(roles))))
    vals = [r["projection"] for r in roles]
    ax.hlines(range(len(roles)), min(vals + [report["default_projection"]]), vals, color="#dddddd", lw=0.5)
    ax.plot(vals, range(len(roles)), "o", ms=3, color="#c44e52")
    ax.axvline(report["default_projection"], color="black", lw=1, label="default Assistant")
    ax.set_yticks(range(len(roles)), [r["role"] for r in roles], fontsize=5)
    ax.set(xlabel=f"projection on the unit axis at layer {m}", title="Roles along the Assistant Axis")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "roles_along_axis.png", dpi=110)
    plt.close(fig)
    out.append(folder / "roles_along_axis.png")
    return out


def plot_pareto(report: dict, folder: Path) -> Path:
    """capping_pareto.png: capability (x) against persona adoption (y), one point per setting, with the
    unsteered model, the Pareto frontier, the 2-point capability band and the chosen setting."""
    plt = _plt()
    rows, base, chosen = report["rows"], report["unsteered"], report.get("chosen")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.axvspan(base["capability"] - report["max_capability_drop"], 1.0, color="#e8f4e8", zorder=0,
               label=f"capability within {report['max_capability_drop'] * 100:g} points")
    ax.scatter([r["capability"] for r in rows], [r["adoption"] for r in rows], c="#4c72b0", s=18, zorder=3,
               label="capping setting")
    for r in rows:
        ax.annotate(r["id"], (r["capability"], r["adoption"]), fontsize=6, xytext=(2, 2), textcoords="offset points")
    front = [r for r in rows if r["id"] in set(report.get("pareto_frontier", []))]
    front.sort(key=lambda r: r["capability"])
    if front:
        ax.plot([r["capability"] for r in front], [r["adoption"] for r in front], "-", color="#8172b2", lw=1,
                label="Pareto frontier", zorder=2)
    ax.scatter([base["capability"]], [base["adoption"]], marker="*", s=160, c="black", zorder=4, label="unsteered")
    if chosen:
        ax.scatter([chosen["capability"]], [chosen["adoption"]], s=160, facecolors="none", edgecolors="red", zorder=5,
                   label=f"chosen: {chosen['id']}")
    xs = [r["capability"] for r in rows] + [base["capability"]]
    ax.set_xlim(max(0.0, min(xs) - 0.03), min(1.0, max(xs) + 0.03))
    ax.set(xlabel=f"capability accuracy ({report['n_tasks']} tasks graded by code)",
           ylabel=f"persona adoption ({report['n_persona_prompts']} held-out prompts)",
           title="Capping settings: capability vs persona adoption")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(folder / "capping_pareto.png", dpi=110)
    plt.close(fig)
    return folder / "capping_pareto.png"
