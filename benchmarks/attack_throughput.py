#!/usr/bin/env python
"""Attack throughput: plain torchattacks loop vs the sharded evaluation engine, plus inner-loop variants.

One run, same examples, same models, same attack (PGD-ℓ∞, 20 steps, random start, the torchattacks-identical
configuration `pgd` with keep_best=False) on Fashion-MNIST:

  (a) the plain single-process torchattacks loop (clean prediction, torchattacks.PGD, adversarial prediction),
      torch threads = --threads;
  (b) `evaluate(..., num_workers=1, cpus_per_worker=--threads)` (the same thread budget as (a));
  (c) `evaluate(..., num_workers=--threads, cpus_per_worker=1)` (one worker per core).

(a) reproduces the engine's random starts (the per-unit seed, re-seeded per batch as `Attack.__call__` does), so the
per-example outcomes of (a), (b) and (c) are comparable one by one. Each configuration runs `--rounds` times in the
order a b c, c b a, a b c, ... (so that a drift in the machine's background load does not favour one of them); the
tables give the median time and the ratios with their min–max over rounds.

Inner loop (one process, one batch of --batch examples, PGD---inner-steps (10) with step 2.5ε/steps, the same
seed): torchattacks.PGD vs advsweep `pgd` vs + frozen weights vs + channels-last vs a 2× batch (whose first half is
the batch) vs + torch.compile (cold compile time apart, in an empty inductor cache) at --threads threads, and
torchattacks / advsweep at 1 thread. All variants run once per round (order reversed every other round); a
variant's ratio is torchattacks' time per example over its own in the same round. Adversarial images are compared
with torchattacks' bit for bit.

FLOPs: torch.utils.flop_counter.FlopCounterMode over one forward + input-gradient step (per example); achieved
GFLOP/s = useful FLOPs (steps × step FLOPs, + 2 forwards for the clean/adversarial predictions of (a)–(c)) / time.
Peak: float32 sgemm (2048², --threads threads, and 1 thread), sampled several times during the run; the best sample.

OpenMP: by default this process and its Ray workers run with OMP_WAIT_POLICY=PASSIVE (--omp-wait-policy), so that
(a), (b) and (c) share one threading setting; the probe measures the plain loop again in fresh processes with the
OpenMP default policy and with PASSIVE (on a busy machine the default was 5-6x slower at 2 threads; on a quiet one PASSIVE cost ~7 %).

Usage: python benchmarks/attack_throughput.py [--n 256] [--models resnet,odenet] [--out results.json]
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="Attack throughput: plain torchattacks loop vs the evaluation engine.")
    ap.add_argument("--n", type=int, default=256, help="test examples attacked by (a), (b), (c)")
    ap.add_argument("--models", default="resnet,odenet", help="comma list of: " + ", ".join(MODEL_NAMES))
    ap.add_argument("--out", default="benchmarks/attack_throughput.json", help="JSON results")
    ap.add_argument("--threads", type=int, default=2, help="the thread budget (cores)")
    ap.add_argument("--batch", type=int, default=64,
                    help="attack batch; a power of two makes advsweep pgd bit-identical to torchattacks")
    ap.add_argument("--shard", type=int, default=64, help="engine shard size (a multiple of --batch)")
    ap.add_argument("--steps", type=int, default=20, help="PGD steps")
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--rounds", type=int, default=2, help="repeats of (a), (b), (c), in the order a b c, c b a, ...")
    ap.add_argument("--inner-rounds", type=int, default=2, help="repeats of the inner-loop variants")
    ap.add_argument("--inner-steps", type=int, default=10, help="PGD steps of the inner-loop variants")
    ap.add_argument("--train-steps", type=int, default=200)
    ap.add_argument("--train-batch", type=int, default=32)
    ap.add_argument("--compile", default="resnet", help="models to try torch.compile on: comma list, all, none")
    ap.add_argument("--compile-cache", choices=("fresh", "shared"), default="fresh",
                    help="fresh: an empty inductor cache, so the compile time is a cold compile's")
    ap.add_argument("--odenet-solver", default="rk4", help="rk4 (4 steps of 0.25) or e.g. dopri5")
    ap.add_argument("--omp-wait-policy", default="PASSIVE",
                    help="OMP_WAIT_POLICY of this process and the Ray workers (set before torch loads); "
                         "'inherit' keeps the environment's")
    ap.add_argument("--probe-steps", type=int, default=2, help="PGD steps of the OpenMP-policy probe")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--probe", help=argparse.SUPPRESS)  # internal: run the OpenMP probe on this checkpoint
    return ap.parse_args(argv)


MODEL_NAMES = ("resnet", "odenet")
if __name__ == "__main__":
    _ARGS = parse_args()
    if _ARGS.probe is None and _ARGS.omp_wait_policy != "inherit":
        # libgomp reads its wait policy when it loads (with torch): it has to be in the environment first.
        os.environ["OMP_WAIT_POLICY"] = _ARGS.omp_wait_policy

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

MODELS = {
    # name -> (registry name, options). The ODENet uses fixed-step rk4 (4 steps over [0, 1], as the quickstart's rk4
    # trial): its cost per forward is fixed, so FLOPs are exact and a batch's result does not depend on the rest of
    # the batch (dopri5's adaptive step size is chosen for the whole batch). --odenet-solver dopri5 to change it.
    "resnet": ("resnet", {"width": 64, "blocks": 4}),
    "odenet": ("odenet", {"width": 32, "solver": "rk4", "step_size": 0.25}),
}


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------- timing

def sgemm_gflops(threads: int, size: int = 2048, reps: int = 3) -> float:
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = 0.0
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = max(best, 2 * size ** 3 / (time.perf_counter() - t) / 1e9)
    torch.set_num_threads(old)
    return best


class Peak:
    """sgemm samples taken through the run (the machine may be shared: the best sample is the peak)."""

    def __init__(self, threads: int):
        self.threads = threads
        self.samples: dict[int, list[float]] = {threads: [], 1: []}

    def sample(self):
        for t in self.samples:
            self.samples[t].append(sgemm_gflops(t))

    def best(self, threads: int) -> float:
        return max(self.samples[threads])

    def summary(self):
        return {f"{t}_threads": {"best_gflops": max(v), "median_gflops": statistics.median(v), "samples": v}
                for t, v in self.samples.items()}


def spread(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "all": values}


# --------------------------------------------------------------------------------------------------------- models

def train(name: str, opts: dict, data, steps: int, batch: int, seed: int) -> tuple[torch.nn.Module, float]:
    from advsweep.models import build_model
    from advsweep.training.trainer import as_float_images

    torch.manual_seed(seed)
    model = build_model(name, data.channels, data.num_classes, data.image_size, **opts)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    model.train()
    start = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch,), generator=gen)
        loss = F.cross_entropy(model(as_float_images(x[idx])), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval(), time.perf_counter() - start


def save_checkpoint(model, name: str, opts: dict, data, d: Path) -> str:
    from advsweep.evaluation.checkpoints import CHECKPOINT_META, CHECKPOINT_STATE

    d.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "epoch": 1}, d / CHECKPOINT_STATE)
    (d / CHECKPOINT_META).write_text(json.dumps({"model": {"name": name, **opts}, "channels": data.channels,
                                                 "num_classes": data.num_classes, "image_size": data.image_size}))
    return str(d)


class _NoModules:
    """Stands in for FlopCounterMode's module tracker (whose backward hooks break torch.autograd.grad)."""

    parents = {"Global"}

    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def count_flops(model, x, y) -> dict[str, float]:
    """Per-example FLOPs of one forward and of one forward + input-gradient step (weights frozen: no weight grads)."""
    from torch.utils.flop_counter import FlopCounterMode

    m = copy.deepcopy(model)
    for p in m.parameters():
        p.requires_grad_(False)
    fc = FlopCounterMode(display=False)
    fc.mod_tracker = _NoModules()
    with fc:
        with torch.no_grad():
            m(x)
    fwd = fc.get_total_flops()
    with fc:
        xr = x.clone().requires_grad_(True)
        loss = F.cross_entropy(m(xr), y, reduction="sum")
        torch.autograd.grad(loss, xr)
    step = fc.get_total_flops()
    return {"forward": fwd / len(x), "step": step / len(x)}


