#!/usr/bin/env python
"""Analysis at scale: frontier + bootstrap + audit + report on a synthetic sweep written in the real schema.

Sweep (default): 200 trials × 10,000 test examples × 3 attacks (pgd, fgsm, square) × 4 ε = 24 M example rows in
2,400 Parquet files (the engine's hive layout, written by advsweep.storage.parquet), a trials table (4 model
families, varying width and learning rate) and a robustness table. Per-example outcomes are simulated with shared
per-example difficulty (so trials are correlated on the same examples, as in a real sweep).

Wall times on a shared machine depend on its load (recorded); `cpu_s` (user + system CPU seconds of the analysis
after imports, figure workers included) is the machine-independent part: on an idle 2-core machine the wall time
is at most about that.

Measured in a fresh child process (so its peak RSS is the analysis alone; torch threads are irrelevant here, BLAS
runs with its default threads): load (scan of the examples table into per-cell matrices), frontier + bootstrap
(1,000 resamples of the test examples), audit, report (figures + HTML). Steady-state throughput of the bootstrap is
resamples per second (fixed start-up cost = imports + load, reported apart).

Plain alternative, same run: the previous all-pairs Pareto code (O(n²) time and memory) against the sort-based
one, on the same 200-point front for 1,000 resamples, and on one front of 20,000 points.

Usage: python benchmarks/analysis_scale.py [--trials 200] [--examples 10000] [--out benchmarks/analysis_scale.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

ATTACKS = {"pgd": ("pgd", 1.0, True), "fgsm": ("fgsm", 0.7, True), "square": ("square", 0.6, False)}
EPS = (0.025, 0.05, 0.1, 0.2)
FAMILIES = ("resnet", "odenet", "sonet", "mlp")


def write_sweep(out: Path, n_trials: int, n_examples: int, seed: int = 0) -> float:
    from advsweep.storage import schema as S
    from advsweep.storage.parquet import example_file, trials_table, write_atomic

    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 10, n_examples).astype(np.int32)
    difficulty = rng.uniform(0, 1, n_examples)  # shared across trials: hard examples are hard for everyone
    index = np.arange(n_examples, dtype=np.int64)
    trials, rob_rows = [], []
    for t in range(n_trials):
        fam = FAMILIES[t % len(FAMILIES)]
        nat = rng.uniform(0.6, 0.95)
        strength = rng.uniform(0.05, 0.9) * (1.1 - nat)  # robust-accuracy scale: the trade-off
        clean_ok = difficulty + rng.normal(0, 0.05, n_examples) < nat
        clean_pred = np.where(clean_ok, label, (label + 1) % 10).astype(np.int32)
        trial_id = f"trial{t:04d}"
        trials.append({"schema_version": S.SCHEMA_VERSION, "sweep_id": "bench", "trial_id": trial_id,
                       "trial_index": t, "family": t % len(FAMILIES), "model_name": fam, "status": "completed",
                       "epochs_completed": 10, "epochs_planned": 10, "n_test": n_examples,
                       "natural_acc": float(clean_ok.mean()), "natural_ci_low": 0.0, "natural_ci_high": 1.0,
                       "nfe_forward": 0.0,
                       "config": {"model.name": fam, "model.width": int(8 * (1 + t % 5)),
                                  "training.lr": float([0.1, 0.01, 0.001][t % 3])}})
        for attack, (name, power, grads) in ATTACKS.items():
            for eps in EPS:
                keep = clean_ok & (difficulty < nat * np.exp(-power * eps / (strength * 0.2)))
                adv = np.where(keep, label, (label + 2) % 10).astype(np.int32)
                adv = np.where(clean_ok, adv, clean_pred)
                n = n_examples
                cols = {
                    "sweep_id": pa.array(["bench"] * n), "attack_name": pa.array([name] * n),
                    "attack_params": pa.array(["{}"] * n), "norm": pa.array(["linf"] * n),
                    "eps": np.full(n, eps), "shard": np.zeros(n, np.int32), "example_index": index,
                    "label": label, "clean_pred": clean_pred, "adv_pred": adv, "robust": keep,
                    "margin": np.where(adv == label, -1.0, 1.0).astype(np.float32),
                    "linf": np.full(n, eps, np.float32), "l2": np.full(n, eps * 10, np.float32),
                    "rms": np.full(n, eps / 3, np.float32), "distance": pa.nulls(n, pa.float32()),
                    "steps": np.full(n, 20 if grads else 1000, np.int32),
                    "grad_norm": rng.uniform(1, 10, n).astype(np.float32) if grads else pa.nulls(n, pa.float32()),
                    "seed": np.zeros(n, np.int64), "wall_time_s": np.full(n, 1.0)}
                table = pa.table({f.name: pa.array(cols.get(f.name, pa.nulls(n, f.type)), type=f.type)
                                  for f in S.EXAMPLE_COLUMNS}, schema=S.EXAMPLE_COLUMNS)
                write_atomic(table, example_file(out, trial_id, attack, eps, 0), "bench")
                k = int(keep.sum())
                rob_rows.append({"sweep_id": "bench", "trial_id": trial_id, "attack": attack, "attack_name": name,
                                 "norm": "linf", "eps": eps, "n": n, "n_robust": k, "robust_acc": k / n,
                                 "ci_low": 0.0, "ci_high": 1.0, "clean_acc": float(clean_ok.mean())})
    write_atomic(trials_table(trials), out / "trials" / "part-0.parquet", "bench")
    write_atomic(pa.Table.from_pylist(rob_rows, schema=S.ROBUSTNESS), out / "robustness" / "part-0.parquet", "bench")
    (out / "sweep.json").write_text(json.dumps({"sweep_id": "bench", "name": "analysis-scale",
                                                "data": {"dataset": "synthetic", "n_test": n_examples}}))
    (out / "spec.yaml").write_text("name: analysis-scale\n")
    return time.perf_counter() - start


def child(sweep_dir: str, resamples: int) -> None:
    """Runs in a fresh process: times every phase; the parent reads its peak RSS."""
    t0 = time.perf_counter()
    from advsweep.analysis.report import build_report

    imports = time.perf_counter() - t0
    def cpu_now() -> float:  # this process and its (reaped) figure workers
        return sum(u.ru_utime + u.ru_stime for u in (resource.getrusage(resource.RUSAGE_SELF),
                                                      resource.getrusage(resource.RUSAGE_CHILDREN)))

    before = cpu_now()
    rep = build_report(sweep_dir, Path(sweep_dir) / "report", resamples=resamples)
    cpu = cpu_now() - before
    peak = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)) * 1024
    print(json.dumps({"imports_s": imports, **{f"{k}_s": v for k, v in rep.timings.items()}, "cpu_s": cpu,
                      "peak_rss_bytes": peak, "report_bytes": rep.path.stat().st_size,
                      "n_points": int(len(rep.fronts.points)), "n_figures": len(list((Path(sweep_dir) / "report" /
                                                                                      "figures").glob("*.png")))}))


def pareto_all_pairs(natural, robust):
    """The previous implementation (analysis/frontier.py before the sort-based one)."""
    pts = np.stack([natural, robust], axis=1)
    ge = (pts[None, :, :] >= pts[:, None, :]).all(-1)
    gt = (pts[None, :, :] > pts[:, None, :]).any(-1)
    return ~(ge & gt).any(axis=1)


def pareto_comparison() -> dict:
    from advsweep.analysis.frontier import pareto_mask, pareto_mask_columns

    rng = np.random.default_rng(1)
    nat, rob = rng.integers(0, 10001, (200, 1000)) / 1e4, rng.integers(0, 10001, (200, 1000)) / 1e4
    t = time.perf_counter()
    plain = np.stack([pareto_all_pairs(nat[:, b], rob[:, b]) for b in range(1000)], 1)
    t_plain = time.perf_counter() - t
    t = time.perf_counter()
    ours = pareto_mask_columns(nat, rob)
    t_ours = time.perf_counter() - t
    assert (plain == ours).all()
    n = 20000
    big_nat, big_rob = rng.integers(0, 10001, n) / 1e4, rng.integers(0, 10001, n) / 1e4
    t = time.perf_counter()
    big = pareto_mask(big_nat, big_rob)
    t_big = time.perf_counter() - t
    return {"front_200_x_1000_resamples": {"all_pairs_s": t_plain, "sort_based_s": t_ours,
                                           "speedup": t_plain / t_ours},
            "front_20000_points": {"sort_based_s": t_big, "on_front": int(big.sum()),
                                   "all_pairs_memory_bytes": 3 * n * n,  # two n×n×2 bool temporaries reduced + n×n
                                   "all_pairs": "not run: needs ≈ 3·n² bytes of boolean temporaries"}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--examples", type=int, default=10000)
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--dir", default=None, help="keep the synthetic sweep here (default: a temp dir, removed)")
    ap.add_argument("--out", default="benchmarks/analysis_scale.json")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.resamples)
        return
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="advsweep-scale-"))
    sweep_dir = base / "sweep"
    load_start = os.getloadavg()
    try:
        if not (sweep_dir / "trials").exists():
            gen = write_sweep(sweep_dir, args.trials, args.examples)
        else:
            gen = None  # reused an existing synthetic sweep (--dir)
        size = sum(f.stat().st_size for f in (sweep_dir / "examples").rglob("*.parquet"))
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, "--child", str(sweep_dir), "--resamples",
                               str(args.resamples)], capture_output=True, text=True, check=True)
        wall = time.perf_counter() - start
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        peak_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        pareto = pareto_comparison()
    finally:
        if not args.dir:
            shutil.rmtree(base, ignore_errors=True)
    result = {
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
                    "loadavg_start": load_start, "loadavg_end": os.getloadavg()},
        "sweep": {"trials": args.trials, "examples": args.examples, "attacks": list(ATTACKS), "eps": list(EPS),
                  "rows": args.trials * args.examples * len(ATTACKS) * len(EPS), "parquet_bytes": size,
                  "generate_s": gen, "resamples": args.resamples},
        "analysis": {**res, "child_wall_s": wall, "peak_rss_gib": res["peak_rss_bytes"] / 2 ** 30,
                     "peak_rss_children_bytes": peak_children,
                     "bootstrap_resamples_per_s": args.resamples / res["frontier_bootstrap_s"],
                     "total_without_imports_s": res["total_s"]},
        "pareto": pareto,
    }
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
