#!/usr/bin/env python
"""What limits the ODENet's share of the sgemm peak in an attack step, and how much the batch lifts it.

One attack step = forward + input gradient of the summed cross-entropy (what PGD, APGD and FGSM run), on one torch
thread, for `resnet` (width 64, 4 blocks) and `odenet` (width 32, rk4, 4 steps of 0.25) at several batch sizes.
Per configuration: seconds per step (median of --reps, after warm-up; models and batch sizes interleaved so that a
drifting machine affects all alike), GFLOP/s from FlopCounterMode, share of the one-thread sgemm peak measured in
the same run, and, at each batch, the share of the step's CPU time per kind of operator (torch.profiler self time:
convolution forward/backward, GroupNorm forward/backward, the rest).

    .venv/bin/python benchmarks/odenet_peak_share.py [--batches 64,192,512] [--out benchmarks/results/odenet_peak_share.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from attack_throughput import MODELS, count_flops, sgemm_gflops  # noqa: E402

KINDS = (("convolution backward", ("convolution_backward",)), ("convolution forward", ("mkldnn_convolution",
         "conv2d", "_convolution")), ("GroupNorm", ("group_norm",)), ("copies", ("copy_",)))


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def step(model, x, y):
    xr = x.clone().requires_grad_(True)
    loss = F.cross_entropy(model(xr), y, reduction="sum")
    return torch.autograd.grad(loss, xr)[0]


def breakdown(model, x, y) -> dict[str, float]:
    """Share of the step's self CPU time per kind of operator."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            step(model, x, y)
    rows = [(e.key, e.self_cpu_time_total) for e in prof.key_averages()]
    total = sum(t for _, t in rows)
    out, seen = {}, set()
    for kind, names in KINDS:
        keys = {k for k, _ in rows if k not in seen and any(n in k for n in names)}
        seen |= keys
        out[kind] = sum(t for k, t in rows if k in keys) / total
    out["everything else (elementwise, autograd, Python)"] = 1 - sum(out.values())
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="64,192,512")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "odenet_peak_share.json"))
    args = ap.parse_args()
    from advsweep.models import build_model

    torch.set_num_threads(1)
    torch.manual_seed(0)
    batches = [int(b) for b in args.batches.split(",")]
    models = {name: build_model(kind, 1, 10, 28, **opts).eval() for name, (kind, opts) in MODELS.items()}
    data = {b: (torch.rand(b, 1, 28, 28), torch.randint(0, 10, (b,))) for b in batches}
    flops = {name: count_flops(m, *data[batches[0]])["step"] for name, m in models.items()}
    times = {(n, b): [] for n in models for b in batches}
    peaks = []
    start = time.perf_counter()
    for r in range(args.rounds):
        peaks.append(sgemm_gflops(1))
        for b in (batches if r % 2 == 0 else batches[::-1]):
            for name in (models if r % 2 == 0 else list(models)[::-1]):
                m, (x, y) = models[name], data[b]
                step(m, x, y)  # warm-up: oneDNN primitives for this shape
                times[(name, b)] += [_timed(lambda: step(m, x, y)) for _ in range(args.reps)]
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    peak = statistics.median(peaks)
    results = {"machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                           "loadavg": os.getloadavg()},
               "threads": 1, "sgemm_peak_gflops_1thread": peak, "peak_samples": peaks,
               "step_flops_per_example": flops, "configs": []}
    for name in models:
        for b in batches:
            sec = statistics.median(times[(name, b)])
            gf = flops[name] * b / sec / 1e9
            results["configs"].append({"model": name, "batch": b, "step_s": sec, "examples_per_s": b / sec,
                                       "gflops": gf, "share_of_peak": gf / peak,
                                       "time_by_operator": breakdown(models[name], *data[b])})
    results["total_seconds"] = time.perf_counter() - start
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"one thread, sgemm peak {peak:.0f} GFLOP/s (median of {len(peaks)})\n")
    print("| model | batch | examples/s | GFLOP/s | % of peak | conv bwd | conv fwd | GroupNorm | copies | rest |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c in results["configs"]:
        t = list(c["time_by_operator"].values())
        print(f"| {c['model']} | {c['batch']} | {c['examples_per_s']:.0f} | {c['gflops']:.1f} | "
              f"{100 * c['share_of_peak']:.0f} % | " + " | ".join(f"{100 * v:.0f} %" for v in t) + " |")
    print(f"\nwrote {args.out} ({results['total_seconds']:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