# ------------------------------------------------------------------------------------------- (a), (b), (c) runs

def plain_loop(model, x, y, attack_cfg, trial_id, shard, batch, base_seed, eps, steps, alpha):
    """(a): the plain torchattacks loop, with the engine's random starts (per-unit seed, re-seeded per batch)."""
    import torchattacks

    from advsweep.evaluation.units import Unit, shard_bounds

    clean, adv, l2 = [], [], []
    start = time.perf_counter()
    for s, (lo, hi) in enumerate(shard_bounds(len(x), shard)):
        seed = Unit(trial_id, attack_cfg, (eps,), s).seed(base_seed)
        for i in range(lo, hi, batch):
            xb, yb = x[i:min(i + batch, hi)], y[i:min(i + batch, hi)]
            with torch.no_grad():
                clean.append(model(xb).argmax(1))
            torch.manual_seed(seed)
            xa = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True)(xb, yb)
            with torch.no_grad():
                adv.append(model(xa).argmax(1))
            l2.append((xa - xb).flatten(1).norm(dim=1))
    wall = time.perf_counter() - start
    clean, adv = torch.cat(clean).numpy(), torch.cat(adv).numpy()
    return wall, {"clean_pred": clean, "adv_pred": adv, "l2": torch.cat(l2).numpy().astype(np.float32)}


