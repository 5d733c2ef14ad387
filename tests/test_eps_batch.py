"""ε-batched passes (advsweep.attacks "ε-batched passes"): FGSM, PGD-ℓ∞ and PGD-ℓ2 run the shards of several ε in
one pass of segments, and each ε's result is the same however the passes are cut: alone, packed with other ε, or
split at other points (PGD-ℓ2: up to the last bits of the CPU's matmul for another batch size). Float64 copies of a
trained MLP, so that no sign of a gradient is decided by rounding that depends on the batch size."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from advsweep.attacks import Segment, build_attack

from test_attacks import _fmnist, train_mlp

EPS = {"fgsm": (0.05, 0.1, 0.2), "pgd": (0.05, 0.1, 0.2), "pgd_l2": (0.5, 1.0, 2.0)}
OPTIONS = {"fgsm": {}, "pgd": {"steps": 5, "restarts": 2}, "pgd_l2": {"steps": 5, "restarts": 2}}
SEEDS = (11, 12, 13)  # one per ε, as the engine's units have


@pytest.fixture(scope="module")
def mlp64():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model, x, y = train_mlp(hidden=32, n_test=24, epochs=1)
    yield copy.deepcopy(model).double(), x.double(), y
    torch.set_num_threads(threads)


def _run(model, name, x, y, pieces):
    """pieces: [(ε index, lo, hi)] in pass order → {ε index: x_adv rows lo..hi stitched over the pieces}."""
    attack = build_attack(name, model, max(EPS[name]), 0, **OPTIONS[name])
    xs = torch.cat([x[lo:hi] for _, lo, hi in pieces])
    ys = torch.cat([y[lo:hi] for _, lo, hi in pieces])
    segments = [Segment(hi - lo, EPS[name][e], SEEDS[e], lo) for e, lo, hi in pieces]
    res = attack(xs, ys, segments=segments)
    out, start = {}, 0
    for (e, lo, hi) in pieces:
        out.setdefault(e, []).append(res.x_adv[start:start + hi - lo])
        start += hi - lo
    return {e: torch.cat(v) for e, v in out.items()}, res


@pytest.mark.parametrize("name", ["fgsm", "pgd", "pgd_l2"])
def test_each_eps_is_the_same_alone_packed_or_cut_elsewhere(mlp64, name):
    model, x, y = mlp64
    n = len(x)
    alone = {e: _run(model, name, x, y, [(e, 0, n)])[0][e] for e in range(3)}
    packed, res = _run(model, name, x, y, [(e, 0, n) for e in range(3)])  # all ε in one pass
    cut, _ = _run(model, name, x, y, [(0, 0, 10), (1, 0, 10), (2, 0, 10)])
    cut2, _ = _run(model, name, x, y, [(0, 10, n), (1, 10, n), (2, 10, n)])
    # Sign steps (FGSM, PGD-ℓ∞) are bit-identical. An ℓ2 step keeps the gradient's last bits, and a CPU's GEMM may
    # round one row differently for another batch size (MKL on an AVX-512 EPYC: 10 vs 72 rows differ by 1 ulp).
    atol = 1e-12 if name == "pgd_l2" else 0.0
    for e in range(3):
        torch.testing.assert_close(packed[e], alone[e], rtol=0, atol=atol)
        torch.testing.assert_close(torch.cat([cut[e], cut2[e]]), alone[e], rtol=0, atol=atol)
    # Each ε's examples stay in their own ball, and the largest ε fools some of them.
    norm = "l2" if name == "pgd_l2" else "linf"
    for e in range(3):
        d = (alone[e] - x).flatten(1)
        size = d.norm(dim=1) if norm == "l2" else d.abs().amax(1)
        assert (size <= EPS[name][e] + 1e-9).all()
    with torch.no_grad():
        fooled = [(model(alone[e]).argmax(1) != y).sum().item() for e in range(3)]
    assert fooled[2] > 0 and res.steps.shape == (3 * n,)


def test_random_starts_follow_the_seed_and_position_not_the_pass(mlp64):
    model, x, y = mlp64
    n = len(x)
    base, _ = _run(model, "pgd", x, y, [(1, 0, n)])
    attack = build_attack("pgd", model, 0.1, 0, steps=5, restarts=2)
    other_seed = attack(x, y, segments=[Segment(n, 0.1, 99, 0)]).x_adv
    shifted = attack(x, y, segments=[Segment(n, 0.1, SEEDS[1], 1)]).x_adv  # positions 1..n: other draws
    assert not torch.equal(base[1], other_seed) and not torch.equal(base[1], shifted)


def test_a_pass_cannot_mix_eps_zero_and_only_batching_attacks_take_segments(mlp64):
    model, x, y = mlp64
    attack = build_attack("pgd", model, 0.1, 0, steps=2)
    with pytest.raises(ValueError, match="ε = 0"):
        attack(x[:4], y[:4], segments=[Segment(2, 0.0, 1), Segment(2, 0.1, 2)])
    zero = attack(x[:4], y[:4], segments=[Segment(4, 0.0, 1)])
    assert torch.equal(zero.x_adv, x[:4])
    with pytest.raises(ValueError, match="cover 3"):
        attack(x[:4], y[:4], segments=[Segment(3, 0.1, 1)])
    with pytest.raises(TypeError, match="ε-batched"):
        build_attack("difgsm", model, 0.1, 0)(x[:4], y[:4], segments=[Segment(4, 0.1, 1)])


@pytest.mark.parametrize("solver, coupled", [("dopri5", True), ("rk4", False)])
def test_adaptive_solver_units_run_alone_inside_a_shared_job(solver, coupled):
    """An adaptive solver takes each step size from the whole batch's error, so packing ε into one pass would change
    a dopri5 model's rows: its units run in passes of their own and write what they write as jobs of their own."""
    from advsweep.evaluation.shard import predict_logits, run_unit, run_units
    from advsweep.evaluation.units import AttackConfig, make_units
    from advsweep.models import build_model
    from advsweep.models.ode import batch_coupled

    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        opts = {"step_size": 0.5} if solver == "rk4" else {}
        model = build_model("odenet", 1, 10, 28, width=8, solver=solver, **opts).eval()
        assert batch_coupled(model) == coupled
        x, y = _fmnist("test", 16)  # an untrained model: its steps still depend on the whole batch
        index = np.arange(16)
        units = tuple(make_units("t", [AttackConfig("pgd", "pgd", (0.05, 0.1), {"steps": 3})], 16, 16, 0))
        args = (x, y, index, predict_logits(model, x, 32, torch.device("cpu")), "s", 5, 32, torch.device("cpu"))
        shared = {u: t for u, _, t in run_units(model, units, *args)}
        alone = {u: t for u in units for _, t in run_unit(model, u, *args)}
        same = [shared[u].drop(["wall_time_s"]).equals(alone[u].drop(["wall_time_s"])) for u in units]
        assert all(same), same
    finally:
        torch.set_num_threads(threads)
