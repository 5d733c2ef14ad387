"""Attack suite (core/attacks): threat-model invariants, determinism, agreement with torchattacks, AutoAttack
settings, decision-based and minimal-distortion attacks, adaptive attacks and the adjoint-gradient diagnostic.

Models are tiny and trained inside the tests (an MLP on the first 6,000 Fashion-MNIST training images, a few
seconds; synthetic data if the dataset is absent) or analytic (a linear classifier whose exact minimal ℓ2 distance
to the decision boundary is known).
"""
from __future__ import annotations

import copy
import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
import torchattacks
from torch import nn

from advsweep.attacks import ATTACKS, build_attack, clean_input_grad_norm
from advsweep.attacks._util import margin
from advsweep.attacks.adaptive import ode_blocks, with_solver
from advsweep.attacks.diagnostics import gradient_agreement
from advsweep.models import build_model
from advsweep.registry import SpecError

FMNIST = Path("/usr/share/datasets/fashion-mnist")


def _fmnist(split: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    prefix = "train" if split == "train" else "t10k"
    with gzip.open(FMNIST / f"{prefix}-images-idx3-ubyte.gz") as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)[:n]
    with gzip.open(FMNIST / f"{prefix}-labels-idx1-ubyte.gz") as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8)[:n]
    return torch.tensor(x, dtype=torch.float32) / 255, torch.tensor(y, dtype=torch.long)


def _synthetic(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    protos = torch.rand(10, 1, 28, 28, generator=g)
    g.manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    return (protos[y] + 0.3 * torch.randn(n, 1, 28, 28, generator=g)).clamp(0, 1), y


def train_test(n_train: int, n_test: int):
    """((x_train, y_train), (x_test, y_test)): the first Fashion-MNIST images, or synthetic ones where it is absent."""
    if FMNIST.exists():
        return _fmnist("train", n_train), _fmnist("test", n_test)
    return _synthetic(n_train, 0), _synthetic(n_test, 1)  # pragma: no cover


def train_mlp(hidden: int, n_test: int, epochs: int):
    """(model in eval mode, x, y): a one-hidden-layer MLP trained with Adam on 6,000 Fashion-MNIST images (seed 0)."""
    torch.manual_seed(0)
    (xtr, ytr), (x, y) = train_test(6000, n_test)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, 10))
    return fit(model, xtr, ytr, epochs, batch=100, lr=2e-3), x, y