def engine_run(out, trial, attack_cfg, x, y, index, shard, batch, base_seed, workers, cpus):
    from advsweep.evaluation.engine import evaluate
    from advsweep.storage.parquet import read_examples

    shutil.rmtree(out, ignore_errors=True)
    units = []
    start = time.perf_counter()
    counts = evaluate(out, "bench", [trial], [attack_cfg], x, y, index, shard_size=shard, batch_size=batch,
                      base_seed=base_seed, num_workers=workers, cpus_per_worker=cpus,
                      progress=lambda u, info: units.append(info))
    wall = time.perf_counter() - start
    assert counts["ran"] == counts["units"], counts
    df = read_examples(out).to_pandas().sort_values("example_index")
    per_worker: dict[int, float] = {}
    for u in units:
        per_worker[u["pid"]] = per_worker.get(u["pid"], 0.0) + u["seconds"]
    return wall, {"clean_pred": df["clean_pred"].to_numpy(), "adv_pred": df["adv_pred"].to_numpy(),
                  "l2": df["l2"].to_numpy().astype(np.float32)}, {
        "unit_seconds_sum": sum(u["seconds"] for u in units), "busiest_worker_s": max(per_worker.values()),
        "workers_seen": len(per_worker)}


def compare(ref, others, y):
    """Accuracies of the first run of a configuration; differences from (a)'s first run: the most over all runs."""
    def robust(o):
        return (o["clean_pred"] == y) & (o["adv_pred"] == y)

    first = others[0]
    return {"robust_acc": float(robust(first).mean()), "clean_acc": float((first["clean_pred"] == y).mean()),
            "robust_differs": max(int((robust(ref) != robust(o)).sum()) for o in others),
            "adv_pred_differs": max(int((ref["adv_pred"] != o["adv_pred"]).sum()) for o in others),
            "l2_differs": max(int((ref["l2"] != o["l2"]).sum()) for o in others),
            "clean_pred_differs": max(int((ref["clean_pred"] != o["clean_pred"]).sum()) for o in others)}


# ----------------------------------------------------------------------------------------------------- inner loop

