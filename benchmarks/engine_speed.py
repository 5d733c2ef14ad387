#!/usr/bin/env python
"""The evaluation engine vs the plain single-process loop, at three job sizes, for PGD-20, AutoAttack and Square.

For each attack and job size, in one run, interleaved ABBA (A B C C B A for two rounds, so that a drifting machine
load affects every arm alike):

  (A) plain loop: one process, torch threads = --threads; per trial and ε, per batch of --batch examples: clean
      prediction, the attack (advsweep's own attack class, with the engine's seeds, so rows are comparable one by
      one), adversarial prediction. Its start-up is nil (torch and the data are already in the process).
  (B) the engine as a user calls it once (`evaluate`, default layout: one 1-thread worker per core; with
      --worker-threads N, N-thread workers): actor start-up included. Work that makes one engine job runs in process
      (no actors); otherwise the calling process runs jobs itself until an actor is up (head start).
  (C) the engine on a warm pool (`WorkerPool`, as in a sweep whose actors are already up): one pool for the whole
      benchmark, started and waited for once (that wait is the fixed start-up, reported apart); its actors keep the
      models and clean predictions of earlier runs, as in a sweep's evaluation stage after overlapped evaluation or a
      second attack on the same trials. C's wall is the steady-state throughput.
  (D) with --processes-arm: the plain loop in one 1-thread process per core, no Ray, each on a shard-aligned part of
      the examples, started and loaded beforehand: the layout of (C)'s workers without the engine, so C ÷ D is what
      the engine itself costs or gains and D ÷ A what separate processes gain on this machine.

Job sizes (CPU defaults scaled to minutes on 2 cores; --mid-n/--trials for the issue's full sizes):
  one shard  = one shard of --shard examples × 1 ε × 1 trial;
  mid        = --mid-n examples × 3 ε × 1 trial;
  sweep      = --mid-n examples × 3 ε × --trials trials.

Recorded: examples/s (example × ε × trial attacked per second), ratios to (A) per round (median, min–max), the
per-example differences in robust flag and adversarial prediction vs (A), the load average before and after each
run, the sgemm peak (GFLOP/s, or TFLOP/s on CUDA) and, for PGD, achieved GFLOP/s.

    .venv/bin/python benchmarks/engine_speed.py [--device cuda] [--out benchmarks/results/engine_speed.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

# (A) runs with 2 threads in this process under OpenMP's default wait policy (spin, then sleep), as a researcher's
# loop does. `--plain-omp PASSIVE` reproduces the earlier setting: on a busy machine the default spin-wait made 2
# threads 5-6x slower (attack_throughput.py's probe), but on an idle one PASSIVE made them ~2x slower (2026-12-02,
# AMD EPYC, PGD-20 on the width-16 ResNet: 0.84 s vs 1.6-2.0 s for 256 examples), which flattered the engine.
# Read when torch loads; an OMP_WAIT_POLICY already in the environment is kept.
_PLAIN_OMP = sys.argv[sys.argv.index("--plain-omp") + 1] if "--plain-omp" in sys.argv else "default"
if _PLAIN_OMP != "default":
    os.environ.setdefault("OMP_WAIT_POLICY", _PLAIN_OMP)
# Ray starts its workers at niceness 15 (raylet `worker_niceness`), a shell's process runs at 0: on a shared machine
# that alone would favour (A). Everything here runs at --nice instead (set before torch starts any thread; the
# private Ray inherits it and adds nothing). No effect on an idle machine.
_NICE = int(sys.argv[sys.argv.index("--nice") + 1]) if "--nice" in sys.argv else 15
os.nice(max(0, _NICE - os.getpriority(os.PRIO_PROCESS, 0)))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from attack_throughput import count_flops, save_checkpoint, spread, train  # noqa: E402

EPS = (0.05, 0.1, 0.15)


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--threads", type=int, default=2, help="CPU thread budget: (A)'s threads, (B)/(C)'s workers")
    ap.add_argument("--attacks", default="pgd20,autoattack,square")
    ap.add_argument("--sizes", default="one-shard,mid,sweep")
    ap.add_argument("--mid-n", type=int, default=None, help="examples of the mid and sweep jobs (cpu 256, cuda 1000)")
    ap.add_argument("--trials", type=int, default=3, help="trials of the sweep job")
    ap.add_argument("--shard", type=int, default=None, help="shard size (cpu 64, cuda 500)")
    ap.add_argument("--batch", type=int, default=None, help="attack batch (cpu 64, cuda 500)")
    ap.add_argument("--width", type=int, default=None, help="ResNet width (cpu 16, cuda 64)")
    ap.add_argument("--blocks", type=int, default=None, help="ResNet blocks (cpu 1, cuda 4)")
    ap.add_argument("--aa-iter", type=int, default=None, help="AutoAttack n_iter (cpu 10, cuda 100 = standard)")
    ap.add_argument("--aa-queries", type=int, default=None, help="AutoAttack Square queries (cpu 100, cuda 5000)")
    ap.add_argument("--square-queries", type=int, default=None, help="Square queries (cpu 300, cuda 5000)")
    ap.add_argument("--train-steps", type=int, default=150)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--engine-batch", type=int, default=None,
                    help="the engine's pass size (eval.batch_size) when it differs from the plain loop's --batch")
    ap.add_argument("--worker-threads", type=int, default=1,
                    help="torch threads per engine worker (a spec's resources.cpu); --threads // it workers")
    ap.add_argument("--plain-omp", choices=("default", "PASSIVE", "ACTIVE"), default="default",
                    help="OpenMP wait policy of this process, so of (A)'s 2 threads (default: OpenMP's own)")
    ap.add_argument("--nice", type=int, default=15, help="OS niceness of every arm (Ray's default for its workers)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "engine_speed.json"))
    ap.add_argument("--processes-arm", action="store_true",
                    help="add arm (D): the plain loop in one 1-thread process per core, no Ray (the engine's "
                         "layout without the engine), for jobs of at least --threads shards")
    ap.add_argument("--report", metavar="JSON", help="only print the table of a (possibly partial) results file")
    args = ap.parse_args(argv)
    gpu = args.device == "cuda"
    for k, cpu, cuda in (("mid_n", 256, 1000), ("shard", 64, 500), ("batch", 64, 500), ("width", 16, 64),
                         ("blocks", 1, 4), ("aa_iter", 10, 100), ("aa_queries", 100, 5000),
                         ("square_queries", 300, 5000)):
        if getattr(args, k) is None:
            setattr(args, k, cuda if gpu else cpu)
    return args


def attack_configs(args):
    from advsweep.evaluation.units import AttackConfig

    return {
        "pgd20": AttackConfig("pgd20", "pgd", EPS, {"steps": 20}),
        "autoattack": AttackConfig("autoattack", "autoattack", EPS,
                                   {"n_iter": args.aa_iter, "n_queries": args.aa_queries}),
        "square": AttackConfig("square", "square", EPS, {"n_queries": args.square_queries}),
    }


def matmul_peak(device: str, threads: int) -> float:
    """fp32 matmul GFLOP/s, best of a few (TF32 off on CUDA: the attacks run in fp32)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    size = 8192 if device == "cuda" else 2048
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    best = 0.0
    for _ in range(4):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = max(best, 2 * size ** 3 / (time.perf_counter() - t) / 1e9)
    torch.set_num_threads(old)
    return best