def fit(model: nn.Module, xtr, ytr, epochs: int, batch: int, lr: float) -> nn.Module:
    """Adam on cross-entropy over shuffled mini-batches; returns the model in eval mode."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(xtr))
        for i in range(0, len(xtr), batch):
            b = perm[i:i + batch]
            opt.zero_grad()
            nn.functional.cross_entropy(model(xtr[b]), ytr[b]).backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The models here are tiny: one intra-op thread is much faster than two (and immune to a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def clf():
    """(model, x, y): an MLP trained for a few seconds; 64 test points (a power of two, see the torchattacks test)."""
    model, x, y = train_mlp(hidden=64, n_test=64, epochs=3)
    with torch.no_grad():
        assert (model(x).argmax(1) == y).float().mean() > 0.6
    return model, x, y


@pytest.fixture(scope="module")
def linear():
    """(model, x, y, exact minimal ℓ2 distance): a linear classifier on 8×8 inputs in the interior of [0,1], labels =
    its own predictions, so the minimal adversarial distance is min_j (z_y − z_j)/‖w_y − w_j‖ (the box is not hit)."""
    g = torch.Generator().manual_seed(7)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(10, 64, generator=g))
        model[1].bias.zero_()
    model.eval()
    x = 0.4 + 0.2 * torch.rand(32, 1, 8, 8, generator=g)
    with torch.no_grad():
        z = model(x)
    y = z.argmax(1)
    w = model[1].weight.detach()
    gaps = z.gather(1, y[:, None]) - z  # (n, 10)
    wd = (w[y][:, None, :] - w[None]).norm(dim=2)  # ‖w_y − w_j‖
    exact = (gaps / wd).masked_fill(torch.nn.functional.one_hot(y, 10).bool(), float("inf")).amin(1)
    return model, x, y, exact


def _acc(model, x, y) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def _fooled(model, x, y) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1) != y


# ---------------------------------------------------------------------------------------------- registry & options

EXPECTED = {"fgsm": "linf", "pgd": "linf", "pgd_l2": "l2", "mifgsm": "linf", "difgsm": "linf", "cw_l2": "l2",
            "apgd_ce": "linf", "apgd_dlr": "linf", "autoattack": "linf", "autoattack_l2": "l2", "square": "linf",
            "square_l2": "l2", "spsa": "linf", "boundary": "l2", "lbfgs_min": "none", "deepfool": "none",
            "fab": "none", "transfer": "linf", "transfer_l2": "l2", "solver_surrogate": "linf",
            "solver_surrogate_l2": "l2"}


def test_registered_names_and_threat_models():
    assert set(EXPECTED) <= set(ATTACKS.names())
    assert {name: ATTACKS.get(name).norm for name in EXPECTED} == EXPECTED
    assert not ATTACKS.get("square").uses_gradients and not ATTACKS.get("boundary").uses_gradients


@pytest.mark.parametrize("name, options, field", [
    ("pgd", {"steps": 0}, "steps"),
    ("pgd", {"stepz": 10}, "stepz"),
    ("pgd", {"loss": "hinge"}, "loss"),
    ("difgsm", {"diversity_prob": 1.5}, "diversity_prob"),
    ("difgsm", {"resize_rate": 1.0}, "resize_rate"),
    ("autoattack", {"n_iter": 0}, "n_iter"),
    ("square", {"p_init": 0.0}, "p_init"),
    ("spsa", {"samples": -1}, "samples"),
    ("boundary", {"step_adaptation": 1.0}, "step_adaptation"),
    ("fab", {"p": "l1"}, "p"),
    ("transfer", {"source_model": "resnet"}, "source_model"),  # injected by the engine only
    ("transfer", {"base": "deepfool"}, "base"),  # minimal-distortion, not linf
    ("transfer_l2", {"base": "pgd"}, "base"),  # linf base for an l2 wrapper
    ("transfer", {"base": "pgd", "base_options": {"steps": 0}}, "base_options"),
    ("solver_surrogate", {"solver": "rk5"}, "solver"),
])
def test_validation_rejects_bad_options(name, options, field):
    with pytest.raises(SpecError) as exc:
        ATTACKS.validate(name, options, f"attacks[0]")
    assert field in str(exc.value)


def test_validation_defaults():
    assert ATTACKS.validate("difgsm", {}, "a")["diversity_prob"] == 0.5
    assert ATTACKS.validate("difgsm", {}, "a")["resize_rate"] == 0.9
    assert ATTACKS.validate("autoattack", {}, "a") == {"n_iter": 100, "n_queries": 5000}
    opts = ATTACKS.validate("transfer", {"base_options": {"steps": 5}}, "a")
    assert opts["base"] == "pgd" and opts["base_options"]["steps"] == 5 and opts["base_options"]["restarts"] == 1


def test_margin_is_right_for_negative_logits():
    logits = torch.tensor([[-5.0, -1.0, -3.0], [-5.0, -1.0, -3.0]])
    assert margin(logits, torch.tensor([1, 0])).tolist() == [-2.0, 4.0]


# ------------------------------------------------------------------------------------------------ ε-bounded attacks

BOUNDED = [
    ("fgsm", {}), ("pgd", {"steps": 10, "restarts": 2}), ("pgd", {"steps": 10, "loss": "cw", "random_start": False}),
    ("pgd_l2", {"steps": 10}), ("mifgsm", {}), ("difgsm", {"steps": 5}), ("cw_l2", {"steps": 20, "binary_search_steps": 2}),
    ("apgd_ce", {"n_iter": 10}), ("apgd_dlr", {"n_iter": 10}), ("autoattack", {"n_iter": 5, "n_queries": 30}),
    ("autoattack_l2", {"n_iter": 5, "n_queries": 20}), ("square", {"n_queries": 50}), ("square_l2", {"n_queries": 20}),
    ("spsa", {"iterations": 3, "samples": 8}), ("boundary", {"steps": 30, "init_directions": 20}),
]


@pytest.mark.parametrize("name, options", BOUNDED, ids=[f"{n}-{i}" for i, (n, _) in enumerate(BOUNDED)])
def test_bounded_attack_stays_in_ball_and_range(clf, name, options):
    model, x, y = clf
    x, y = x[:32], y[:32]
    cls = ATTACKS.get(name)
    eps = {"linf": 0.1, "l2": 1.5}[cls.norm]
    res = build_attack(name, model, eps, 3, **ATTACKS.validate(name, options, "a"))(x, y)
    assert res.x_adv.shape == x.shape and res.x_adv.dtype == x.dtype
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    delta = (res.x_adv - x).flatten(1)
    size = delta.abs().amax(1) if cls.norm == "linf" else delta.norm(dim=1)
    assert (size <= eps * (1 + 1e-5) + 1e-6).all(), size.max()
    assert res.steps.shape == (32,) and (res.steps >= 0).all() and res.steps.sum() > 0
    if cls.uses_gradients:
        g = res.grad_norm[~res.grad_norm.isnan()]  # DLR is flat (≡ 1) where y ranks third: 0 is legitimate
        assert res.grad_norm.shape == (32,) and (g >= 0).all() and (g > 0).float().mean() > 0.5
    if name != "boundary":  # boundary at eps=1.5 on this model: distances are larger after 30 steps
        assert _acc(model, res.x_adv, y) < _acc(model, x, y)
    zero = build_attack(name, model, 0.0, 3, **ATTACKS.validate(name, options, "a"))(x, y)
    assert torch.equal(zero.x_adv, x)


@pytest.mark.parametrize("name, options", [
    ("pgd", {"steps": 5, "restarts": 2}), ("difgsm", {"steps": 5}), ("square", {"n_queries": 50}),
    ("spsa", {"iterations": 2, "samples": 8}), ("boundary", {"steps": 30, "init_directions": 20}),
])
def test_same_seed_same_result(clf, name, options):
    model, x, y = clf
    x, y = x[:16], y[:16]
    eps = 0.1 if ATTACKS.get(name).norm == "linf" else 3.0
    a = build_attack(name, model, eps, 11, **options)(x, y)
    b = build_attack(name, model, eps, 11, **options)(x, y)
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.steps, b.steps)
    if name in ("pgd", "square", "spsa"):
        c = build_attack(name, model, eps, 12, **options)(x, y)
        assert not torch.equal(a.x_adv, c.x_adv)


def test_attacks_leave_caller_rng_and_model_alone(clf):
    model, x, y = clf
    state = copy.deepcopy(model.state_dict())
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    build_attack("pgd", model, 0.1, 0, steps=2)(x[:4], y[:4])
    assert torch.equal(torch.rand(3), expected)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items()) and not model.training
    model.train()
    try:
        with pytest.raises(RuntimeError, match="eval mode"):
            build_attack("pgd", model, 0.1, 0)(x[:4], y[:4])
    finally:
        model.eval()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        build_attack("fgsm", model, 0.1, 0)(x[:4] * 2, y[:4])


def test_pgd_beats_fgsm(clf):
    model, x, y = clf
    fgsm = build_attack("fgsm", model, 0.04, 0)(x, y)
    pgd = build_attack("pgd", model, 0.04, 0, steps=20)(x, y)
    assert _acc(model, pgd.x_adv, y) <= _acc(model, fgsm.x_adv, y)
    assert _acc(model, pgd.x_adv, y) < _acc(model, x, y)


def test_grad_norm_is_the_l1_norm_of_the_followed_gradient(clf):
    model, x, y = clf
    res = build_attack("pgd", model, 0.1, 0, steps=1, random_start=False)(x, y)
    torch.testing.assert_close(res.grad_norm, clean_input_grad_norm(model, x, y), rtol=1e-4, atol=1e-6)
    assert (res.steps == 1).all()


def test_own_pgd_agrees_with_torchattacks(clf):
    model, x, y = clf  # 64 points: with a power-of-two batch torchattacks' mean-loss gradient is an exact rescaling
    eps, alpha, steps, seed = 0.05, 0.01, 10, 4
    torch.manual_seed(seed)
    ta = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True)(x, y)
    last = build_attack("pgd", model, eps, seed, steps=steps, alpha=alpha, keep_best=False)(x, y).x_adv
    assert torch.equal(last, ta)
    best = build_attack("pgd", model, eps, seed, steps=steps, alpha=alpha)(x, y).x_adv
    ta_f, best_f = _fooled(model, ta, y), _fooled(model, best, y)
    assert (best_f | ~ta_f).all()  # keep_best only adds examples
    assert (best_f == ta_f).float().mean() >= 0.9

    torch.manual_seed(seed)
    ta2 = torchattacks.PGDL2(model, eps=1.0, alpha=0.2, steps=steps, random_start=True)(x, y)
    ours2 = build_attack("pgd_l2", model, 1.0, seed, steps=steps, alpha=0.2, keep_best=False)(x, y).x_adv
    torch.testing.assert_close(ours2, ta2, atol=1e-5, rtol=0)
    assert torch.equal(_fooled(model, ours2, y), _fooled(model, ta2, y))


def test_difgsm_agrees_with_torchattacks(clf):
    model, x, y = clf
    torch.manual_seed(9)
    ta = torchattacks.DIFGSM(model, eps=0.05, alpha=0.0125, steps=5, decay=1.0, resize_rate=0.9,
                             diversity_prob=0.5)(x, y)
    ours = build_attack("difgsm", model, 0.05, 9, steps=5, alpha=0.0125, decay=1.0)(x, y).x_adv
    assert torch.equal(ours, ta)


def test_torchattacks_components_are_reproduced(clf):
    """Our outer loops around torchattacks' single runs return what torchattacks itself returns."""
    model, x, y = clf
    x, y = x[:32], y[:32]
    for name, ta in [("apgd_ce", torchattacks.APGD(model, eps=0.05, steps=10, seed=3, loss="ce")),
                     ("apgd_dlr", torchattacks.APGD(model, eps=0.05, steps=10, seed=3, loss="dlr"))]:
        assert torch.equal(build_attack(name, model, 0.05, 3, n_iter=10)(x, y).x_adv, ta(x, y)), name
    ta = torchattacks.Square(model, eps=0.05, n_queries=60, seed=3, resc_schedule=False)
    assert torch.equal(build_attack("square", model, 0.05, 3, n_queries=60)(x, y).x_adv, ta(x, y))


