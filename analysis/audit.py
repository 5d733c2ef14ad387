"""Gradient-masking audit: the checklist of evaluation.md §5 (Athalye et al. 2018, Carlini et al. 2019, Croce &
Hein 2020) computed per trial from the per-example rows, with the numbers behind every check and a verdict.

Checks (severity in brackets; "stronger" = breaks significantly more of the same examples than the white-box
gradient attacks together: exact McNemar on the discordant examples, p < ALPHA and an excess ≥ MIN_EFFECT of n):
  single_step_stronger    [strong] FGSM stronger than the iterative white-box attacks at the same norm and ε
  blackbox_stronger       [strong] SPSA / Square / Boundary stronger than white-box
  transfer_stronger       [strong] a transfer attack (crafted on another model) stronger than white-box
  surrogate_stronger      [strong] crafting on a solver surrogate stronger than on the deployed solver
  unbounded_eps           [strong] white-box robust accuracy not ≈ 0 at an ε that allows any image
                                   (ℓ∞ ≥ 0.5, ℓ2 ≥ 10): the lower Wilson bound stays above UNBOUNDED_ACC
  zero_gradients          [strong] most examples' input gradients (as the attacks saw them) are ≈ 0
  steps_converged         [weak]   the per-example worst case over all attacks at one ε still falls
                                   significantly when one attack's budget (steps × restarts, queries) grows from
                                   its second-largest to its largest: an attack that has not converged matters
                                   only where it breaks examples that no other attack breaks
  minimal_success         [weak]   a minimal-distortion attack finds no adversarial for > 10 % of the correctly
                                   classified examples (it has no budget: it should nearly always succeed)
  gradient_agreement      [weak]   adjoint vs direct ODE gradients (needs the model: not in Parquet; reported as
                                   not run, with the function that computes it)
  collapsed               [weak]   ≥ 90 % of clean predictions are one class (accuracy and robustness meaningless)

Verdict: `masked` if a strong check fails; else `suspect` if a weak one fails; else `ok` when the evidence suffices
(the gradient check and at least two of blackbox_stronger, unbounded_eps, minimal_success were evaluated); else
`insufficient evidence`, naming the suite to run (sweeps/suites/masking_audit.yaml via `advsweep eval`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from scipy import stats

from advsweep.analysis.tables import Cell, Sweep
from advsweep.evaluation.stats import wilson_interval
from advsweep.storage import schema as S

ALPHA, MIN_EFFECT = 0.01, 0.02
UNBOUNDED_EPS = {"linf": 0.5, "l2": 10.0}
UNBOUNDED_ACC = 0.05
MIN_SUCCESS = 0.9
ZERO_GRAD_SHARE = 0.5
COLLAPSED_SHARE = 0.9
SUITE = "sweeps/suites/masking_audit.yaml"

SINGLE_STEP = {"fgsm"}
BLACK_BOX = {"spsa", "square", "square_l2", "boundary"}
TRANSFER = {"transfer", "transfer_l2"}
SURROGATE = {"solver_surrogate", "solver_surrogate_l2"}
WHITE_BOX_ITERATIVE = {"pgd", "pgd_l2", "mifgsm", "difgsm", "apgd_ce", "apgd_dlr", "autoattack", "autoattack_l2",
                       "cw_l2"}
STRONG = ("single_step_stronger", "blackbox_stronger", "transfer_stronger", "surrogate_stronger", "unbounded_eps",
          "zero_gradients")
WEAK = ("steps_converged", "minimal_success", "gradient_agreement", "collapsed")
CHECKS = STRONG + WEAK
BUDGET_KEYS = ("steps", "restarts", "iterations", "n_queries", "samples")

CHECK_COLUMNS = ["trial_id", "trial_index", "label", "check", "severity", "status", "value", "threshold", "n",
                 "p_value", "evidence"]


@dataclass
class Audit:
    checks: pd.DataFrame     # one row per trial × check: status pass | fail | not_run | not_applicable
    verdicts: pd.DataFrame   # one row per trial


def _stronger(challenger: np.ndarray, reference: np.ndarray, present: np.ndarray) -> dict:
    """Does `challenger` break significantly more examples than `reference` (both: robust masks)?"""
    n = int(present.sum())
    c = int((reference & ~challenger & present).sum())  # survives reference, broken by challenger
    b = int((~reference & challenger & present).sum())
    p = float(stats.binomtest(c, b + c, 0.5, alternative="greater").pvalue) if b + c else 1.0
    acc_r = float((reference & present).sum() / n) if n else np.nan
    acc_c = float((challenger & present).sum() / n) if n else np.nan
    fail = n > 0 and c > b and p < ALPHA and (c - b) / n >= MIN_EFFECT
    return {"fail": fail, "n": n, "p": p, "only_challenger": c, "only_reference": b, "acc_ref": acc_r,
            "acc_chal": acc_c, "excess": (c - b) / n if n else np.nan}


def _row(check, status, value=np.nan, threshold=np.nan, n=0, p=np.nan, evidence=""):
    return {"check": check, "severity": "strong" if check in STRONG else "weak", "status": status,
            "value": float(value), "threshold": float(threshold), "n": int(n), "p_value": float(p),
            "evidence": evidence}


def _by_kind(cells: list[Cell], t: int):
    groups: dict[tuple[str, float], dict[str, list[Cell]]] = {}
    for c in cells:
        if c.norm == "none" or c.attack_name == S.ENSEMBLE or not c.present[t].any():
            continue
        kind = ("single" if c.attack_name in SINGLE_STEP else "black" if c.attack_name in BLACK_BOX else
                "transfer" if c.attack_name in TRANSFER else "surrogate" if c.attack_name in SURROGATE else
                "white" if c.attack_name in WHITE_BOX_ITERATIVE else "other")
        groups.setdefault((c.norm, c.eps), {}).setdefault(kind, []).append(c)
    return groups


def _and(cs: list[Cell], t: int) -> tuple[np.ndarray, np.ndarray]:
    present = np.logical_and.reduce([c.present[t] for c in cs])
    return np.logical_and.reduce([c.robust[t] for c in cs]) & present, present


def _compare_check(check, groups, t, kind, ref_kinds) -> dict:
    worst, evidence = None, []
    for (norm, eps), g in sorted(groups.items()):
        refs = [c for k in ref_kinds for c in g.get(k, [])]
        for chal in g.get(kind, []):
            if not refs:
                continue
            ref_rob, ref_present = _and(refs, t)
            res = _stronger(chal.robust[t], ref_rob, ref_present & chal.present[t])
            label = "+".join(c.attack for c in refs)
            evidence.append(f"{chal.attack} {norm} ε={eps:g}: robust {res['acc_chal']:.3f} vs {label} "
                            f"{res['acc_ref']:.3f}; broken only by {chal.attack} {res['only_challenger']}, only by "
                            f"{label} {res['only_reference']} of {res['n']} (p={res['p']:.2g})")
            if worst is None or (res["fail"], res["excess"]) > (worst["fail"], worst["excess"]):
                worst = res
    if worst is None:
        return _row(check, "not_run", evidence=f"needs {kind} and white-box attacks at a shared norm and ε")
    return _row(check, "fail" if worst["fail"] else "pass", worst["excess"], MIN_EFFECT, worst["n"], worst["p"],
                "; ".join(evidence))


def _unbounded(groups, t) -> dict:
    best, evidence, largest = None, [], {}
    for (norm, eps), g in groups.items():
        if g.get("white"):
            largest[norm] = max(largest.get(norm, 0.0), eps)
        if eps < UNBOUNDED_EPS.get(norm, np.inf) or not g.get("white"):
            continue
        rob, present = _and(g["white"], t)
        k, n = int(rob.sum()), int(present.sum())
        lo, _ = wilson_interval(k, n)
        evidence.append(f"white-box {norm} ε={eps:g}: robust {k}/{n} = {k / n:.3f} (95 % CI from {lo:.3f})")
        if best is None or lo < best[0]:
            best = (lo, n)
    if best is None:
        have = ", ".join(f"{k} up to {v:g}" for k, v in sorted(largest.items())) or "no white-box attack"
        need = " or ".join(f"{k} ε ≥ {v:g}" for k, v in UNBOUNDED_EPS.items())
        return _row("unbounded_eps", "not_run", evidence=f"needs a white-box attack at {need} (have {have})")
    return _row("unbounded_eps", "fail" if best[0] > UNBOUNDED_ACC else "pass", best[0], UNBOUNDED_ACC, best[1],
                evidence="; ".join(evidence))


def _budget(params: dict) -> float:
    vals = [float(params[k]) for k in BUDGET_KEYS if isinstance(params.get(k), (int, float))]
    return float(np.prod(vals)) if vals else np.nan


def _steps(cells: list[Cell], t: int) -> dict:
    groups: dict = {}
    for c in cells:
        if c.norm != "none" and c.attack_name != S.ENSEMBLE and c.present[t].any() and np.isfinite(_budget(c.params)):
            groups.setdefault((c.attack_name, c.norm, c.eps), []).append(c)
    worst, evidence = None, []
    for (name, norm, eps), cs in sorted(groups.items()):
        budgets = sorted({_budget(c.params) for c in cs})
        if len(budgets) < 2:
            continue
        big = [c for c in cs if _budget(c.params) == budgets[-1]]
        prev = [c for c in cs if _budget(c.params) == budgets[-2]]
        others = [c for c in cells if c.norm == norm and c.eps == eps and c.attack_name not in (name, S.ENSEMBLE)
                  and c.present[t].any()]
        r_big, p_big = _and(big, t)
        r_prev, p_prev = _and(prev, t)
        own = _stronger(r_big, r_prev, p_big & p_prev)
        if others:  # the worst case over every attack at this ε, with the smaller or the larger budget
            r_other, p_other = _and(others, t)
            res = _stronger(r_big & r_other, r_prev & r_other, p_big & p_prev & p_other)
            also = (f"; worst case with {'+'.join(sorted({c.attack for c in others}))}: "
                    f"{res['acc_ref']:.3f} → {res['acc_chal']:.3f} (p={res['p']:.2g})")
        else:
            res, also = own, ""
        evidence.append(f"{name} {norm} ε={eps:g}: budget {budgets[-2]:g} → {budgets[-1]:g}: robust "
                        f"{own['acc_ref']:.3f} → {own['acc_chal']:.3f} (p={own['p']:.2g}){also}")
        if worst is None or (res["fail"], res["excess"]) > (worst["fail"], worst["excess"]):
            worst = res
    if worst is None:
        return _row("steps_converged", "not_run",
                    evidence="needs one attack at ≥ 2 budgets (steps/restarts) at one ε")
    return _row("steps_converged", "fail" if worst["fail"] else "pass", worst["excess"], MIN_EFFECT, worst["n"],
                worst["p"], "; ".join(evidence))


def _minimal(cells: list[Cell], t: int, rob: pd.DataFrame, trial_id: str) -> dict:
    rates, evidence = [], []
    for c in cells:
        if c.norm != "none" or c.derived_from or not c.present[t].any():
            continue
        ok = int((c.clean[t] & c.present[t]).sum())
        found = int((c.found[t] & c.present[t]).sum())
        rate = found / ok if ok else np.nan
        for col in ("found_rate", "success_rate"):  # the robustness table's own figure, where the writer records it
            if col in rob:
                hit = rob[(rob["trial_id"] == trial_id) & (rob["attack"] == c.attack) & (rob["eps"] == c.eps)][col]
                if len(hit.dropna()):
                    rate = float(hit.dropna().iloc[0])
                    break
        rates.append((rate, ok))
        evidence.append(f"{c.attack}: adversarial found for {found}/{ok} correctly classified = {rate:.3f}")
    if not rates:
        return _row("minimal_success", "not_run",
                    evidence="needs a minimal-distortion attack (deepfool, fab, lbfgs_min)")
    rate, ok = min(rates)
    return _row("minimal_success", "fail" if rate < MIN_SUCCESS else "pass", rate, MIN_SUCCESS, ok,
                evidence="; ".join(evidence))


def _gradients(cells: list[Cell], t: int) -> dict:
    shares = [(c.zero_grad_share[t], c.mean_grad[t], int(c.present[t].sum()), c.attack) for c in cells
              if c.zero_grad_share is not None and np.isfinite(c.zero_grad_share[t]) and c.norm != "none"]
    if not shares:
        return _row("zero_gradients", "not_run", evidence="needs a gradient attack with recorded gradient norms")
    share, _, n, _ = max(shares)
    ev = "; ".join(f"{a}: {s:.0%} of examples with ‖∇ₓ‖₁ ≈ 0 (mean {g:.3g})" for s, g, _, a in shares)
    return _row("zero_gradients", "fail" if share > ZERO_GRAD_SHARE else "pass", share, ZERO_GRAD_SHARE, n,
                evidence=ev)


def _collapsed(cells: list[Cell], t: int) -> dict:
    shares = [(c.top_pred_share[t], int(c.present[t].sum())) for c in cells
              if c.top_pred_share is not None and np.isfinite(c.top_pred_share[t])]
    share, n = max(shares)
    return _row("collapsed", "fail" if share >= COLLAPSED_SHARE else "pass", share, COLLAPSED_SHARE, n,
                evidence=f"most frequent clean prediction on {share:.1%} of {n} examples")


def _verdict(rows: list[dict]) -> tuple[str, str]:
    st = {r["check"]: r["status"] for r in rows}
    strong = [c for c in STRONG if st[c] == "fail"]
    weak = [c for c in WEAK if st[c] == "fail"]
    if strong:
        return "masked", ", ".join(strong + weak)
    if weak:
        return "suspect", ", ".join(weak)
    ran = sum(st[c] == "pass" for c in ("blackbox_stronger", "unbounded_eps", "minimal_success"))
    if st["zero_gradients"] == "pass" and ran >= 2:
        return "ok", ""
    return "insufficient evidence", f"run `advsweep eval DIR --suite {SUITE}`"


def run_audit(sweep: Sweep) -> Audit:
    cells = list(sweep.cells.values())
    rob = sweep.robustness.copy()
    if len(rob):
        rob["trial_id"] = rob["trial_id"].astype(str)
    rows, verdicts = [], []
    for t, trial in sweep.trials.iterrows():
        mine = [c for c in cells if c.present[t].any()]
        if not mine:
            continue
        groups = _by_kind(mine, t)
        ode = float(trial.get("nfe_forward") or 0) > 0
        checks = [
            _compare_check("single_step_stronger", groups, t, "single", ("white",)),
            _compare_check("blackbox_stronger", groups, t, "black", ("white", "single")),
            _compare_check("transfer_stronger", groups, t, "transfer", ("white", "single")),
            _compare_check("surrogate_stronger", groups, t, "surrogate", ("white", "single")),
            _unbounded(groups, t),
            _gradients(mine, t),
            _steps(mine, t),
            _minimal(mine, t, rob, str(trial["trial_id"])),
            _row("gradient_agreement", "not_run" if ode else "not_applicable",
                 evidence=("adjoint vs direct gradients need the model: advsweep.attacks.diagnostics."
                           "gradient_agreement (not stored in Parquet)") if ode else "no ODE blocks"),
            _collapsed(mine, t),
        ]
        if not ode:
            for r in checks:
                if r["check"] == "surrogate_stronger" and r["status"] == "not_run":
                    r.update(status="not_applicable", evidence="no ODE blocks")
        if "status" in rob and "reason" in rob:
            na = rob[(rob["trial_id"] == str(trial["trial_id"])) & (rob["status"] == "not_applicable")]
            for r in checks:
                if r["status"] == "not_run" and len(na):
                    r["evidence"] += "; not applicable here: " + ", ".join(
                        f"{a} ({why})" for a, why in zip(na["attack"], na["reason"]))
        verdict, why = _verdict(checks)
        why = why.replace("DIR", str(sweep.dir))
        for r in checks:
            rows.append({"trial_id": str(trial["trial_id"]), "trial_index": int(trial["trial_index"]),
                         "label": trial["label"], **r})
        failed = [r for r in checks if r["status"] == "fail"]
        verdicts.append({"trial_id": str(trial["trial_id"]), "trial_index": int(trial["trial_index"]),
                         "label": trial["label"], "model_name": trial["model_name"], "verdict": verdict,
                         "failed_checks": ",".join(r["check"] for r in failed),
                         "n_evaluated": sum(r["status"] in ("pass", "fail") for r in checks),
                         "summary": why if verdict != "masked" or not failed else
                         "; ".join(f"{r['check']}: {r['evidence']}" for r in failed)[:2000],
                         "mlflow_run_id": trial.get("mlflow_run_id")})
    return Audit(pd.DataFrame(rows, columns=CHECK_COLUMNS), pd.DataFrame(verdicts))


def write_audit(sweep: Sweep, audit: Audit, out_dir: str | Path | None = None, mlflow: bool = True) -> list[Path]:
    """audit/checks.parquet and audit/verdicts.parquet; with `mlflow`, each trial's verdict, failed checks and
    check values are added to its MLflow run (a tracking outage warns, Parquet stays the record)."""
    from advsweep.storage.parquet import write_atomic

    out = Path(out_dir) if out_dir else sweep.dir / "audit"
    files = [write_atomic(pa.Table.from_pandas(audit.checks, preserve_index=False), out / "checks.parquet",
                          sweep.sweep_id),
             write_atomic(pa.Table.from_pandas(audit.verdicts.drop(columns=["mlflow_run_id"]), preserve_index=False),
                          out / "verdicts.parquet", sweep.sweep_id)]
    from advsweep.storage.tracking import CLIENT_ENV, log_run_audit, runtime_uri

    uri = runtime_uri(sweep.manifest.get("mlflow_uri"), sweep.dir)  # the embedded store is stored by a relative name
    if mlflow and uri:
        import os

        for k, v in CLIENT_ENV.items():  # an unreachable server fails in seconds, not minutes per trial
            os.environ.setdefault(k, v)
        for v in audit.verdicts.itertuples():
            if not v.mlflow_run_id:
                continue
            mine = audit.checks[audit.checks["trial_id"] == v.trial_id]
            metrics = {f"audit.{r.check}": r.value for r in mine.itertuples() if r.status in ("pass", "fail")}
            record = {"verdict": v.verdict, "summary": v.summary,
                      "checks": json.loads(mine.drop(columns=["trial_id"]).to_json(orient="records"))}
            log_run_audit(uri, v.mlflow_run_id, {"audit.verdict": v.verdict, "audit.failed": v.failed_checks or "-"},
                          metrics, record)
    return files
