"""ε-batched passes (advsweep.attacks "ε-batched passes"): FGSM, PGD-ℓ∞ and PGD-ℓ2 run the shards of several ε in
one pass of segments, and each ε's result is the same however the passes are cut: alone, packed with other ε, or
split at other points. Float64 copies of a trained MLP, so that no sign of a gradient is decided by rounding that
depends on the batch size."""
from __future__ import annotations

import copy

import pytest
import torch

from advsweep.attacks import Segment, build_attack

from test_attacks import train_mlp

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
    for e in range(3):
        assert torch.equal(packed[e], alone[e])
        assert torch.equal(torch.cat([cut[e], cut2[e]]), alone[e])
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