def inner_variants(model, xb, yb, eps, alpha, seed, threads, do_compile):
    """name -> (fn(steps) returning x_adv of the len(xb) examples, examples attacked, threads); compile seconds."""
    import torchattacks

    from advsweep.attacks import build_attack

    frozen = copy.deepcopy(model).requires_grad_(False)
    cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x_cl = xb.contiguous(memory_format=torch.channels_last)
    x2 = torch.cat([xb, xb.flip(0)])  # a 2x batch whose first half is the batch (the same random start there)
    y2 = torch.cat([yb, yb.flip(0)])

    def ta(steps):
        torch.manual_seed(seed)  # what advsweep's Attack.__call__ does
        return torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True)(xb, yb)

    def ours(steps, m=model, x=xb, y=yb):
        return build_attack("pgd", m, eps, seed, steps=steps, alpha=alpha, keep_best=False)(x, y).x_adv[:len(xb)]

    n, t = len(xb), threads
    v = {
        "torchattacks PGD": (ta, n, t),
        "advsweep pgd": (ours, n, t),
        "+ frozen weights": (lambda s: ours(s, frozen), n, t),
        "+ channels-last": (lambda s: ours(s, cl, x_cl).contiguous(), n, t),
        "2x batch": (lambda s: ours(s, model, x2, y2), 2 * n, t),
        "torchattacks PGD, 1 thread": (ta, n, 1),
        "advsweep pgd, 1 thread": (ours, n, 1),
    }
    compile_s = None
    if do_compile:
        try:
            compiled = torch.compile(copy.deepcopy(model))
            start = time.perf_counter()
            ours(1, compiled)  # compiles the forward and the backward
            compile_s = time.perf_counter() - start
            v["+ torch.compile"] = (lambda s: ours(s, compiled), n, t)
        except Exception as exc:  # noqa: BLE001 - report it, do not fail the benchmark
            compile_s = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    return v, compile_s


def run_inner(model, xb, yb, eps, steps, alpha, seed, threads, rounds, do_compile, flops_step, peak):
    """Every variant once per round (order reversed on odd rounds); ratio = baseline time/example over the
    variant's, in the same round."""
    variants, compile_s = inner_variants(model, xb, yb, eps, alpha, seed, threads, do_compile)
    base = "torchattacks PGD"
    times = {k: [] for k in variants}
    outs = {}
    for fn, _, th in variants.values():  # warm-up: oneDNN primitives, compiled graphs
        torch.set_num_threads(th)
        fn(1)
    for r in range(rounds):
        for k in list(variants) if r % 2 == 0 else list(variants)[::-1]:
            fn, _, th = variants[k]
            torch.set_num_threads(th)
            start = time.perf_counter()
            outs[k] = fn(steps)
            times[k].append(time.perf_counter() - start)
    torch.set_num_threads(threads)
    ref, nb = outs[base], variants[base][1]
    res = {}
    for k, (_, n, th) in variants.items():
        t = statistics.median(times[k])
        gflops = flops_step * steps * n / t / 1e9
        ratios = [(tb / nb) / (tk / n) for tb, tk in zip(times[base], times[k])]
        res[k] = {"examples_per_s": n / t, "seconds": spread(times[k]), "examples": n, "threads": th,
                  "speedup_vs_torchattacks": spread(ratios), "gflops": gflops,
                  "pct_of_peak": 100 * gflops / peak.best(th),
                  "examples_differing_from_torchattacks": int((outs[k] != ref).flatten(1).any(1).sum()),
                  "max_abs_diff": float((outs[k] - ref).abs().max())}
    return res, compile_s