@pytest.mark.parametrize("loss", ["margin", "ce"])
def test_square_skips_no_op_candidates_with_torchattacks_results(clf, loss):
    """Small windows (p_init 0.01: one or two pixels) and a small ε keep points robust for hundreds of queries, so
    many candidates repeat their point's best: those are not sent through the model, and the adversarials and query
    counts are still torchattacks' own."""
    model, x, y = clf
    rows = []
    hook = model.register_forward_pre_hook(lambda m, args: rows.append(len(args[0])))
    try:
        res = build_attack("square", model, 0.02, 5, n_queries=400, p_init=0.01, loss=loss)(x, y)
    finally:
        hook.remove()
    ta = torchattacks.Square(model, eps=0.02, n_queries=400, p_init=0.01, seed=5, resc_schedule=False, loss=loss)
    assert torch.equal(res.x_adv, ta(x, y))
    queried = res.steps.sum().item()
    assert sum(rows) < 0.9 * queried  # ≥ 10 % of the candidates never reached the model
    assert (res.steps > 300).sum() > 8  # points that stayed robust throughout


@pytest.mark.parametrize("p_init,eps", [(0.8, 0.05), (0.01, 0.02)])
def test_square_single_run_equals_torchattacks_points_and_query_counts(clf, p_init, eps):
    """The ℓ∞ single run (compact state, window-only updates, no-op candidates skipped) against torchattacks'
    own `attack_single_run` from the same RNG state: the same best points and queries per point."""
    from advsweep.attacks.torchattacks_based import _Square

    model, x, y = clf
    runs = []
    for run in (_Square.attack_single_run, torchattacks.Square.attack_single_run):
        atk = _Square(model, eps=eps, n_queries=300, p_init=p_init, seed=7, resc_schedule=False)
        atk.init_hyperparam(x)
        torch.manual_seed(7)
        runs.append(run(atk, x, y))
    (q, best), (q_ta, best_ta) = runs
    assert torch.equal(best, best_ta) and torch.equal(q, q_ta)
    assert q.min() < 50 and q.max() == 301  # points fooled early and points never fooled


