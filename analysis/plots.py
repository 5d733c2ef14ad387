"""Matplotlib figures (headless)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def plot_front(g: pd.DataFrame, attack: str, eps: float, path: Path) -> Path:
    """All trials as points (colour = model family) with 95 % Wilson intervals on both axes; the front as a step line."""
    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=120)
    colours = plt.get_cmap("tab10")
    for i, (family, fg) in enumerate(sorted(g.groupby("model_name"), key=lambda kv: kv[0])):
        ax.errorbar(
            fg["natural_acc"], fg["robust_acc"],
            xerr=[fg["natural_acc"] - fg["natural_ci_low"], fg["natural_ci_high"] - fg["natural_acc"]],
            yerr=[fg["robust_acc"] - fg["ci_low"], fg["ci_high"] - fg["robust_acc"]],
            fmt="o", color=colours(i % 10), ecolor=colours(i % 10), elinewidth=0.8, capsize=2, alpha=0.85,
            label=f"{family} ({len(fg)})",
        )
    front = g[g["on_front"]].sort_values("natural_acc")
    if len(front):
        ax.step(front["natural_acc"], front["robust_acc"], where="post", color="black", lw=1.2, label="Pareto front")
        ax.plot(front["natural_acc"], front["robust_acc"], "k*", ms=9)
    ax.set_xlabel("natural accuracy")
    ax.set_ylabel(f"robust accuracy ({attack}, ε = {eps:g})")
    ax.set_title(f"Trade-off frontier: {attack} at ε = {eps:g}  (95 % Wilson CIs)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