def probe(args) -> None:
    """Child process: torchattacks PGD on one batch under this process's OpenMP settings; prints JSON."""
    import torchattacks

    from advsweep.data import load_dataset
    from advsweep.evaluation.checkpoints import load_model
    from advsweep.training.trainer import as_float_images

    data = load_dataset("fashion-mnist")
    x = as_float_images(torch.from_numpy(data.x_test[:args.batch]))
    y = torch.from_numpy(data.y_test[:args.batch])
    model = load_model(args.probe)
    out = {"omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}
    for th in (args.threads, 1):
        torch.set_num_threads(th)
        torchattacks.PGD(model, eps=args.eps, steps=1)(x, y)  # warm-up
        ts = []
        for _ in range(2):
            start = time.perf_counter()
            torchattacks.PGD(model, eps=args.eps, steps=args.probe_steps)(x, y)
            ts.append(time.perf_counter() - start)
        out[f"{th}_threads_examples_per_s"] = args.batch / min(ts)
    print(json.dumps(out))


def omp_probe(ckpt: str, args) -> dict:
    """The plain torchattacks loop (one batch, --probe-steps steps) with the OpenMP default policy and with PASSIVE,
    each in a fresh process (the policy is read when the OpenMP runtime loads)."""
    import subprocess

    res = {}
    for policy in ("default", "PASSIVE"):
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
        if policy != "default":
            env["OMP_WAIT_POLICY"] = policy
        cmd = [sys.executable, __file__, "--probe", ckpt, "--threads", str(args.threads), "--batch", str(args.batch),
               "--eps", str(args.eps), "--probe-steps", str(args.probe_steps)]
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if p.returncode != 0:
            res[policy] = {"error": p.stderr.strip().splitlines()[-1:]}
        else:
            res[policy] = json.loads(p.stdout.strip().splitlines()[-1])
    return res


# ---------------------------------------------------------------------------------------------------------- main

def main(args: argparse.Namespace) -> None:
    if args.probe:
        torch.set_num_threads(args.threads)
        return probe(args)
    import ray

    from advsweep.data import load_dataset, stratified_subset
    from advsweep.evaluation.engine import TrialRef
    from advsweep.evaluation.units import AttackConfig
    from advsweep.training.trainer import as_float_images

    t_start = time.perf_counter()
    torch.set_num_threads(args.threads)
    names = [m for m in args.models.split(",") if m]
    compile_for = {"all": set(names), "none": set()}.get(args.compile, set(args.compile.split(",")))
    if args.odenet_solver != "rk4":
        MODELS["odenet"] = ("odenet", {"width": 32, "solver": args.odenet_solver})
    data = load_dataset("fashion-mnist")
    if args.shard % args.batch:
        raise SystemExit("--shard must be a multiple of --batch")
    idx = stratified_subset(data.y_test, args.n, args.seed)
    x_np, y_np = data.x_test[idx], data.y_test[idx]
    x, y = as_float_images(torch.from_numpy(x_np)), torch.from_numpy(y_np)
    alpha = 2.5 * args.eps / args.steps  # the advsweep default, passed to torchattacks too
    attack_cfg = AttackConfig(f"pgd{args.steps}", "pgd", (args.eps,), {"steps": args.steps, "keep_best": False})
    work = Path(tempfile.mkdtemp(prefix="advsweep-bench-"))
    if args.compile_cache == "fresh":
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(work / "inductor-cache")
    ray.init(address="local", num_cpus=args.threads, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONWARNINGS": "ignore::DeprecationWarning"}})
    peak = Peak(args.threads)
    peak.sample()
    results = {"machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                           "python": platform.python_version(), "threads": args.threads,
                           "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                           "loadavg_start": os.getloadavg()},
               "args": {k: v for k, v in vars(args).items() if k != "probe"}, "models": {}}
    try:
        for name in names:
            reg, opts = MODELS[name]
            log(f"[{name}] training {args.train_steps} steps ...")
            model, train_s = train(reg, opts, data, args.train_steps, args.train_batch, args.seed)
            ckpt = save_checkpoint(model, reg, opts, data, work / f"ckpt-{name}")
            trial = TrialRef(name, ckpt)
            fl = count_flops(model, x[:args.batch], y[:args.batch])
            per_ex = args.steps * fl["step"] + 2 * fl["forward"]  # attack + clean and adversarial predictions
            with torch.no_grad():
                test_acc = float((model(as_float_images(torch.from_numpy(data.x_test[:2000]))).argmax(1)
                                  == torch.from_numpy(data.y_test[:2000])).float().mean())
            R = {"registry": reg, "options": opts, "train_seconds": train_s, "test_acc_2000": test_acc,
                 "flops_per_example": fl, "configs": {}}
            log(f"    trained in {train_s:.0f}s, clean accuracy {test_acc:.3f} (first 2000 test images)")
            # (a), (b), (c) in rounds a b c / c b a / ...
            cfgs = {"a": "plain torchattacks loop", "b": "engine, 1 worker", "c": f"engine, {args.threads} workers"}
            times = {k: [] for k in cfgs}
            extra = {k: [] for k in cfgs}
            outcome = {}
            for r in range(args.rounds):
                for k in ("a", "b", "c") if r % 2 == 0 else ("c", "b", "a"):
                    log(f"[{name}] round {r + 1}: ({k}) {cfgs[k]} ...")
                    if k == "a":
                        wall, out = plain_loop(model, x, y, attack_cfg, name, args.shard, args.batch, args.seed,
                                               args.eps, args.steps, alpha)
                        info = {}
                    else:
                        workers, cpus = (1, args.threads) if k == "b" else (args.threads, 1)
                        wall, out, info = engine_run(work / f"out-{name}-{k}", trial, attack_cfg, x_np, y_np, idx,
                                                     args.shard, args.batch, args.seed, workers, cpus)
                    times[k].append(wall)
                    extra[k].append(info)
                    outcome.setdefault(k, []).append(out)
                    log(f"    {wall:.1f}s  {args.n / wall:.2f} examples/s")
                peak.sample()
            best_peak = peak.best(args.threads)
            for k, label in cfgs.items():
                t = statistics.median(times[k])
                ratio = [ta / tk for ta, tk in zip(times["a"], times[k])]
                gflops = per_ex * args.n / t / 1e9
                busy = [e["busiest_worker_s"] for e in extra[k]] if k != "a" else times[k]
                R["configs"][k] = {"label": label, "seconds": spread(times[k]), "examples_per_s": args.n / t,
                                   "startup_s": [w - b for w, b in zip(times[k], busy)],
                                   "steady_examples_per_s": args.n / statistics.median(busy),
                                   "steady_speedup_vs_a": spread([ta / b for ta, b in zip(times["a"], busy)]),
                                   "speedup_vs_a": spread(ratio), "gflops": gflops,
                                   "pct_of_peak": 100 * gflops / best_peak, "engine": extra[k],
                                   **compare(outcome["a"][0], outcome[k], y_np)}
            log(f"[{name}] inner-loop variants ...")
            res, compile_s = run_inner(model, x[:args.batch], y[:args.batch], args.eps, args.inner_steps,
                                       2.5 * args.eps / args.inner_steps,
                                       unit0_seed(name, attack_cfg, args.eps, args.seed), args.threads,
                                       args.inner_rounds, name in compile_for, fl["step"], peak)
            R["inner_loop"] = res
            R["compile_seconds"] = compile_s
            peak.sample()
            results["models"][name] = R
            if name == names[0]:
                log("OpenMP wait-policy probe ...")
                results["omp_probe"] = {"model": name, "steps": args.probe_steps, **omp_probe(ckpt, args)}
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    results["peak_sgemm"] = peak.summary()
    results["machine"]["loadavg_end"] = os.getloadavg()
    results["total_seconds"] = time.perf_counter() - t_start
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1, default=float))
    md = markdown(results, args)
    Path(args.out).with_suffix(".md").write_text(md + "\n")
    print(md)
    log(f"wrote {args.out} ({results['total_seconds']:.0f}s in all)")