def test_autoattack_standard_settings_and_cascade(clf):
    model, x, y = clf
    default = build_attack("autoattack", model, 0.05, 0)
    s = default.settings
    assert s["standard"] and s["stages"] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert s["apgd_ce"]["n_iter"] == 100 and s["apgd_ce"]["n_restarts"] == 1
    assert s["apgd_t"]["n_iter"] == 100 and s["apgd_t"]["n_target_classes"] == 9
    assert s["fab_t"]["n_iter"] == 100 and s["fab_t"]["n_target_classes"] == 9
    assert s["square"] == {"n_queries": 5000, "n_restarts": 1, "p_init": 0.8, "loss": "margin",
                           "resc_schedule": False}

    x, y = x[:32], y[:32]
    aa = build_attack("autoattack", model, 0.05, 0, n_iter=10, n_queries=100)(x, y)
    apgd = build_attack("apgd_ce", model, 0.05, 0, n_iter=10)(x, y)
    settings = aa.info["settings"]
    assert not settings["standard"] and settings["apgd_t"]["n_iter"] == 10 and settings["square"]["n_queries"] == 100
    assert _acc(model, aa.x_adv, y) <= _acc(model, apgd.x_adv, y)
    broken = aa.info["broken_by"]
    fooled = _fooled(model, aa.x_adv, y)
    assert torch.equal(fooled, broken != -1)  # -2: clean error, ≥ 0: the stage that broke it
    assert torch.equal(aa.x_adv[broken == -1], x[broken == -1])
    assert (aa.steps >= aa.info["grad_evals"]).all()


