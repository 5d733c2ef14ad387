"""Matplotlib figures (headless)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def _save(fig, ax, path: Path) -> Path:
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def eps_text(eps: float) -> str:
    """ε as short as it reads back: `0.1`, or `8/255` when it is exactly k/255 and no short decimal is."""
    short = f"{eps:g}"
    if float(short) == eps:
        return short
    k = round(eps * 255)
    return f"{k}/255" if k / 255 == eps else repr(eps)


def plot_front(g: pd.DataFrame, attack: str, eps: float, path: Path, max_legend: int = 10) -> Path:
    """All trials as points with 95 % Wilson intervals on both axes; the front as a step line. Up to `max_legend`
    trials each get a colour and a legend entry (their trial name); more are coloured by model family and named
    beside their point."""
    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=120)
    colours = plt.get_cmap("tab10")
    names = g["trial_name"].fillna("#" + g["trial_index"].astype(str)) if "trial_name" in g else \
        "#" + g["trial_index"].astype(str)
    g = g.assign(_name=names)
    per_trial = g["_name"].nunique() <= max_legend
    groups = g.groupby("_name" if per_trial else "model_name", sort=False)
    for i, (key, fg) in enumerate(sorted(groups, key=lambda kv: (kv[1]["trial_index"].min(), kv[0]))):
        ax.errorbar(
            fg["natural_acc"], fg["robust_acc"],
            xerr=[fg["natural_acc"] - fg["natural_ci_low"], fg["natural_ci_high"] - fg["natural_acc"]],
            yerr=[fg["robust_acc"] - fg["ci_low"], fg["ci_high"] - fg["robust_acc"]],
            fmt="o", color=colours(i % 10), ecolor=colours(i % 10), elinewidth=0.8, capsize=2, alpha=0.85,
            label=key if per_trial else f"{key} ({len(fg)})",
        )
    if not per_trial:
        for r in g.itertuples():  # the trial name ties each point to front.csv and the trials table
            ax.annotate(r._name, (r.natural_acc, r.robust_acc), fontsize=7, xytext=(4, 4),
                        textcoords="offset points")
    front = g[g["on_front"]].sort_values("natural_acc")
    if len(front):
        ax.step(front["natural_acc"], front["robust_acc"], where="post", color="black", lw=1.2, label="Pareto front")
        ax.plot(front["natural_acc"], front["robust_acc"], "k*", ms=9)
    ax.set_xlabel("natural accuracy")
    ax.set_ylabel(f"robust accuracy ({attack}, ε = {eps_text(eps)})")
    ax.set_title(f"Trade-off frontier: {attack} at ε = {eps_text(eps)}  (95 % Wilson CIs)")
    return _save(fig, ax, path)


def plot_curves(g: pd.DataFrame, attack: str, measure: str, path: Path) -> Path:
    """Robust accuracy vs ε per trial, with its Wilson band."""
    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=120)
    colours = plt.get_cmap("tab10")
    for i, ((index, trial_id), tg) in enumerate(g.groupby(["trial_index", "trial_id"], sort=True)):
        tg = tg.sort_values("eps")
        c = colours(i % 10)
        ax.plot(tg["eps"], tg["robust_acc"], color=c, lw=1.5, label=str(tg["trial_name"].iloc[0]))
        ax.fill_between(tg["eps"], tg["ci_low"], tg["ci_high"], color=c, alpha=0.15, lw=0)
    ax.set_xlabel(f"perturbation budget ε ({measure})")
    ax.set_ylabel("robust accuracy")
    ax.set_title(f"Accuracy vs ε from {attack} minimal perturbations (95 % Wilson bands)")
    ax.set_ylim(-0.02, 1.02)
    return _save(fig, ax, path)


# ---- fitted frontiers, curves and audit figures (report) -------------------------------------------------------------

MAX_LABELS = 15  # beyond this many configurations only the front is named
MIN_SUCCESS = 0.9  # below this success rate an unbounded attack's curve is marked as attack failure
UNBOUNDED_EPS = {"linf": 0.5, "l2": 10.0}  # as in the audit: budgets that allow any image


def save_both(fig, stem: Path) -> list[Path]:
    """PNG and SVG of one figure."""
    fig.tight_layout()
    out = []
    for ext in ("png", "svg"):  # not with_suffix: stems such as front_pgd_eps0.1 contain dots
        path = stem.parent / f"{stem.name}.{ext}"
        fig.savefig(path)
        out.append(path)
    plt.close(fig)
    return out


def _title(cell_attack: str, eps: float, norm: str) -> str:
    return f"{cell_attack}, {norm} ε = {eps_text(eps)}"


def _draw_front(ax, pts: pd.DataFrame, curve: pd.DataFrame, hv: pd.Series | None, names: bool = True,
                small: bool = False) -> None:
    colours = plt.get_cmap("tab10")
    fams = sorted(pts["model_name"].unique())
    for i, fam in enumerate(fams):
        fg = pts[pts["model_name"] == fam]
        ax.errorbar(fg["natural_acc"], fg["robust_acc"],
                    xerr=[fg["natural_acc"] - fg["natural_ci_low"], fg["natural_ci_high"] - fg["natural_acc"]],
                    yerr=[fg["robust_acc"] - fg["ci_low"], fg["ci_high"] - fg["robust_acc"]], fmt="o",
                    ms=3 if small else 5, color=colours(i % 10), elinewidth=0.6, capsize=0 if small else 2,
                    alpha=0.8, label=f"{fam} ({len(fg)})")
    if len(curve):
        ax.fill_between(curve["natural_acc"], curve["band_low"], curve["band_high"], color="black", alpha=0.12, lw=0,
                        label="95 % bootstrap band")
        ax.plot(curve["natural_acc"], curve["robust_fit"], color="black", lw=1.3, label="fitted frontier")
    front = pts[pts["on_front"]]
    ax.plot(front["natural_acc"], front["robust_acc"], "k*", ms=6 if small else 9)
    flagged = pts[pts["audit"].isin(["masked", "suspect"])] if "audit" in pts else pts.iloc[:0]
    if len(flagged):
        ax.plot(flagged["natural_acc"], flagged["robust_acc"], "o", mfc="none", mec="red", ms=9 if small else 14,
                mew=1.2, label="audit: masked / suspect")
    if names:
        named = pts if len(pts) <= MAX_LABELS else pd.concat([front, flagged]).drop_duplicates("config_key")
        for r in named.itertuples():
            tag = f"{r.label} ({r.p_front:.0%})" if r.on_front else r.label
            if getattr(r, "audit", "ok") in ("masked", "suspect"):
                tag += f" [{r.audit}]"
            ax.annotate(tag, (r.natural_acc, r.robust_acc), fontsize=5 if small else 7, xytext=(3, 3),
                        textcoords="offset points")
    if hv is not None and not small:
        ax.text(0.02, 0.02, f"hypervolume {hv['hypervolume']:.3f} [{hv['ci_low']:.3f}, {hv['ci_high']:.3f}]",
                transform=ax.transAxes, fontsize=7)


def plot_fitted_front(pts: pd.DataFrame, curve: pd.DataFrame, hv: pd.Series | None, stem: Path) -> list[Path]:
    """One attack × ε: configurations with bootstrap 95 % intervals on both axes, the fitted frontier with its
    bootstrap band, front members starred and named with their probability of being on the front."""
    r = pts.iloc[0]
    fig, ax = plt.subplots(figsize=(7, 5), dpi=110)
    _draw_front(ax, pts, curve, hv)
    ax.set_xlabel("natural accuracy")
    ax.set_ylabel("robust accuracy")
    ax.set_title(f"Trade-off frontier: {_title(r['attack'], r['eps'], r['norm'])}")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=7)
    return save_both(fig, stem)


def plot_overview(fronts, stem: Path, max_cols: int = 4, max_rows: int = 4) -> list[Path]:
    """Small multiples of the overall fronts: one row per attack, one column per ε."""
    pts = fronts.points[fronts.points["scope"] == "all"]
    attacks = list(dict.fromkeys(pts.sort_values(["attack"])["attack"]))[:max_rows]
    eps_by = {a: sorted(pts[pts["attack"] == a]["eps"].unique())[:max_cols] for a in attacks}
    cols = max(len(v) for v in eps_by.values())
    fig, axes = plt.subplots(len(attacks), cols, figsize=(2.6 * cols, 2.3 * len(attacks)), dpi=100, squeeze=False,
                             sharex=True, sharey=True)
    for i, a in enumerate(attacks):
        for j in range(cols):
            ax = axes[i][j]
            if j >= len(eps_by[a]):
                ax.axis("off")
                continue
            e = eps_by[a][j]
            p = pts[(pts["attack"] == a) & (pts["eps"] == e)]
            c = fronts.curves[(fronts.curves["attack"] == a) & (fronts.curves["eps"] == e)
                              & (fronts.curves["scope"] == "all")]
            _draw_front(ax, p, c, None, names=False, small=True)
            ax.set_title(f"{a} ε={e:g}", fontsize=8)
            ax.tick_params(labelsize=6)
            ax.grid(alpha=0.3)
    fig.supxlabel("natural accuracy", fontsize=8)
    fig.supylabel("robust accuracy", fontsize=8)
    return save_both(fig, stem)


def plot_accuracy_vs_eps(sweep, stem: Path, max_trials: int = 12) -> list[Path] | None:
    """Robust accuracy vs ε per trial and attack (one panel per norm; Wilson 95 % bands), and accuracy-vs-ε curves
    of minimal-distortion attacks, marked where the attack failed on many correctly classified examples."""
    from advsweep.evaluation.stats import wilson_interval

    cells = [c for c in sweep.cells.values() if not c.attack.startswith("ensemble") and not c.derived_from]
    norms = sorted({c.norm for c in cells})
    if not cells:
        return None
    trials = sweep.trials.head(max_trials)
    fig, axes = plt.subplots(1, len(norms), figsize=(6 * len(norms), 4.5), dpi=110, squeeze=False)
    colours = plt.get_cmap("tab10")
    styles = ["-", "--", ":", "-."]
    for ax, norm in zip(axes[0], norms):
        mine = [c for c in cells if c.norm == norm]
        attacks = sorted({c.attack for c in mine})
        warn = []
        top = max([float(np.nanmax(np.where(np.isfinite(c.distance), c.distance, np.nan), initial=0.0))
                   for c in mine if c.distance is not None] or [1.0])
        grid = np.linspace(0, top * 1.05 if top > 0 else 1.0, 50)
        for t, trial in trials.iterrows():
            col = colours(t % 10)
            for k, attack in enumerate(attacks):
                cs = sorted((c for c in mine if c.attack == attack and c.present[t].any()), key=lambda c: c.eps)
                if not cs:
                    continue
                if norm == "none":
                    c = cs[0]
                    d = c.distance[t][c.present[t]]
                    k_rob = np.array([(d > g).sum() for g in grid])
                    n = len(d)
                    ci = np.array([wilson_interval(int(v), n) for v in k_rob])
                    ax.plot(grid, k_rob / n, color=col, ls=styles[k % 4], label=f"{trial['label']} · {attack}")
                    ax.fill_between(grid, ci[:, 0], ci[:, 1], color=col, alpha=0.12, lw=0)
                    rate = c.success_rate()[t]
                    if rate < MIN_SUCCESS:
                        warn.append(f"{trial['label']} · {attack}: adversarial found for only {rate:.0%} of "
                                    f"correct examples; its floor is attack failure, not robustness")
                        ax.annotate(f"attack failed on {1 - rate:.0%}", (grid[-1], k_rob[-1] / n), fontsize=6,
                                    color=col, ha="right", va="bottom")
                else:
                    eps = np.array([0.0] + [c.eps for c in cs])
                    k_rob = [int((cs[0].clean[t] & cs[0].present[t]).sum())] + [int(c.robust[t][c.present[t]].sum())
                                                                              for c in cs]
                    n = [int(cs[0].present[t].sum())] + [int(c.present[t].sum()) for c in cs]
                    acc = np.array(k_rob) / np.array(n)
                    ci = np.array([wilson_interval(a, b) for a, b in zip(k_rob, n)])
                    ax.plot(eps, acc, marker="o", ms=3, color=col, ls=styles[k % 4],
                            label=f"{trial['label']} · {attack}")
                    ax.fill_between(eps, ci[:, 0], ci[:, 1], color=col, alpha=0.12, lw=0)
                    last = cs[-1]
                    rate = last.success_rate()[t]
                    if last.eps >= UNBOUNDED_EPS.get(norm, np.inf) and rate < MIN_SUCCESS:
                        warn.append(f"{trial['label']} · {attack}: at ε={eps_text(last.eps)} (any image reachable) an "
                                    f"adversarial was found for only {rate:.0%} of correct examples")
                        ax.annotate(f"attack failed on {1 - rate:.0%}", (last.eps, acc[-1]), fontsize=6, color=col,
                                    ha="right", va="bottom")
        ax.set_xlabel("ε (ℓ2, from minimal distances)" if norm == "none" else f"ε ({norm})")
        ax.set_ylabel("robust accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title("minimal-distortion attacks" if norm == "none" else f"{norm} attacks", fontsize=10)
        ax.grid(alpha=0.3)
        if len(trials) * len(attacks) <= 16:
            ax.legend(fontsize=6, loc="upper right")
        if warn:
            ax.text(0.01, 0.01, "\n".join(f"⚠ {w}" for w in warn[:4]), transform=ax.transAxes, fontsize=6,
                    va="bottom", color="darkred", bbox={"facecolor": "white", "alpha": 0.85, "lw": 0})
    return save_both(fig, stem)


def plot_budget(sweep, stem: Path, max_trials: int = 12) -> list[Path] | None:
    """Robust accuracy vs attack budget (steps × restarts, queries) for attacks run at ≥ 2 budgets at one ε."""
    from advsweep.analysis.audit import _budget

    groups: dict = {}
    for c in sweep.cells.values():
        b = _budget(c.params)
        if c.norm != "none" and np.isfinite(b):
            groups.setdefault((c.attack_name, c.norm, c.eps), []).append((b, c))
    groups = {k: sorted(v, key=lambda bc: bc[0]) for k, v in groups.items() if len({b for b, _ in v}) > 1}
    if not groups:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.5), dpi=110)
    colours = plt.get_cmap("tab10")
    for g, ((name, norm, eps), bcs) in enumerate(sorted(groups.items())):
        for t, trial in sweep.trials.head(max_trials).iterrows():
            pts = [(b, c.accuracy()[t]) for b, c in bcs if c.present[t].any()]
            if len(pts) > 1:
                x, y = zip(*pts)
                ax.plot(x, y, marker="o", color=colours(t % 10), ls=["-", "--", ":"][g % 3],
                        label=f"{trial['label']} · {name} {norm} ε={eps_text(eps)}")
    ax.set_xscale("log")
    ax.set_xlabel("attack budget (steps × restarts, or queries)")
    ax.set_ylabel("robust accuracy")
    ax.set_title("Accuracy vs attack budget (should flatten once the attack has converged)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    return save_both(fig, stem)


def plot_distortions(sweep, stem: Path, max_trials: int = 12) -> list[Path] | None:
    """Empirical distributions (ECDF) of minimal adversarial distances over correctly classified examples; the
    share never broken is the gap below 1 at the right."""
    cells = [c for c in sweep.cells.values() if c.norm == "none" and not c.derived_from]
    if not cells:
        return None
    fig, axes = plt.subplots(1, len(cells), figsize=(6 * len(cells), 4.2), dpi=110, squeeze=False)
    colours = plt.get_cmap("tab10")
    for ax, c in zip(axes[0], cells):
        for t, trial in sweep.trials.head(max_trials).iterrows():
            ok = c.present[t] & c.clean[t]
            d = np.sort(c.distance[t][ok])
            if not len(d):
                continue
            finite = d[np.isfinite(d)]
            y = np.arange(1, len(finite) + 1) / len(d)
            ax.step(finite, y, where="post", color=colours(t % 10),
                    label=f"{trial['label']} (found {len(finite) / len(d):.0%}, median "
                          f"{np.median(d):.3g})")
        ax.set_xlabel(f"minimal adversarial distance ({c.attack}, ℓ2)")
        ax.set_ylabel("share of correctly classified examples broken")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="lower right")
        ax.set_title(f"Minimal-distortion distribution: {c.attack}", fontsize=10)
    return save_both(fig, stem)