def unit0_seed(trial_id, attack_cfg, eps, base_seed):
    from advsweep.evaluation.units import Unit

    return Unit(trial_id, attack_cfg, (eps,), 0).seed(base_seed)


def _r(s):
    return f"{s['median']:.2f}× ({s['min']:.2f}–{s['max']:.2f})"


def markdown(results, args) -> str:
    pk = results["peak_sgemm"]
    t = args.threads
    lines = [f"PGD-ℓ∞ {args.steps} steps (ε={args.eps}, α=2.5ε/steps, random start), Fashion-MNIST test, "
             f"n={args.n}, batch {args.batch}, shard {args.shard}, {t}-thread budget, OMP_WAIT_POLICY="
             f"{results['machine']['omp_wait_policy']}; sgemm 2048² peak "
             f"{pk[f'{t}_threads']['best_gflops']:.1f} GFLOP/s "
             f"({t} threads; median {pk[f'{t}_threads']['median_gflops']:.1f}), {pk['1_threads']['best_gflops']:.1f} "
             f"GFLOP/s (1 thread); load average {results['machine']['loadavg_start'][0]:.1f} at the start, "
             f"{results['machine']['loadavg_end'][0]:.1f} at the end.", ""]
    lines += ["| model | configuration | examples/s | vs (a): median (min–max) | engine start-up | without start-up: "
              "examples/s, vs (a) | GFLOP/s | % of peak | clean acc | robust acc | per-example differences vs (a) |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name, R in results["models"].items():
        for k, c in R["configs"].items():
            diff = (f"robust {c['robust_differs']}, adv pred {c['adv_pred_differs']}, ‖δ‖₂ {c['l2_differs']}"
                    + (" (round 2+ vs round 1)" if k == "a" else ""))
            start = "—" if k == "a" else f"{statistics.median(c['startup_s']):.1f} s"
            steady = "—" if k == "a" else f"{c['steady_examples_per_s']:.2f}, {_r(c['steady_speedup_vs_a'])}"
            lines.append(f"| {name} | ({k}) {c['label']} | {c['examples_per_s']:.2f} | {_r(c['speedup_vs_a'])} | "
                         f"{start} | {steady} | {c['gflops']:.1f} | {c['pct_of_peak']:.0f} % | {c['clean_acc']:.3f} | "
                         f"{c['robust_acc']:.3f} | {diff} |")
    lines += ["", "Engine start-up = wall time − the busiest worker's unit time (actor processes, imports, model "
                  "loading, scheduling); 'without start-up' divides by the busiest worker's unit time instead. GFLOP/s "
                  f"and % of peak (the {t}-thread sgemm peak) use the wall time.", "",
              f"Inner loop (one process, one batch of {args.batch}, PGD-{args.inner_steps}; ratio = torchattacks time "
              "per example / the variant's, in the same round; % of peak against the sgemm peak at the variant's "
              "thread count):", "",
              "| model | variant | threads | examples/s | vs torchattacks: median (min–max) | GFLOP/s | % of peak "
              "| examples ≠ torchattacks (max abs diff) |", "|---|---|---:|---:|---:|---:|---:|---|"]
    for name, R in results["models"].items():
        for k, v in R["inner_loop"].items():
            lines.append(f"| {name} | {k} | {v['threads']} | {v['examples_per_s']:.2f} | "
                         f"{_r(v['speedup_vs_torchattacks'])} | {v['gflops']:.1f} | {v['pct_of_peak']:.0f} % | "
                         f"{v['examples_differing_from_torchattacks']} of {args.batch} ({v['max_abs_diff']:.3g}) |")
        if R.get("compile_seconds") is not None:
            cs = R["compile_seconds"]
            lines.append(f"| {name} | torch.compile: compile time | | {cs if isinstance(cs, str) else f'{cs:.0f} s'} "
                         "| | | | |")
    pr = results.get("omp_probe")
    if pr:
        lines += ["", f"OpenMP wait policy (plain torchattacks PGD-{pr['steps']} on one batch of {args.batch}, "
                      f"{pr['model']}, fresh process each; examples/s):", "",
                  f"| policy | {t} threads | 1 thread |", "|---|---:|---:|"]
        for pol in ("default", "PASSIVE"):
            r = pr[pol]
            if "error" in r:
                lines.append(f"| {pol} | error: {r['error']} | |")
            else:
                two, one = r[f"{t}_threads_examples_per_s"], r["1_threads_examples_per_s"]
                lines.append(f"| {pol} | {two:.1f} | {one:.1f} |")
    lines += ["", "FLOPs per example (FlopCounterMode): " + "; ".join(
        f"{n}: forward {R['flops_per_example']['forward'] / 1e6:.1f} M, forward + input gradient "
        f"{R['flops_per_example']['step'] / 1e6:.1f} M (trained {R['train_seconds']:.0f} s, clean accuracy "
        f"{R['test_acc_2000']:.3f} on 2000 test images)" for n, R in results["models"].items()),
        f"Total benchmark time {results['total_seconds']:.0f} s."]
    return "\n".join(lines)


if __name__ == "__main__":
    main(_ARGS)
