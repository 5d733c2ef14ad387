"""Paired comparisons of two trials on the same test examples.

Robust accuracy: exact McNemar test on the discordant examples (b robust for A only, c for B only; a two-sided
binomial test of b out of b + c with p = 1/2). Effect sizes: the accuracy difference (b − c)/n with Newcombe's (1998)
hybrid score interval for paired proportions (Wilson intervals of both accuracies combined through their phi
correlation, as in Altman et al., *Statistics with Confidence*, §6) and the conditional odds ratio b/c. Unlike the
interval of b/(b + c) conditional on the discordant count, it accounts for the discordant count being random, so
the estimate is never an end point (b = 0) and a table without discordant examples still gets a width.
Minimal distances: Wilcoxon signed-rank on per-example minimal adversarial distances (0 for an example misclassified
clean, +inf where the attack found none; two infinities tie), with the matched-pairs rank-biserial correlation as the
effect size and the median paired difference.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

from advsweep.analysis.tables import Cell, Sweep
from advsweep.evaluation.stats import wilson_interval
from advsweep.registry import SpecError


@dataclass
class McNemar:
    attack: str
    eps: float
    a: str
    b: str
    n: int                 # examples both were attacked on
    acc_a: float
    acc_b: float
    ci_a: tuple[float, float]  # Wilson 95 %
    ci_b: tuple[float, float]
    only_a: int            # robust for A, not for B
    only_b: int
    p_value: float
    diff: float            # acc_a − acc_b
    diff_ci_low: float     # Newcombe's paired hybrid score interval (newcombe_paired)
    diff_ci_high: float
    odds_ratio: float      # only_a / only_b (conditional odds ratio)


@dataclass
class Wilcoxon:
    attack: str
    a: str
    b: str
    n: int
    median_a: float
    median_b: float
    median_diff: float     # median of d = dist_a − dist_b over examples
    statistic: float
    p_value: float
    rank_biserial: float   # > 0: A needs larger perturbations (more robust)


def newcombe_paired(both: int, only_a: int, only_b: int, neither: int) -> tuple[float, float]:
    """95 % interval of acc_a − acc_b on paired data (Newcombe 1998, method 10, with the phi correction of
    Altman et al. 2000, p. 52)."""
    n = both + only_a + only_b + neither
    p1, p2 = (both + only_a) / n, (both + only_b) / n
    l1, u1 = wilson_interval(both + only_a, n)
    l2, u2 = wilson_interval(both + only_b, n)
    denom = (both + only_a) * (only_b + neither) * (both + only_b) * (only_a + neither)
    phi = 0.0
    if denom > 0:
        cross = both * neither - only_a * only_b
        phi = (cross - n / 2 if cross > n / 2 else cross if cross < 0 else 0.0) / np.sqrt(float(denom))
    d = p1 - p2
    lo = d - np.sqrt(max((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2, 0.0))
    hi = d + np.sqrt(max((p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2, 0.0))
    return float(max(lo, -1.0)), float(min(hi, 1.0))


def mcnemar(cell: Cell, i: int, j: int, name_a: str, name_b: str) -> McNemar:
    both = cell.present[i] & cell.present[j]
    if not both.any():
        raise SpecError(f"{cell.attack}@{cell.eps:g}", f"{name_a} and {name_b} share no attacked examples")
    ra, rb = cell.robust[i][both], cell.robust[j][both]
    n, b, c = int(both.sum()), int((ra & ~rb).sum()), int((~ra & rb).sum())
    p = float(stats.binomtest(b, b + c, 0.5).pvalue) if b + c else 1.0
    lo, hi = newcombe_paired(int((ra & rb).sum()), b, c, int((~ra & ~rb).sum()))
    return McNemar(cell.attack, cell.eps, name_a, name_b, n, float(ra.mean()), float(rb.mean()),
                   wilson_interval(int(ra.sum()), n), wilson_interval(int(rb.sum()), n), b, c, p,
                   (b - c) / n, lo, hi, b / c if c else float("inf") if b else float("nan"))


def wilcoxon(cell: Cell, i: int, j: int, name_a: str, name_b: str) -> Wilcoxon:
    both = cell.present[i] & cell.present[j]
    da, db = cell.distance[i][both].astype(np.float64), cell.distance[j][both].astype(np.float64)
    finite = np.concatenate([da[np.isfinite(da)], db[np.isfinite(db)]])
    cap = 2.0 * (finite.max() if len(finite) else 1.0) + 1.0  # ranks only: +inf → a common value above all others
    d = np.minimum(da, cap) - np.minimum(db, cap)
    nz = d[d != 0]
    if len(nz) == 0:
        stat, p, rbc = 0.0, 1.0, 0.0
    else:
        res = stats.wilcoxon(nz, zero_method="wilcox", alternative="two-sided")
        stat, p = float(res.statistic), float(res.pvalue)
        ranks = stats.rankdata(np.abs(nz))
        rbc = float((ranks[nz > 0].sum() - ranks[nz < 0].sum()) / ranks.sum())
    return Wilcoxon(cell.attack, name_a, name_b, int(both.sum()), float(np.median(da)), float(np.median(db)),
                    float(np.median(d)), stat, p, rbc)


def compare(sweep: Sweep, a: str, b: str, attack: str, eps: float | None) -> dict:
    """McNemar on `attack` at `eps` (ε-bounded attack), plus Wilcoxon on every minimal-distortion attack both trials
    ran (or on `attack` itself when it is one)."""
    i, j = sweep.trial_position(a), sweep.trial_position(b)
    if i == j:
        raise SpecError(str(b), "compare needs two different trials")
    na, nb = (str(sweep.trials.loc[k, "label"]) for k in (i, j))
    out: dict = {"a": na, "b": nb, "a_trial_id": str(sweep.trials.loc[i, "trial_id"]),
                 "b_trial_id": str(sweep.trials.loc[j, "trial_id"]), "mcnemar": None, "wilcoxon": []}
    minimal = [c for c in sweep.cells.values() if c.norm == "none" and not c.derived_from]
    if eps is None:
        cands = [c for c in sweep.cells.values() if c.attack == attack and not c.derived_from]
        if not cands:
            sweep.cell(attack, 0.0)  # raises, naming what exists
        if cands[0].norm != "none":
            raise SpecError("--eps", f"attack {attack!r} is ε-bounded; give --eps "
                                     f"(have: {', '.join(f'{c.eps:g}' for c in cands)})")
        minimal = [cands[0]]
    else:
        cell = sweep.cell(attack, eps)
        if cell.norm == "none" and not cell.derived_from:
            minimal = [cell]
        else:
            for k, who in ((i, na), (j, nb)):
                if not cell.present[k].any():
                    raise SpecError(who, f"trial has no {attack} results at eps={eps:g}")
            out["mcnemar"] = asdict(mcnemar(cell, i, j, na, nb))
            if cell.derived_from:
                minimal = [c for c in sweep.cells.values() if c.attack == cell.attack and not c.derived_from]
    for c in minimal:
        if c.present[i].any() and c.present[j].any():
            out["wilcoxon"].append(asdict(wilcoxon(c, i, j, na, nb)))
    return out


def format_comparison(res: dict) -> list[str]:
    lines = [f"A = {res['a']} ({res['a_trial_id']}), B = {res['b']} ({res['b_trial_id']})"]
    m = res["mcnemar"]
    if m:
        (la, ha), (lb, hb) = m["ci_a"], m["ci_b"]
        lines.append(f"{m['attack']} eps={m['eps']:g}: robust accuracy A {m['acc_a']:.4f} [{la:.4f}, {ha:.4f}] vs "
                     f"B {m['acc_b']:.4f} [{lb:.4f}, {hb:.4f}] on {m['n']} shared examples; difference "
                     f"{m['diff']:+.4f} (95 % CI {m['diff_ci_low']:+.4f} to {m['diff_ci_high']:+.4f})")
        lines.append(f"  exact McNemar: robust only for A {m['only_a']}, only for B {m['only_b']}, "
                     f"odds ratio {m['odds_ratio']:.3g}, p = {m['p_value']:.3g}")
    for w in res["wilcoxon"]:
        lines.append(f"{w['attack']} minimal distance: median A {w['median_a']:.4g} vs B {w['median_b']:.4g} on "
                     f"{w['n']} examples; median difference {w['median_diff']:+.4g}")
        lines.append(f"  Wilcoxon signed-rank: W = {w['statistic']:.6g}, p = {w['p_value']:.3g}, "
                     f"rank-biserial r = {w['rank_biserial']:+.3f}")
    if not m and not res["wilcoxon"]:
        lines.append("no minimal-distortion attack ran on both trials: nothing to compare")
    return lines