# ------------------------------------------------------------------------------- decision-based & minimal distortion

def test_boundary_finds_adversarials_and_shrinks_distance(linear):
    model, x, y, exact = linear
    short = build_attack("boundary", model, 1e9, 0, steps=200)(x, y)
    long = build_attack("boundary", model, 1e9, 0, steps=4000)(x, y)
    assert torch.isfinite(long.distance).all()
    assert _fooled(model, long.x_adv, y).all()
    torch.testing.assert_close(long.distance, (long.x_adv - x).flatten(1).norm(dim=1))
    assert (long.distance <= short.distance + 1e-6).all()  # the same trajectory, run longer
    assert long.distance.median() < 0.7 * short.distance.median()
    ratio = long.distance / exact  # never below the exact minimum; close to it after 4,000 steps
    assert (ratio >= 1 - 1e-4).all() and ratio.median() <= 1.1 and ratio.max() <= 2.0
    assert (long.steps > short.steps).all()
    # at a fixed eps: the adversarial only where it is within eps, else x
    eps = float(long.distance.median())
    at_eps = build_attack("boundary", model, eps, 0, steps=4000)(x, y)
    within = long.distance <= eps
    assert torch.equal(at_eps.x_adv[within], long.x_adv[within]) and torch.equal(at_eps.x_adv[~within], x[~within])


def test_boundary_initialises_from_the_batch_when_noise_fails(clf):
    model, x, y = clf
    res = build_attack("boundary", model, 100.0, 0, steps=1, init_directions=1)(x, y)
    assert torch.isfinite(res.distance).all() and _fooled(model, res.x_adv, y).all()
    assert (res.distance[~_fooled(model, x, y)] > 0).all()


