"""Standard AutoAttack: advsweep's `autoattack` vs the reference implementation (fra31/auto-attack, MIT licence,
`version='standard'`) on the same checkpoints and examples, in one process, interleaved.

Two checkpoints are trained here on Fashion-MNIST (a small ConvNet, seconds): a naturally trained one and one
adversarially trained (FGSM with random start at ε, i.e. `pgd_at` with 1 step of 1.25 ε). Each round runs, per
model, ours then the reference, then the reference then ours (ABBA), on the same n test images at ε (ℓ∞,
n_iter 100, n_queries 5000 unless --quick; the reference gets one batch of all n, ours one call = one engine shard;
seed 0 for both). Per run: wall time, examples/s, and the per-example robust flag, judged for both by one forward of
the returned x_adv; the JSON records the flags that agree, the ratio per round (reference time / ours), and
os.getloadavg() before and after every run.

The reference is not a dependency: pass --reference DIR (a checkout with autoattack/ inside), or let the script
extract it from the local mirror of the repository (git show, no network).

    .venv/bin/python benchmarks/autoattack_reference.py            # standard settings (minutes)
    .venv/bin/python benchmarks/autoattack_reference.py --quick    # n_iter 10, 200 queries, fewer examples
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attack_throughput import spread  # noqa: E402

MIRROR = Path("/work/.mirror/fra31+auto-attack/repo")
OUT = Path(__file__).resolve().parent / "results"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="n_iter 10, n_queries 200")
    ap.add_argument("--n", type=int, default=None, help="examples per model (default 64)")
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--rounds", type=int, default=None, help="ABBA rounds (default 1; 1 with --quick)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: immune to a busy machine)")
    ap.add_argument("--train-steps", type=int, default=200)
    ap.add_argument("--models", default="natural,adversarial")
    ap.add_argument("--plain", action="store_true", help="also time advsweep's straightforward cascade")
    ap.add_argument("--reference", type=Path, default=None, help="checkout of fra31/auto-attack")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--engine", action="store_true",
                    help="whole machine: advsweep's engine (one 1-thread worker per core) vs the reference on all "
                         "cores, per shard with the engine's unit seeds")
    ap.add_argument("--shard", type=int, default=48, help="--engine: shard size (= the reference's batch)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="one process each, on this device (cuda: fp32 without TF32, as advsweep's workers)")
    a = ap.parse_args(argv)
    if a.engine and a.device != "cpu":
        ap.error("--device cuda: the one-process comparison only (--engine compares CPU cores)")
    a.n = a.n or (4 * a.shard if a.engine else 64)
    a.rounds = a.rounds or 1
    a.n_iter, a.n_queries = (10, 200) if a.quick else (100, 5000)
    name = ("autoattack_reference" + ("_engine" if a.engine else "") + ("_cuda" if a.device == "cuda" else "")
            + ("_quick" if a.quick else ""))
    a.out = a.out or OUT / f"{name}.json"
    return a


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


def reference_dir(given: Path | None) -> tuple[Path, str]:
    if given is not None:  # a checkout, or an export with the commit in COMMIT (benchmarks/device/bundle.sh)
        return given, (given / "COMMIT").read_text().strip() if (given / "COMMIT").exists() else "given"
    d = Path(tempfile.mkdtemp(prefix="aa-ref-"))
    git = ["git", "--git-dir", str(MIRROR)]
    files = subprocess.run(git + ["ls-tree", "-r", "--name-only", "HEAD", "autoattack/"], check=True,
                           capture_output=True, text=True).stdout.split()
    for f in files:
        if f.endswith(".py") and "/examples/" not in f:
            (d / f).parent.mkdir(parents=True, exist_ok=True)
            (d / f).write_bytes(subprocess.run(git + ["show", f"HEAD:{f}"], check=True, capture_output=True).stdout)
    commit = subprocess.run(git + ["rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    return d, commit


def train(kind: str, data, steps: int, eps: float, device: str = "cpu"):
    from advsweep.models import build_model
    from advsweep.training import build_recipe
    from advsweep.training.trainer import as_float_images

    torch.manual_seed(0)
    model = build_model("convnet", 1, 10, 28, channels=[16, 32]).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(0)
    recipe = build_recipe("pgd_at", eps=eps, step=1.25 * eps, steps=1) if kind == "adversarial" else None
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train).long()
    model.train()
    for _ in range(steps):
        i = torch.randint(0, len(x), (64,), generator=gen)
        xb, yb = as_float_images(x[i]).to(device), y[i].to(device)
        loss = recipe.loss(model, xb, yb)[0] if recipe else F.cross_entropy(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


def trained(kind: str, data, a, x, y):
    """The model of `kind` and the start of its record (training time, clean accuracy on x)."""
    t0 = time.perf_counter()
    model = train(kind, data, a.train_steps, a.eps, a.device)
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    rec = {"train_seconds": time.perf_counter() - t0, "clean_correct": int(clean.sum()), "runs": []}
    log(f"{kind}: trained in {rec['train_seconds']:.0f} s, clean {int(clean.sum())}/{a.n}")
    return model, rec


def robust_flags(model, x, y, x_adv) -> torch.Tensor:
    with torch.no_grad():
        return model(x_adv).argmax(1) == y


def run_ours(model, x, y, a, plain=False):
    from advsweep.attacks.autoattack import AutoAttack, PlainAutoAttack

    cls = PlainAutoAttack if plain else AutoAttack
    res = cls(model, a.eps, 0, n_iter=a.n_iter, n_queries=a.n_queries)(x, y)
    return res.x_adv, {"broken_by": res.info["broken_by"].tolist(), "forward_passes": int(res.steps.sum())}


def reference_attack(model, a, seed: int):
    """The reference's standard AutoAttack with --quick's budgets applied."""
    from autoattack import AutoAttack as RefAutoAttack

    aa = RefAutoAttack(model, norm="Linf", eps=a.eps, version="standard", seed=seed, device=a.device, verbose=False)
    aa.apgd.n_iter = aa.apgd_targeted.n_iter = aa.fab.n_iter = a.n_iter
    for atk in (aa.apgd, aa.apgd_targeted):  # the checkpoints derive from n_iter at construction
        atk.n_iter_2, atk.n_iter_min = max(int(0.22 * a.n_iter), 1), max(int(0.06 * a.n_iter), 1)
        atk.size_decr = max(int(0.03 * a.n_iter), 1)
    aa.square.n_queries = a.n_queries
    return aa


def run_reference(model, x, y, a):
    return reference_attack(model, a, 0).run_standard_evaluation(x, y, bs=len(x)), {}


def main(a):
    torch.set_num_threads(a.threads)
    if a.device == "cuda":
        from advsweep.devices import worker_device

        worker_device(1, "the benchmark")
    ref, ref_commit = reference_dir(a.reference)
    sys.path.insert(0, str(ref))
    from advsweep.data import load_dataset, stratified_subset
    from advsweep.training.trainer import as_float_images

    data = load_dataset("fashion-mnist")
    idx = stratified_subset(data.y_test, a.n, 0)
    x, y = as_float_images(torch.from_numpy(data.x_test[idx])), torch.from_numpy(data.y_test[idx]).long()
    x, y = x.to(a.device), y.to(a.device)
    result = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
              "reference": {"repo": "fra31/auto-attack", "commit": ref_commit, "licence": "MIT"},
              "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
              "device": torch.cuda.get_device_name() if a.device == "cuda" else "cpu",
              "load_start": os.getloadavg(), "models": {}}
    arms = {"ours": lambda m: run_ours(m, x, y, a), "reference": lambda m: run_reference(m, x, y, a)}
    if a.plain:
        arms["plain"] = lambda m: run_ours(m, x, y, a, plain=True)
    for kind in a.models.split(","):
        model, rec = trained(kind, data, a, x, y)
        flags = {}
        for r in range(a.rounds):
            order = list(arms) if r % 2 == 0 else list(reversed(arms))
            for arm in order + list(reversed(order)):
                load0 = os.getloadavg()
                t, c = time.perf_counter(), time.process_time()
                x_adv, extra = arms[arm](model)
                if a.device == "cuda":
                    torch.cuda.synchronize()
                sec, cpu = time.perf_counter() - t, time.process_time() - c
                f = robust_flags(model, x, y, x_adv)
                flags.setdefault(arm, f)
                rec["runs"].append({"round": r, "arm": arm, "seconds": sec, "cpu_seconds": cpu,
                                    "examples_per_s": a.n / sec,
                                    "robust": int(f.sum()), "same_flags_as_first_run": bool(torch.equal(f, flags[arm])),
                                    "load_before": load0, "load_after": os.getloadavg(), **extra})
                log(f"{kind} round {r} {arm}: {sec:.1f} s, robust {int(f.sum())}/{a.n}, load {load0[0]:.1f}")
        secs = {arm: [u["seconds"] for u in rec["runs"] if u["arm"] == arm] for arm in arms}
        ratios = [sr / so for sr, so in zip(secs["reference"], secs["ours"])]
        cpus = {arm: [u["cpu_seconds"] for u in rec["runs"] if u["arm"] == arm] for arm in arms}
        cpu_ratios = [sr / so for sr, so in zip(cpus["reference"], cpus["ours"])]
        rec["summary"] = {
            "examples_per_s": {arm: statistics.median([a.n / s for s in v]) for arm, v in secs.items()},
            "ratio_reference_time_over_ours": spread(ratios),
            # process CPU time (1 thread): less sensitive than wall time to other processes on a busy machine
            "cpu_ratio_reference_over_ours": spread(cpu_ratios),
            "flags_agree": int((flags["ours"] == flags["reference"]).sum()), "examples": a.n,
            "robust": {arm: int(f.sum()) for arm, f in flags.items()},
        }
        if a.plain:
            rec["summary"]["flags_agree_plain"] = int((flags["plain"] == flags["reference"]).sum())
        log(kind, json.dumps(rec["summary"]))
        result["models"][kind] = rec
        result["load_end"] = os.getloadavg()
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(result, indent=1))  # after each model: a run cut short keeps what it measured
    log(f"wrote {a.out}")


def main_engine(a):
    """--engine: the machine's cores for both. The reference runs in this process on all cores (torch threads = CPU
    count), one `run_standard_evaluation` per shard of --shard examples with that shard's engine seed (bs = shard),
    which is exactly the work and the draws of the engine's AutoAttack unit for that shard. advsweep runs the same
    shards through `evaluate` on a warm `WorkerPool` (one 1-thread actor per core, started once; its start-up is
    reported apart): the steady state of a sweep's evaluation stage. Per example, the robust flag of each arm (the
    engine's Parquet rows; the reference's clean and adversarial predictions) must agree."""
    import shutil

    import ray

    from advsweep.data import load_dataset, stratified_subset
    from advsweep.evaluation.engine import TrialRef, WorkerPool, evaluate
    from advsweep.evaluation.units import AttackConfig, make_units
    from advsweep.storage.parquet import read_examples
    from advsweep.training.trainer import as_float_images
    from attack_throughput import save_checkpoint

    cores = os.cpu_count()
    ref, ref_commit = reference_dir(a.reference)
    sys.path.insert(0, str(ref))

    data = load_dataset("fashion-mnist")
    idx = stratified_subset(data.y_test, a.n, 0)
    x_np, y_np = data.x_test[idx], data.y_test[idx]
    x, y = as_float_images(torch.from_numpy(x_np)), torch.from_numpy(y_np).long()
    attack = AttackConfig("aa", "autoattack", (a.eps,), {"n_iter": a.n_iter, "n_queries": a.n_queries})
    work = Path(tempfile.mkdtemp(prefix="aa-engine-"))
    ray.init(address="local", num_cpus=cores, include_dashboard=False, log_to_driver=False,
             _system_config={"worker_niceness": 0},
             runtime_env={"env_vars": {"PYTHONWARNINGS": "ignore::DeprecationWarning"}})
    result = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
              "reference": {"repo": "fra31/auto-attack", "commit": ref_commit, "licence": "MIT"},
              "torch": torch.__version__, "cpu_count": cores, "reference_threads": cores, "engine_workers": cores,
              "load_start": os.getloadavg(), "models": {}}
    t = time.perf_counter()
    pool = WorkerPool(work / "pool", "bench", cpus_per_worker=1)
    ready = pool.take(cores)
    ray.get([w.__ray_ready__.remote() for w in ready])
    pool.give_back(ready)
    result["pool_startup_s"] = time.perf_counter() - t
    log(f"warm pool of {cores} workers up in {result['pool_startup_s']:.1f} s")

    def run_reference(model, trial_id):
        torch.set_num_threads(cores)
        flags = torch.zeros(a.n, dtype=torch.bool)
        for u in make_units(trial_id, [attack], a.n, a.shard):
            lo, hi = u.shard * a.shard, min((u.shard + 1) * a.shard, a.n)
            adv = reference_attack(model, a, u.seed(0)).run_standard_evaluation(x[lo:hi], y[lo:hi], bs=hi - lo)
            with torch.no_grad():
                flags[lo:hi] = (model(x[lo:hi]).argmax(1) == y[lo:hi]) & (model(adv).argmax(1) == y[lo:hi])
        torch.set_num_threads(1)
        return flags

    def run_engine(trial):
        evaluate(pool.out_dir, "bench", [trial], [attack], x_np, y_np, idx, shard_size=a.shard, batch_size=a.shard,
                 base_seed=0, num_workers=cores, pool=pool, in_process=False, head_start=False)
        rows = [r for r in read_examples(pool.out_dir, columns=["trial_id", "example_index", "robust"]).to_pylist()
                if r["trial_id"] == trial.trial_id]
        pos = {int(e): i for i, e in enumerate(idx)}
        flags = torch.zeros(a.n, dtype=torch.bool)
        for r in rows:
            flags[pos[r["example_index"]]] = bool(r["robust"])
        shutil.rmtree(pool.out_dir, ignore_errors=True)
        return flags, len(rows)

    try:
        for kind in a.models.split(","):
            torch.set_num_threads(1)
            model, rec = trained(kind, data, a, x, y)
            trial = TrialRef(kind, save_checkpoint(model, "convnet", {"channels": [16, 32]}, data, work / kind))
            flags = {}
            for r in range(a.rounds):
                order = ["engine", "reference"] if r % 2 == 0 else ["reference", "engine"]
                for arm in order + order[::-1]:
                    load0 = os.getloadavg()
                    t = time.perf_counter()
                    if arm == "engine":
                        f, n_rows = run_engine(trial)
                    else:
                        f, n_rows = run_reference(model, kind), a.n
                    sec = time.perf_counter() - t
                    flags.setdefault(arm, f)
                    rec["runs"].append({"round": r, "arm": arm, "seconds": sec, "examples_per_s": a.n / sec,
                                        "rows": n_rows, "robust": int(f.sum()),
                                        "same_flags_as_first_run": bool(torch.equal(f, flags[arm])),
                                        "load_before": load0, "load_after": os.getloadavg()})
                    log(f"{kind} round {r} {arm}: {sec:.1f} s, robust {int(f.sum())}/{a.n}, load {load0[0]:.1f}")
            secs = {arm: [u["seconds"] for u in rec["runs"] if u["arm"] == arm] for arm in flags}
            ratios = [sr / so for sr, so in zip(secs["reference"], secs["engine"])]
            rec["summary"] = {
                "examples_per_s": {arm: statistics.median([a.n / s for s in v]) for arm, v in secs.items()},
                "ratio_reference_time_over_engine": spread(ratios),
                "flags_agree": int((flags["engine"] == flags["reference"]).sum()), "examples": a.n,
                "robust": {arm: int(f.sum()) for arm, f in flags.items()},
            }
            log(kind, json.dumps(rec["summary"]))
            result["models"][kind] = rec
            a.out.parent.mkdir(parents=True, exist_ok=True)
            a.out.write_text(json.dumps(result, indent=1))
    finally:
        pool.close()
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    result["load_end"] = os.getloadavg()
    a.out.write_text(json.dumps(result, indent=1))
    log(f"wrote {a.out}")


if __name__ == "__main__":
    args = parse_args()
    if args.engine:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        main_engine(args)
    else:
        main(args)