def vcpu_gflops(size: int = 384, reps: int = 5) -> list[float]:
    """fp32 GFLOP/s of a one-thread matmul pinned to each CPU of this process in turn (best of `reps`). On a VM the
    vCPUs' speeds can differ and drift (2026-12-02: the same 1-thread PGD loop pinned to one vCPU or the other ran at
    140-290 examples/s within minutes), which no load average shows; recorded before every run."""
    cpus, threads = sorted(os.sched_getaffinity(0)), torch.get_num_threads()
    a = torch.randn(size, size)
    out = []
    torch.set_num_threads(1)
    try:
        for c in cpus:
            os.sched_setaffinity(0, {c})
            best = float("inf")
            for _ in range(reps):
                t = time.perf_counter()
                a @ a
                best = min(best, time.perf_counter() - t)
            out.append(2 * size ** 3 / best / 1e9)
    finally:
        os.sched_setaffinity(0, cpus)
        torch.set_num_threads(threads)
    return out


def plain_loop(trials, attack, eps_list, x, y, index, shard, batch, base_seed, device, lo=0, n_total=None):
    """(A): one process, no Ray, no files, batches of `batch` over all examples, one ε after another: returns robust
    flags and adversarial predictions keyed like the engine's. Random starts follow the engine's convention (each
    example's draws from its unit's seed and its position in its shard: `Segment`s), so that rows can be compared.
    x, y, index may be the part of a job of `n_total` examples that starts at example `lo` (a multiple of `shard`):
    (D)'s processes each run one part, with the whole job's seeds."""
    from advsweep.attacks import ATTACKS, Segment, build_attack
    from advsweep.evaluation.checkpoints import load_model
    from advsweep.evaluation.units import make_units
    from advsweep.training.trainer import as_float_images

    dev = torch.device(device)
    xt, yt = as_float_images(torch.from_numpy(x)), torch.from_numpy(y).long()
    segmented = ATTACKS.get(attack.name).batches_eps
    out = {}
    for t in trials:
        model = load_model(t.checkpoint, dev)
        first = lo // shard
        seeds = {(u.eps[0], u.shard - first): u.seed(base_seed)
                 for u in make_units(t.trial_id, [attack], n_total or len(x), shard)}
        for eps in eps_list:
            if segmented:  # batches over all examples; a batch that spans shards has one segment per shard
                atk = build_attack(attack.name, model, eps, seeds[(eps, 0)], **attack.options)
                batches = [(i, min(i + batch, len(x)), None) for i in range(0, len(x), batch)]
            else:  # an attack without segments draws per call from its seed: batches within each shard
                batches = [(i, min(i + batch, hi), s) for s, lo in enumerate(range(0, len(x), shard))
                           for hi in [min(lo + shard, len(x))] for i in range(lo, hi, batch)]
            for i, end, s in batches:
                xb, yb = xt[i:end].to(dev), yt[i:end].to(dev)
                with torch.no_grad():
                    clean = model(xb).argmax(1)
                if segmented:
                    starts = [i, *range((i // shard + 1) * shard, end, shard)]
                    segments = [Segment(min((f // shard + 1) * shard, end) - f, eps, seeds[(eps, f // shard)],
                                        f % shard) for f in starts]
                    adv = atk(xb, yb, segments=segments).x_adv
                else:
                    adv = build_attack(attack.name, model, eps, seeds[(eps, s)], **attack.options)(xb, yb).x_adv
                with torch.no_grad():
                    pred = model(adv).argmax(1)
                clean, pred, yb = clean.cpu(), pred.cpu(), yb.cpu()  # one copy per batch, not a sync per example
                for j, k in enumerate(range(i, end)):
                    out[(t.trial_id, eps, int(index[k]))] = (bool(clean[j] == yb[j] and pred[j] == yb[j]),
                                                             int(pred[j]))
    return out


def plain_part_main():
    """A (D) process: reads its part of the job as one JSON line, loads what it needs, says "ready", waits for "go",
    runs the plain loop on one thread and prints its seconds and rows as one JSON line."""
    from advsweep.data import load_dataset, stratified_subset
    from advsweep.evaluation.engine import TrialRef
    from advsweep.evaluation.units import AttackConfig

    torch.set_num_threads(1)
    spec = json.loads(sys.stdin.readline())
    data = load_dataset("fashion-mnist")
    idx = stratified_subset(data.y_test, spec["mid_n"], 0)[:spec["n"]]
    lo, hi = spec["lo"], spec["hi"]
    a = spec["attack"]
    attack = AttackConfig(a["label"], a["name"], tuple(a["eps"]), a["options"])
    trials = [TrialRef(*t) for t in spec["trials"]]
    print("ready", flush=True)
    sys.stdin.readline()
    t = time.perf_counter()
    rows = plain_loop(trials, attack, attack.eps, data.x_test[idx[lo:hi]], data.y_test[idx[lo:hi]], idx[lo:hi],
                      spec["shard"], spec["batch"], 0, "cpu", lo=lo, n_total=spec["n"])
    print(json.dumps({"seconds": time.perf_counter() - t, "rows": [[*k, *v] for k, v in rows.items()]}), flush=True)


def plain_processes(trials, attack, n, args) -> tuple[float, dict]:
    """(D): the plain loop in one 1-thread process per core (--threads), no Ray, each on a shard-aligned part of the
    examples (the job has at least as many shards as processes); the processes start and load beforehand, so the
    wall (from "go" until the last one finishes) is steady state, like (C)'s. The layout the engine's workers have,
    without the engine: the machine's own gain from separate processes."""
    import subprocess

    shards = -(-n // args.shard)
    cuts = [args.shard * (shards * i // args.threads) for i in range(args.threads)] + [n]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, __file__, "--plain-part"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env) for _ in range(args.threads)]
    try:
        for p, lo, hi in zip(procs, cuts, cuts[1:]):
            spec = {"mid_n": args.mid_n, "n": n, "lo": lo, "hi": hi, "shard": args.shard, "batch": args.batch,
                    "attack": {"label": attack.label, "name": attack.name, "eps": list(attack.eps),
                               "options": attack.options},
                    "trials": [[t.trial_id, t.checkpoint, t.index] for t in trials]}
            p.stdin.write(json.dumps(spec) + "\n")
            p.stdin.flush()
        for p in procs:
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError("a (D) process failed to start")
        t = time.perf_counter()
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        parts = [json.loads(p.stdout.readline()) for p in procs]
        wall = time.perf_counter() - t
    finally:
        for p in procs:
            p.kill()
            p.wait()
    return wall, {(r[0], r[1], r[2]): (r[3], r[4]) for part in parts for r in part["rows"]}


def engine_rows(out_dir):
    from advsweep.storage.parquet import read_examples

    df = read_examples(out_dir, columns=["trial_id", "eps", "example_index", "robust", "adv_pred"]).to_pylist()
    return {(r["trial_id"], r["eps"], r["example_index"]): (r["robust"], r["adv_pred"]) for r in df}


def differences(ref, other):
    keys = set(ref) | set(other)
    return {"rows": len(other), "missing": len(keys - set(other)),
            "robust_differs": sum(ref.get(k, (None,))[0] != other.get(k, (None,))[0] for k in keys),
            "adv_pred_differs": sum(ref.get(k, (0, None))[1] != other.get(k, (0, None))[1] for k in keys)}


def main(args):
    import ray

    from advsweep.data import load_dataset, stratified_subset
    from advsweep.evaluation.engine import TrialRef, WorkerPool, evaluate

    t_start = time.perf_counter()
    gpu = args.device == "cuda"
    if gpu:  # (A) computes as the engine's workers do: fp32 (no TF32), deterministic cuDNN
        from advsweep.devices import worker_device

        worker_device(1, "the plain loop")
    torch.set_num_threads(args.threads)
    data = load_dataset("fashion-mnist")
    work = Path(tempfile.mkdtemp(prefix="advsweep-speed-"))
    ray.init(address="local", num_cpus=args.threads, num_gpus=1 if gpu else 0, include_dashboard=False,
             log_to_driver=False, _system_config={"worker_niceness": 0},
             runtime_env={"env_vars": {"PYTHONWARNINGS": "ignore::DeprecationWarning"}})
    opts = {"width": args.width, "blocks": args.blocks}
    trials = []
    for i in range(args.trials):
        log(f"training trial {i} ({args.train_steps} steps) ...")
        model, _ = train("resnet", opts, data, args.train_steps, 32, seed=i)
        trials.append(TrialRef(f"t{i}", save_checkpoint(model, "resnet", opts, data, work / f"ckpt{i}")))
    idx = stratified_subset(data.y_test, args.mid_n, 0)
    x_all, y_all = data.x_test[idx], data.y_test[idx]
    sizes = {"one-shard": (args.shard, EPS[:1], 1), "mid": (args.mid_n, EPS, 1),
             "sweep": (args.mid_n, EPS, args.trials)}
    # On one GPU the warm pool's worker and (B)'s fresh one each reserve half of it, so that both fit (one worker
    # each; (B) gets num_workers=1): a whole-GPU reservation by the idle warm worker would leave (B) waiting forever.
    engine_kw = ({"cpus_per_worker": 1, "gpus_per_worker": 0.5} if gpu else {"cpus_per_worker": args.worker_threads})
    from advsweep.training.trainer import as_float_images

    fl = count_flops(model.eval(), as_float_images(torch.from_numpy(x_all[:64])), torch.from_numpy(y_all[:64]).long())
    peaks = [matmul_peak(args.device, args.threads)]
    results = {"machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                           "device": torch.cuda.get_device_name(0) if gpu else "cpu", "threads": args.threads,
                           "niceness": os.getpriority(os.PRIO_PROCESS, 0), "loadavg_start": os.getloadavg(),
                           "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default")},
               "args": vars(args), "flops_per_example": fl, "jobs": {}}
    configs = attack_configs(args)
    workers = 1 if gpu else max(1, args.threads // args.worker_threads)
    t = time.perf_counter()
    # background=True, nice=0: the idle warm actors hold no CPU slot (so (B)'s one-unit job, which runs in process
    # on the node's free CPUs, sees the same free CPUs as without the pool) and run at the same niceness as the rest.
    pool = WorkerPool(work / "warm", "bench", background=True, nice=0, **engine_kw)
    ready = pool.take(workers)
    ray.get([a.__ray_ready__.remote() for a in ready])
    pool.give_back(ready)
    results["warm_pool_startup_s"] = time.perf_counter() - t
    log(f"warm pool of {workers} workers up in {results['warm_pool_startup_s']:.1f}s")
    try:
        for aname in args.attacks.split(","):
            base = configs[aname]
            for sname in args.sizes.split(","):
                n, eps, n_trials = sizes[sname]
                attack = type(base)(base.label, base.name, eps, base.options)
                x, y, index = x_all[:n], y_all[:n], idx[:n]
                job_trials = trials[:n_trials]
                work_items = n * len(eps) * n_trials
                arms = "ABCD" if args.processes_arm and -(-n // args.shard) >= args.threads and not gpu else "ABC"
                busiest, cpu_share = {k: [] for k in arms}, {k: [] for k in arms}
                times, loads, diffs, ref = {k: [] for k in arms}, {k: [] for k in arms}, {}, None
                vcpus = {k: [] for k in arms}
                order = [k for r in range(args.rounds) for k in (arms if r % 2 == 0 else arms[::-1])]
                for run_i, arm in enumerate(order):
                    out = work / f"{aname}-{sname}-{run_i}"
                    units: list[dict] = []

                    def note(unit, info, units=units):
                        units.append(info)
                    before = os.getloadavg()[0]
                    vcpus[arm].append(vcpu_gflops())
                    cpu = 0.0
                    if arm == "A":
                        t, c = time.perf_counter(), time.process_time()
                        rows = plain_loop(job_trials, attack, eps, x, y, index, args.shard, args.batch, 0, args.device)
                        wall, cpu = time.perf_counter() - t, time.process_time() - c
                    elif arm == "D":
                        wall, rows = plain_processes(job_trials, attack, n, args)
                    elif arm == "B":
                        t = time.perf_counter()
                        evaluate(out, "bench", job_trials, [attack], x, y, index, shard_size=args.shard,
                                 batch_size=args.engine_batch or args.batch, base_seed=0, progress=note,
                                 num_workers=1 if gpu else None, **engine_kw)
                        wall = time.perf_counter() - t
                        rows = engine_rows(out)
                    else:
                        out = Path(pool.out_dir)
                        t = time.perf_counter()
                        evaluate(out, "bench", job_trials, [attack], x, y, index, shard_size=args.shard,
                                 batch_size=args.engine_batch or args.batch, base_seed=0, num_workers=workers,
                                 pool=pool, progress=note)
                        wall = time.perf_counter() - t
                        rows = engine_rows(out)
                    shutil.rmtree(out, ignore_errors=True)
                    times[arm].append(wall)
                    per_worker: dict[int, float] = {}
                    for u in units:
                        per_worker[u["pid"]] = per_worker.get(u["pid"], 0.0) + u["seconds"]
                    # cores the computing processes had on average: CPU time of (A)'s process, or of the workers'
                    # run() calls, ÷ the job's wall time
                    cpu_share[arm].append((cpu if arm == "A" else sum(u["cpu_seconds"] for u in units)) / wall
                                          if arm != "D" else float("nan"))
                    # time inside the workers' run() (busiest worker) vs wall: the rest is the engine's own overhead
                    busiest[arm].append(max(per_worker.values()) if per_worker else wall)
                    loads[arm].append([before, os.getloadavg()[0]])
                    ref = rows if ref is None else ref  # the first run is (A): every run is compared with it
                    d = differences(ref, rows)
                    diffs[arm] = d if arm not in diffs else {k: max(diffs[arm][k], d[k]) for k in d}
                    log(f"[{aname} {sname}] ({arm}) {wall:.1f}s  {work_items / wall:.1f} examples/s "
                        f"(load {before:.1f})")
                peaks.append(matmul_peak(args.device, args.threads))
                job = {"examples": n, "eps": list(eps), "trials": n_trials, "work_items": work_items, "arms": {}}
                for arm, label in (("A", "plain loop"), ("B", "engine, fresh actors"), ("C", "engine, warm pool"),
                                   ("D", "plain loop, one 1-thread process per core")):
                    if arm not in arms:
                        continue
                    # ratios per ABBA pair: the i-th run of each arm
                    ratio = [a / b for a, b in zip(times["A"], times[arm])]
                    job["arms"][arm] = {"label": label, "seconds": spread(times[arm]),
                                        "examples_per_s": work_items / statistics.median(times[arm]),
                                        "speedup_vs_plain": spread(ratio), "loadavg_before_after": loads[arm],
                                        "vcpu_gflops_before": vcpus[arm],
                                        "busiest_worker_s": spread(busiest[arm]),
                                        "cores_used": spread(cpu_share[arm]),
                                        "vs_plain_first_run": diffs[arm]}
                    if aname == "pgd20":
                        gf = work_items * (20 * fl["step"] + 2 * fl["forward"]) / statistics.median(times[arm]) / 1e9
                        job["arms"][arm]["gflops"] = gf
                job["fixed_startup_b_minus_c_s"] = statistics.median(times["B"]) - statistics.median(times["C"])
                results["jobs"][f"{aname}/{sname}"] = job
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                Path(args.out).write_text(json.dumps({**results, "peak_gflops": max(peaks)}, indent=1, default=float))
    finally:
        pool.close()
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    results["peak_gflops"] = max(peaks)
    results["peak_samples_gflops"] = peaks
    results["machine"]["loadavg_end"] = os.getloadavg()
    results["total_seconds"] = time.perf_counter() - t_start
    Path(args.out).write_text(json.dumps(results, indent=1, default=float))
    print(markdown(results))
    log(f"wrote {args.out} ({results['total_seconds']:.0f} s)")


def markdown(results) -> str:
    a = results["args"]
    m = results["machine"]
    with_d = any("D" in j["arms"] for j in results["jobs"].values())
    lines = [f"{m['device']} ({m['threads']} threads, niceness {m.get('niceness', 0)}), ResNet width {a['width']} × "
             f"{a['blocks']} blocks, batch "
             f"{a['batch']}, shard {a['shard']}; warm pool start-up {results['warm_pool_startup_s']:.1f} s (once); "
             f"matmul peak {results['peak_gflops']:.0f} GFLOP/s; load average "
             f"{m['loadavg_start'][0]:.1f} at the start, {m['loadavg_end'][0]:.1f} at the end.", "",
             "| attack / job | work (ex × ε × trials) | plain loop ex/s | engine fresh: ex/s, vs plain "
             "| warm pool: ex/s, "
             "vs plain | rows ≠ plain (robust / adv pred) | load before (A/B/C) |"
             + (" 1-thread processes, no Ray (D): ex/s, vs plain; warm pool vs D |" if with_d else ""),
             "|---|---:|---:|---:|---:|---|---|" + ("---:|" if with_d else "")]
    for key, j in results["jobs"].items():
        A, B, C = (j["arms"][k] for k in "ABC")

        def r(s):
            return f"{s['median']:.2f}× ({s['min']:.2f}–{s['max']:.2f})"

        diff = "; ".join(f"{k}: {j['arms'][k]['vs_plain_first_run']['robust_differs']} / "
                         f"{j['arms'][k]['vs_plain_first_run']['adv_pred_differs']}" for k in "BCD"
                         if k in j["arms"] and j["arms"][k]["vs_plain_first_run"])
        D = j["arms"].get("D")
        d_cell = ""
        if with_d:
            d_cell = (f" {D['examples_per_s']:.1f}, {r(D['speedup_vs_plain'])}; "
                      f"{C['examples_per_s'] / D['examples_per_s']:.2f}× |" if D else " – |")
        load = "/".join(f"{statistics.median(x[0] for x in j['arms'][k]['loadavg_before_after']):.1f}" for k in "ABC")
        lines.append(f"| {key} | {j['work_items']} | {A['examples_per_s']:.1f} | {B['examples_per_s']:.1f}, "
                     f"{r(B['speedup_vs_plain'])} | {C['examples_per_s']:.1f}, "
                     f"{r(C['speedup_vs_plain'])} | {diff} | {load} |{d_cell}")
    probes = [g for j in results["jobs"].values() for arm in j["arms"].values()
              for run in arm.get("vcpu_gflops_before", []) for g in run]
    if probes:
        lines += ["", f"One-thread matmul on each vCPU before each run: {min(probes):.0f}–{max(probes):.0f} GFLOP/s "
                      f"(median {statistics.median(probes):.0f}): the machine's own speed varied this much."]
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:] == ["--plain-part"]:
        plain_part_main()
        sys.exit()
    _args = parse_args()
    if _args.report:
        _res = json.loads(Path(_args.report).read_text())
        _res["machine"].setdefault("loadavg_end", [float("nan")] * 3)  # a run stopped before its end
        print(markdown(_res))
    else:
        main(_args)
