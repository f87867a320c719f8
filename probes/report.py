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
    fig.tight_layout(); fig.savefig(folder / "variance_explained.png", dpi=110); plt.close(fig)
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
    fig.tight_layout(); fig.savefig(folder / "pc1_cosine.png", dpi=110); plt.close(fig)
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
    fig.tight_layout(); fig.savefig(folder / "roles_along_axis.png", dpi=110); plt.close(fig)
    out.append(folder / "roles_along_axis.png")
    return out


def plot_pareto(rows: list[dict], chosen: dict | None, folder: Path, spec_tokens: int = 40) -> Path:
    """capping_pareto.png: persona adoption vs benign outputs unchanged, one point per setting."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter([r["benign_unchanged"] for r in rows], [r["adoption"] for r in rows], c="#4c72b0")
    for r in rows:
        ax.annotate(r["id"], (r["benign_unchanged"], r["adoption"]), fontsize=6)
    if chosen:
        ax.scatter([chosen["benign_unchanged"]], [chosen["adoption"]], s=120, facecolors="none", edgecolors="red", label="chosen")
        ax.legend()
    ax.set(xlabel=f"benign outputs unchanged (first {spec_tokens} tokens)", ylabel="persona adoption (judge score 3)",
           title="Capping settings")
    fig.tight_layout(); fig.savefig(folder / "capping_pareto.png", dpi=110); plt.close(fig)
    return folder / "capping_pareto.png"