def test_deepfool_and_lbfgs_are_exact_on_a_linear_model(linear):
    model, x, y, exact = linear
    df = build_attack("deepfool", model, 0.0, 0)(x, y)
    assert _fooled(model, df.x_adv, y).all()
    torch.testing.assert_close(df.distance, exact * 1.02, rtol=0.02, atol=1e-4)
    lb = build_attack("lbfgs_min", model, 0.0, 0, n_target_classes=3, search_steps=6, maxiter=40)(x, y)
    assert _fooled(model, lb.x_adv, y).all()
    assert (lb.distance >= exact - 1e-4).all() and (lb.distance <= 1.25 * exact).all()


@pytest.mark.parametrize("name, options", [("deepfool", {}), ("lbfgs_min", {"search_steps": 4, "maxiter": 30}),
                                           ("fab", {"steps": 20})])
def test_minimal_distortion(clf, name, options):
    model, x, y = clf
    x, y = x[:32], y[:32]
    res = build_attack(name, model, 123.0, 0, **options)(x, y)  # eps is ignored
    wrong = _fooled(model, x, y)
    found = torch.isfinite(res.distance)
    assert (res.distance[wrong] == 0).all() and torch.equal(res.x_adv[wrong], x[wrong])
    assert found[~wrong].float().mean() >= 0.9
    ok = found & ~wrong
    assert _fooled(model, res.x_adv, y)[ok].all()
    assert (res.distance[ok] > 0).all()
    p_dist = (res.x_adv - x).flatten(1)
    p_dist = p_dist.norm(dim=1) if name != "fab" or options.get("p", "l2") == "l2" else p_dist.abs().amax(1)
    torch.testing.assert_close(res.distance[ok], p_dist[ok])
    assert torch.equal(res.x_adv[~found], x[~found])
    # sanity: not larger than the ℓ2 norm of a PGD-ℓ2 adversarial found at a large eps
    pgd = build_attack("pgd_l2", model, 4.0, 0, steps=20)(x, y).x_adv
    both = ok & _fooled(model, pgd, y)
    assert both.sum() >= 10
    assert (res.distance[both] <= (pgd - x).flatten(1).norm(dim=1)[both] + 1e-4).float().mean() >= 0.9


# -------------------------------------------------------------------------------------------------------- adaptive

def test_transfer_from_an_identical_model_is_the_white_box_attack(clf):
    model, x, y = clf
    options = {"base": "pgd", "base_options": {"steps": 5, "restarts": 2}}
    res = build_attack("transfer", model, 0.05, 2, source_model=copy.deepcopy(model), **options)(x, y)
    white = build_attack("pgd", model, 0.05, 2, steps=5, restarts=2)(x, y)
    assert torch.equal(res.x_adv, white.x_adv) and res.info["base"] == "pgd"
    other = nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).eval()
    assert not torch.equal(build_attack("transfer", model, 0.05, 2, source_model=other, **options)(x, y).x_adv,
                           white.x_adv)
    with pytest.raises(ValueError, match="source_model"):
        build_attack("transfer", model, 0.05, 2)


def test_solver_surrogate_crafts_on_a_copy(clf):
    torch.manual_seed(0)
    ode = build_model("odenet", 1, 10, 28, width=8).eval()
    before = [(b.solver, b.rtol, b.atol, b.step_size, b.adjoint) for b in ode_blocks(ode)]
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        y = ode(x).argmax(1)
    opts = {"solver": "rk4", "step_size": 0.5, "base": "pgd", "base_options": {"steps": 2}}
    res = build_attack("solver_surrogate", ode, 0.1, 0, **ATTACKS.validate("solver_surrogate", opts, "a"))(x, y)
    assert [(b.solver, b.rtol, b.atol, b.step_size, b.adjoint) for b in ode_blocks(ode)] == before
    assert res.info["surrogate"][0]["solver"] == "rk4" and res.info["surrogate"][0]["step_size"] == 0.5
    surrogate = with_solver(ode, solver="rk4", step_size=0.5)
    assert torch.equal(res.x_adv, build_attack("pgd", surrogate, 0.1, 0, steps=2)(x, y).x_adv)
    assert (res.x_adv - x).abs().max() <= 0.1 + 1e-6
    with pytest.raises(ValueError, match="ODE"):
        build_attack("solver_surrogate", clf[0], 0.1, 0, solver="rk4")


