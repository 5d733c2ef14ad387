"""The fast AutoAttack schedule (early stop per example, batched target classes, no repeated forwards) gives the same
per-example results as the straightforward cascade (every run on its whole batch for all iterations, one target
class after another, re-evaluated after every run and stage).

Float64 on a small MLP trained for a few seconds on real Fashion-MNIST, so that a batch-size change cannot move a
logit across a decision boundary. A second copy of the MLP has its logits scaled by 1,000: its cross-entropy
saturates (zero gradient), so APGD-CE breaks little and the later stages (APGD-T's speculative target batches, FAB-T's
batched targets) decide the flags.
"""
from __future__ import annotations

import copy

import pytest
import torch

from advsweep.attacks import ATTACKS, build_attack
from advsweep.attacks._util import GradLog
from advsweep.attacks.autoattack import AutoAttack, PlainAutoAttack, PlainAutoAttackL2, _Cascade

from test_attacks import _one_thread, train_mlp  # noqa: F401 (_one_thread: autouse fixture)


@pytest.fixture(scope="module")
def mlp():
    """(model, scaled model, x, y) in float64."""
    model, x, y = train_mlp(hidden=32, n_test=48, epochs=2)
    model = model.double().eval()
    scaled = copy.deepcopy(model)
    with torch.no_grad():
        scaled[3].weight.mul_(1000.0)
        scaled[3].bias.mul_(1000.0)
    return model, scaled, x.double(), y


def test_registered_names_are_the_fast_cascade():
    assert ATTACKS.get("autoattack") is AutoAttack and ATTACKS.get("autoattack_l2").norm == "l2"
    assert ATTACKS.validate("autoattack", {}, "a") == {"n_iter": 100, "n_queries": 5000}


@pytest.mark.parametrize("which,norm,eps", [("plain", "linf", 0.03), ("scaled", "linf", 0.03),
                                            ("scaled", "l2", 0.6)])
def test_fast_cascade_equals_straightforward_cascade(mlp, which, norm, eps):
    model, scaled, x, y = mlp
    m = model if which == "plain" else scaled
    name = "autoattack" if norm == "linf" else "autoattack_l2"
    fast = build_attack(name, m, eps, 3, n_iter=12, n_queries=60)(x, y)
    plain = (PlainAutoAttack if norm == "linf" else PlainAutoAttackL2)(m, eps, 3, n_iter=12, n_queries=60)(x, y)
    broken = fast.info["broken_by"]
    assert torch.equal(broken, plain.info["broken_by"])
    with torch.no_grad():
        assert torch.equal(m(fast.x_adv).argmax(1) != y, broken != -1)
    assert (broken >= 0).any() and (broken == -1).any()  # neither all broken nor all robust
    if which == "scaled":
        assert (broken >= 1).any()  # stages after APGD-CE decided some flags
    assert fast.steps.sum() < plain.steps.sum()  # the point of the schedule
    assert torch.equal(fast.info["grad_evals"] > 0, plain.info["grad_evals"] > 0)
    assert fast.info["settings"] == plain.info["settings"]


@pytest.mark.parametrize("stage,eps", [("apgd_t", 0.02), ("apgd_t", 0.04), ("fab_t", 0.02), ("fab_t", 0.05)])
def test_batched_target_stages_equal_one_target_at_a_time(mlp, stage, eps):
    """APGD-T and FAB-T alone on every correctly classified point of the saturated model, at ε where targets
    beyond the first break points (so speculative APGD-T batches are cut short and redone)."""
    _, m, x, y = mlp
    with torch.no_grad():
        clean = m(x)
    idx = (clean.argmax(1) == y).nonzero().flatten()
    ranks = clean.sort(dim=1)[1]
    out = {}
    for plain in (False, True):
        c = _Cascade(m, eps, "linf", 5, n_iter=12, n_queries=10, n_targets=9, plain=plain)
        fooled, adv = getattr(c, stage)(x, y, idx, ranks, GradLog(len(x)))
        out[plain] = fooled, adv, c
    assert torch.equal(out[False][0], out[True][0])
    fooled = out[False][0]
    assert 0 < int(fooled.sum()) < len(idx)
    with torch.no_grad():
        assert (m(out[False][1][fooled]).argmax(1) != y[idx][fooled]).all()
    assert ((out[False][1] - x[idx]).abs().flatten(1).amax(1) <= eps + 1e-12).all()
    if stage == "apgd_t":
        assert out[False][2].apgd_t_batches > 1  # a break under an early target ended a speculative batch
