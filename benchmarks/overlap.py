"""Evaluation overlapped with training vs the sequential stage order, in one run on this machine.

A sweep of 8 short trials (ResNet width 8, Fashion-MNIST, 2–5 epochs so that trials finish at different times)
with an attack stage (FGSM + PGD-10 at two ε, 200 test images; `--n-train`, `--n-test` and `--pgd-steps` make
the stages larger), run into fresh directories on the same local Ray,
in ABBA order (sequential, overlapped, overlapped, sequential) so that a drifting load cancels: `eval.overlap: false` (train everything, then attack) and `eval.overlap: true` (attack each trial as soon as it
completes; its actors come from one warm pool kept for the whole sweep and reused by the evaluation stage).
Reported: wall time of each and their ratio; slot utilisation = Σ(busy time of trials and evaluation
units) ÷ (wall × slots), where a trial's busy time is its Tune wall time (training, monitoring, test evaluation) and
a unit's its own wall time; the machine's load average before and after each run is recorded.

    .venv/bin/python benchmarks/overlap.py [--out benchmarks/results/overlap.json] [--n-train 4000 --n-test 2000 --pgd-steps 50]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

SPEC = """
name: overlap-bench
seed: 0
data: {{dataset: fashion-mnist, n_train: {n_train}, n_val: 100, n_test: {n_test}, seed: 0}}
trials:
  - model: {{name: resnet, width: 8, blocks: 1}}
    training: {{recipe: {{name: natural}}, epochs: {{grid: [2, 3, 4, 5]}}, batch_size: 64, lr: {{grid: [0.05, 0.1]}}}}
attacks:
  - {{name: fgsm, eps: [0.05, 0.1]}}
  - {{name: pgd, eps: [0.05, 0.1], steps: {pgd_steps}}}
monitor: {{eps: 0.1, steps: 2, n: 50}}
eval: {{batch_size: 100, shard_size: 100, seed: 0, overlap: {overlap}}}
"""


def one(overlap: bool, root: Path, size: dict) -> dict:
    from advsweep.spec import parse_spec
    from advsweep.storage.parquet import read_examples, read_trials
    from advsweep.sweep.driver import run_sweep

    import ray

    load = os.getloadavg()[0]
    out = root / ("overlap" if overlap else "sequential")
    t0 = time.perf_counter()
    res = run_sweep(parse_spec(SPEC.format(overlap=str(overlap).lower(), **size)), out, make_plots=False)
    wall = time.perf_counter() - t0
    trials = read_trials(out).to_pandas()
    ex = read_examples(out, columns=["trial_id", "attack", "eps", "shard", "wall_time_s"]).to_pandas()
    unit_busy = float(ex.groupby(["trial_id", "attack", "eps", "shard"], observed=True)["wall_time_s"].max().sum())
    trial_busy = float(trials["wall_time_s"].sum())
    slots = int(ray.cluster_resources().get("CPU", 1))
    manifest = json.loads((out / "sweep.json").read_text())
    return {"overlapped_units": manifest.get("overlap", {}).get("units"), "load_after": os.getloadavg()[0],
            "overlap": overlap, "wall_s": wall, "trials": res.n_trials, "completed": res.n_completed,
            "trial_busy_s": trial_busy, "unit_busy_s": unit_busy, "slots": slots,
            "utilisation": (trial_busy + unit_busy) / (wall * slots), "load_before": load}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "overlap.json"))
    ap.add_argument("--rounds", type=int, default=2, choices=(1, 2), help="1: sequential, overlapped; 2: ABBA order")
    ap.add_argument("--n-train", type=int, default=1000, help="training images per trial")
    ap.add_argument("--n-test", type=int, default=200, help="test images attacked per trial")
    ap.add_argument("--pgd-steps", type=int, default=10)
    args = ap.parse_args()
    size = {"n_train": args.n_train, "n_test": args.n_test, "pgd_steps": args.pgd_steps}
    runs = []
    for i, overlap in enumerate([False, True, True, False][:2 * args.rounds]):  # ABBA: load drift cancels
        with tempfile.TemporaryDirectory() as d:
            runs.append(one(overlap, Path(d) / str(i), size))
    seq = sum(r["wall_s"] for r in runs if not r["overlap"])
    ovl = sum(r["wall_s"] for r in runs if r["overlap"])
    report = {"size": size, "runs": runs, "wall_ratio_overlap_vs_sequential": ovl / seq, "cpus": os.cpu_count()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    for r in runs:
        print(f"{'overlap' if r['overlap'] else 'sequential':>10}: wall {r['wall_s']:.1f} s, utilisation "
              f"{100 * r['utilisation']:.0f} % of {r['slots']} slots (load before {r['load_before']:.1f}, "
              f"after {r['load_after']:.1f})")
    print(f"overlapped / sequential wall: {report['wall_ratio_overlap_vs_sequential']:.2f}")


if __name__ == "__main__":
    main()