def test_gradient_agreement_adjoint_vs_backprop():
    torch.manual_seed(0)
    ode = build_model("odenet", 1, 10, 28, width=8, rtol=1e-6, atol=1e-6).eval()
    x = torch.rand(4, 1, 28, 28)
    y = torch.arange(4)
    cos = gradient_agreement(ode, x, y)
    assert cos.shape == (4,) and (cos > 0.99).all(), cos
    assert all(not b.adjoint for b in ode_blocks(ode))
    with pytest.raises(ValueError):
        gradient_agreement(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), x, y)


# ------------------------------------------------------------- successes that hold in any batch size and precision

@pytest.fixture(scope="module")
def trained_resnet():
    """(model, x, y): the zoo's `resnet` (width 16, GroupNorm) trained for four epochs on 3,000 Fashion-MNIST images."""
    torch.manual_seed(0)
    (xtr, ytr), (x, y) = train_test(3000, 48)
    model = fit(build_model("resnet", 1, 10, 28, width=16, blocks=1), xtr, ytr, 4, batch=50, lr=1e-2)
    assert _acc(model, x, y) > 0.55
    return model, x, y


def _adversarial_everywhere(model, x_adv, y) -> torch.Tensor:
    """Per example: misclassified when evaluated alone, in batches of 7 and 32, all at once, and in float64."""
    ok = torch.ones(len(y), dtype=torch.bool)
    with torch.no_grad():
        for bs in (1, 7, 32, len(y)):
            pred = torch.cat([model(x_adv[i:i + bs]).argmax(1) for i in range(0, len(y), bs)])
            ok &= pred != y
        ok &= copy.deepcopy(model).double()(x_adv.double()).argmax(1) != y
    return ok


@pytest.mark.parametrize("name, options", [
    ("deepfool", {}), ("deepfool", {"box_aware": True}), ("lbfgs_min", {"search_steps": 4, "maxiter": 30}),
    ("fab", {"steps": 20}),
    ("fab", {"steps": 20, "p": "linf"}), ("boundary", {"steps": 300}), ("cw_l2", {"steps": 30, "binary_search_steps": 3}),
])
@pytest.mark.parametrize("which", ["clf", "trained_resnet"])
def test_minimal_distortion_successes_hold_in_any_batch_and_precision(name, options, which, request):
    model, x, y = request.getfixturevalue(which)
    eps = 100.0  # cw_l2 and boundary: large enough that the ball holds every adversarial found
    res = build_attack(name, model, eps, 0, **options)(x, y)
    wrong = _fooled(model, x, y)
    found = torch.isfinite(res.distance) & ~wrong
    assert found.sum() >= 0.5 * (~wrong).sum(), f"{name} found only {int(found.sum())} of {int((~wrong).sum())}"
    held = _adversarial_everywhere(model, res.x_adv, y)
    assert held[found].all(), f"{int((~held[found]).sum())} of {int(found.sum())} {name} successes do not hold"
    # and the margin is not a rounding artefact: at least MARGIN_RTOL of the clean logit range
    from advsweep.attacks._util import margin_tolerance

    with torch.no_grad():
        m = margin(model(res.x_adv), y)
        tol = margin_tolerance(model(x))
    assert (m[found] > 0.99 * tol[found]).all()


def test_fgsm_and_pgd_bit_identical_to_torchattacks_on_a_trained_resnet(trained_resnet):
    model, x, y = trained_resnet
    x, y = x[:32], y[:32]  # a power of two: torchattacks' mean-loss gradient is then an exact rescaling of ours
    ta = torchattacks.FGSM(model, eps=0.05)(x, y)
    assert torch.equal(build_attack("fgsm", model, 0.05, 0)(x, y).x_adv, ta)
    torch.manual_seed(3)
    ta = torchattacks.PGD(model, eps=0.05, alpha=0.01, steps=10, random_start=True)(x, y)
    ours = build_attack("pgd", model, 0.05, 3, steps=10, alpha=0.01, keep_best=False)(x, y).x_adv
    assert torch.equal(ours, ta)
