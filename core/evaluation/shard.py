"""Run one unit of attack work on a model already in eval mode and return its examples-table rows, one table per ε."""
from __future__ import annotations

import copy
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import torch

from advsweep.attacks import ATTACKS, Segment, build_attack
from advsweep.attacks._util import bview, margin
from advsweep.evaluation.units import Unit
from advsweep.models.ode import batch_coupled
from advsweep.storage.parquet import examples_table


@torch.no_grad()
def predict_logits(model: torch.nn.Module, x: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    out = [model(x[i:i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.empty(0, 0)


def predict(model: torch.nn.Module, x: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    logits = predict_logits(model, x, batch_size, device)
    return logits.argmax(1) if len(logits) else torch.empty(0, dtype=torch.long)


def eps_batched(unit: Unit) -> bool:
    """Whether the unit runs through ε-batched passes (see advsweep.attacks): its attack takes segments and the unit
    is one ε > 0."""
    return ATTACKS.get(unit.attack.name).batches_eps and not unit.derived and unit.eps[0] > 0


def run_units(model: torch.nn.Module, units: tuple[Unit, ...], x: torch.Tensor, y: torch.Tensor, index: np.ndarray,
              clean_logits: torch.Tensor, sweep_id: str, base_seed: int, batch_size: int, device: torch.device,
              source_model: torch.nn.Module | None = None, pass_threads: int = 1) -> list[tuple[Unit, float, pa.Table]]:
    """Run units of one attack on one shard: several ε-batched units (one per ε) share passes of `batch_size`
    examples laid out ε after ε; any other unit runs alone. A batch-coupled model (adaptive ODE solver) runs its units
    one after another in passes of their own, since sharing a pass would change its steps and so its rows.
    `pass_threads` > 1 (CPU): ε-batched passes run that many at a time (see `pass_bounds`).
    Returns (unit, ε, examples table) per ε."""
    if len(units) > 1 and not batch_coupled(model):
        return _run_eps_batched(model, units, x, y, index, clean_logits, sweep_id, base_seed, batch_size, device,
                                pass_threads)
    return [(u, eps, t) for u in units for eps, t in run_unit(model, u, x, y, index, clean_logits, sweep_id,
                                                              base_seed, batch_size, device, source_model,
                                                              pass_threads)]


def pass_threads_for(model: torch.nn.Module, units: tuple[Unit, ...], pass_threads: int, device: torch.device) -> int:
    """The Python threads a job's passes run on: `pass_threads` for ε-batched units on a CPU with a model that is not
    batch-coupled (whose rows would depend on how passes are cut), else 1 (the job runs on the worker's torch
    threads)."""
    if device.type != "cpu" or not all(eps_batched(u) for u in units) or batch_coupled(model):
        return 1
    return max(1, pass_threads)


def pass_bounds(total: int, batch_size: int, threads: int = 1) -> list[tuple[int, int]]:
    """How `total` pass positions are cut into passes of at most `batch_size`. With one thread: full passes and a
    last short one. With several (passes run side by side, one torch thread each): as many passes as that needs,
    rounded up to a multiple of `threads`, of near-equal size, so that no thread idles at the end; a lone shard is
    then split between the threads instead of running on one core."""
    if threads <= 1:
        return [(lo, min(lo + batch_size, total)) for lo in range(0, total, batch_size)]
    count = -(-total // batch_size)
    count = min(total, -(-count // threads) * threads)
    edges = [total * i // count for i in range(count + 1)]
    return list(zip(edges[:-1], edges[1:]))


def _run_eps_batched(model, units, x, y, index, clean_logits, sweep_id, base_seed, batch_size, device,
                     pass_threads=1):
    """Unit u covers pass positions [u·n, (u+1)·n); a pass holds at most `batch_size` consecutive positions, one
    segment per unit it touches. The segments' random streams depend on the unit's seed and the example's position in
    the shard only, so a unit's rows do not depend on which units shared its passes, nor on how the passes are cut.

    `pass_threads` > 1 on a CPU (not for a batch-coupled model, whose rows depend on the cut): the passes run on that
    many Python threads, each with one torch thread and its own copy of the model (an ODE block counts its function
    evaluations in attributes). Measured on a 2-core machine, PGD-20 on 64 examples of a width-16 ResNet: two
    1-thread passes of 32 side by side ran 1.12x (median of 10 alternating rounds) the speed of one pass of 64 on two
    torch threads, 1.6x one pass on one thread. The ops release the GIL; attacks made of many small ops (Square)
    would contend for it, which is why only ε-batched (gradient) passes are split this way."""
    if not all(eps_batched(u) and (u.trial_id, u.attack, u.shard) == (units[0].trial_id, units[0].attack,
                                                                       units[0].shard) for u in units):
        raise ValueError(f"not one attack's ε-batched units on one shard: {units}")
    n, k = len(x), len(units)
    seeds = [u.seed(base_seed) for u in units]
    eps_max = max(u.eps[0] for u in units)
    pass_threads = pass_threads_for(model, units, pass_threads, device)
    start = time.perf_counter()
    adv = torch.empty((k * n, *x.shape[1:]), dtype=x.dtype)
    steps = torch.zeros(k * n, dtype=torch.int32)
    grad = torch.full((k * n,), math.nan)

    def run_pass(attack, lo, hi):
        pieces = [(u, max(lo, u * n) - u * n, min(hi, (u + 1) * n) - u * n) for u in range(lo // n, (hi - 1) // n + 1)]
        xb = torch.cat([x[a:b] for _, a, b in pieces]).to(device)
        yb = torch.cat([y[a:b] for _, a, b in pieces]).to(device)
        res = attack(xb, yb, segments=[Segment(b - a, units[u].eps[0], seeds[u], a) for u, a, b in pieces])
        adv[lo:hi] = res.x_adv.cpu()
        steps[lo:hi] = res.steps.cpu()
        grad[lo:hi] = res.grad_norm.cpu().float()

    bounds = pass_bounds(k * n, batch_size, pass_threads)
    if pass_threads <= 1:
        attack = build_attack(units[0].attack.name, model, eps_max, seeds[0], **units[0].attack.options)
        for lo, hi in bounds:
            run_pass(attack, lo, hi)
    else:
        local = threading.local()

        def setup():
            torch.set_num_threads(1)
            local.attack = build_attack(units[0].attack.name, copy.deepcopy(model), eps_max, seeds[0],
                                        **units[0].attack.options)

        threads = torch.get_num_threads()
        # Each attack call seeds torch's global RNG inside fork_rng; calls on several threads would leave it in
        # another state than they found it. Segments draw from their own generators, so only the restore matters.
        with torch.random.fork_rng(devices=[]):
            try:
                with ThreadPoolExecutor(pass_threads, initializer=setup) as pool:
                    for f in [pool.submit(lambda b: run_pass(local.attack, *b), b) for b in bounds]:
                        f.result()
            finally:
                torch.set_num_threads(threads)  # the threads changed torch's process-wide default
    attack_wall = (time.perf_counter() - start) / k
    out = []
    for u, (unit, seed) in enumerate(zip(units, seeds)):
        t0 = time.perf_counter()
        x_adv = adv[u * n:(u + 1) * n]
        adv_logits = predict_logits(model, x_adv, batch_size, device)
        common = {"steps": steps[u * n:(u + 1) * n].numpy(), "grad_norm": grad[u * n:(u + 1) * n],
                  "distance": torch.full((n,), math.nan), "seed": seed,
                  "wall": attack_wall + time.perf_counter() - t0}
        eps = unit.eps[0]
        out.append((unit, eps, _table(unit, eps, x, y, index, clean_logits, x_adv, adv_logits, sweep_id, common)))
    return out


def run_unit(model: torch.nn.Module, unit: Unit, x: torch.Tensor, y: torch.Tensor, index: np.ndarray,
             clean_logits: torch.Tensor, sweep_id: str, base_seed: int, batch_size: int,
             device: torch.device, source_model: torch.nn.Module | None = None,
             pass_threads: int = 1) -> list[tuple[float, pa.Table]]:
    """x: float [0,1] CPU tensor of the shard; index: dataset indices of its rows; clean_logits: model(x) in the
    engine's batch size. Returns one examples table per ε of the unit.

    The robust flag and the `margin` column are decided on the returned points, re-evaluated here in the engine's
    batch size, never on what the attack saw while crafting. A derived unit (see units.py) runs the attack once at
    the largest ε and keeps, per ε, the adversarial only where its distance ≤ ε (any distance for a
    minimal-distortion attack at ε = 0). An ε-batched unit runs through segments (its random starts then depend on
    its seed and each example's position in the shard, not on the batch size)."""
    if eps_batched(unit):
        return [(eps, t) for _, eps, t in _run_eps_batched(model, (unit,), x, y, index, clean_logits, sweep_id,
                                                             base_seed, batch_size, device, pass_threads)]
    seed = unit.seed(base_seed)
    options = dict(unit.attack.options)
    if source_model is not None:
        options["source_model"] = source_model
    attack = build_attack(unit.attack.name, model, max(unit.eps), seed, **options)
    start = time.perf_counter()
    adv, steps, grad, dist = [], [], [], []
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
        res = attack(xb, yb)
        adv.append(res.x_adv.cpu())
        n = len(xb)
        steps.append(res.steps.cpu() if res.steps is not None else torch.zeros(n, dtype=torch.int32))
        grad.append(res.grad_norm.cpu().float() if res.grad_norm is not None else torch.full((n,), math.nan))
        d = getattr(res, "distance", None)
        dist.append(d.cpu().float() if d is not None else torch.full((n,), math.nan))
    x_adv = torch.cat(adv)
    adv_logits = predict_logits(model, x_adv, batch_size, device)
    wall = time.perf_counter() - start
    dist_t = torch.cat(dist)
    common = {
        "steps": torch.cat(steps).numpy().astype(np.int32), "grad_norm": torch.cat(grad),
        "distance": dist_t, "seed": seed, "wall": wall / len(unit.eps),  # a derived unit's time split over its ε
    }
    out = []
    for eps in unit.eps:
        if unit.derived and not (unit.attack.norm == "none" and eps == 0):
            within = dist_t <= eps  # NaN/inf (none found) compare False
            x_e = torch.where(bview(within, x_adv), x_adv, x)
            logits_e = torch.where(within[:, None], adv_logits, clean_logits)
        else:
            x_e, logits_e = x_adv, adv_logits
        out.append((eps, _table(unit, eps, x, y, index, clean_logits, x_e, logits_e, sweep_id, common)))
    return out


def _table(unit, eps, x, y, index, clean_logits, x_adv, adv_logits, sweep_id, common) -> pa.Table:
    n = len(x)
    clean_pred, adv_pred = clean_logits.argmax(1), adv_logits.argmax(1)
    delta = (x_adv - x).flatten(1)
    l2 = delta.norm(dim=1)
    rows = {
        "sweep_id": [sweep_id] * n,
        "attack_name": [unit.attack.name] * n,
        "attack_params": [unit.attack.params_json()] * n,
        "norm": [unit.attack.norm] * n,
        "shard": np.full(n, unit.shard, dtype=np.int32),
        "example_index": index.astype(np.int64),
        "label": y.numpy().astype(np.int32),
        "clean_pred": clean_pred.numpy().astype(np.int32),
        "adv_pred": adv_pred.numpy().astype(np.int32),
        "robust": ((clean_pred == y) & (adv_pred == y)).numpy(),
        "margin": margin(adv_logits, y).numpy().astype(np.float32),
        "linf": delta.abs().amax(dim=1).numpy().astype(np.float32),
        "l2": l2.numpy().astype(np.float32),
        "rms": (l2 / math.sqrt(delta.shape[1])).numpy().astype(np.float32),
        "distance": pa.array(common["distance"].numpy(), type=pa.float32(), from_pandas=True),
        "steps": common["steps"],
        "grad_norm": pa.array(common["grad_norm"].numpy(), type=pa.float32(), from_pandas=True),
        "seed": np.full(n, common["seed"], dtype=np.int64),
        "wall_time_s": np.full(n, common["wall"], dtype=np.float64),
    }
    return examples_table(rows)
