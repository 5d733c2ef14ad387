"""Matplotlib figures (headless)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def _save(fig, ax, path: Path) -> Path:
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_front(g: pd.DataFrame, attack: str, eps: float, path: Path) -> Path:
    """All trials as points (colour = model family, label = trial index and recipe) with 95 % Wilson intervals on
    both axes; the front as a step line."""
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
    for r in g.itertuples():  # "#index recipe" ties each point to front.csv and the trials table
        ax.annotate(f"#{r.trial_index} {r.recipe or ''}".strip(), (r.natural_acc, r.robust_acc), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")
    front = g[g["on_front"]].sort_values("natural_acc")
    if len(front):
        ax.step(front["natural_acc"], front["robust_acc"], where="post", color="black", lw=1.2, label="Pareto front")
        ax.plot(front["natural_acc"], front["robust_acc"], "k*", ms=9)
    ax.set_xlabel("natural accuracy")
    ax.set_ylabel(f"robust accuracy ({attack}, ε = {eps:g})")
    ax.set_title(f"Trade-off frontier: {attack} at ε = {eps:g}  (95 % Wilson CIs)")
    return _save(fig, ax, path)


def plot_curves(g: pd.DataFrame, attack: str, measure: str, path: Path) -> Path:
    """Robust accuracy vs ε per trial, with its Wilson band."""
    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=120)
    colours = plt.get_cmap("tab10")
    for i, ((index, trial_id), tg) in enumerate(g.groupby(["trial_index", "trial_id"], sort=True)):
        tg = tg.sort_values("eps")
        c = colours(i % 10)
        ax.plot(tg["eps"], tg["robust_acc"], color=c, lw=1.5, label=f"#{index} {tg['model_name'].iloc[0]}")
        ax.fill_between(tg["eps"], tg["ci_low"], tg["ci_high"], color=c, alpha=0.15, lw=0)
    ax.set_xlabel(f"perturbation budget ε ({measure})")
    ax.set_ylabel("robust accuracy")
    ax.set_title(f"Accuracy vs ε from {attack} minimal perturbations (95 % Wilson bands)")
    ax.set_ylim(-0.02, 1.02)
    return _save(fig, ax, path)
