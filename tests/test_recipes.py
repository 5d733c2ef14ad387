"""Training recipes and penalties: pgd_at, trades, yopo, gaussian_noise, contractive (penalty + recipe), dae, ae_adv.

The test models are defined here (not taken from advsweep.models) so that these tests do not depend on the zoo; they
follow the zoo's FeedForward conventions (`hidden_layers()` stages with pre/linear/act/post, `forward_with_hiddens`
returning [x, h_1, ..., logits], `first_layer`). Real data: the first images of Fashion-MNIST's training set.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advsweep.training import PENALTIES, RECIPES, build_penalty, build_recipe, inner
from advsweep.training.trainer import OptimConfig, Trainer, as_float_images

FMNIST = Path("/usr/share/datasets/fashion-mnist")


# ---------------------------------------------------------------------------------------------------------- models
class Stage(nn.Module):
    def __init__(self, linear, act=None, pre=None, post=None):
        super().__init__()
        self.pre = pre or nn.Identity()
        self.linear = linear
        self.act = act or nn.Identity()
        self.post = post or nn.Identity()

    def forward(self, h):
        return self.post(self.act(self.linear(self.pre(h))))


class StageNet(nn.Module):
    def __init__(self, stages):
        super().__init__()
        self.stages = nn.ModuleList(stages)

    def hidden_layers(self):
        return list(self.stages)

    @property
    def first_layer(self):
        return self.stages[0].linear

    def forward_with_hiddens(self, x):
        hs = [x]
        for s in self.stages:
            hs.append(s(hs[-1]))
        return hs[-1], hs

    def forward(self, x):
        return self.forward_with_hiddens(x)[0]


def tiny_mlp(d_in=784, hidden=(32,), classes=10, act=nn.ReLU):
    sizes = [d_in, *hidden, classes]
    stages = []
    for j, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        last = j == len(sizes) - 2
        stages.append(Stage(nn.Linear(a, b), None if last else act(), pre=nn.Flatten() if j == 0 else None))
    return StageNet(stages)


class FunctionalMLP(nn.Module):
    """forward_with_hiddens only (no hidden_layers): the penalty must fall back to autograd."""

    def __init__(self, d_in=12, h=7, classes=4):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(d_in, h), nn.Linear(h, h), nn.Linear(h, classes)

    def layer_fns(self):
        return [lambda h: torch.tanh(self.fc1(h)), lambda h: F.softplus(self.fc2(h)), self.fc3]

    def forward_with_hiddens(self, x):
        hs = [x]
        for f in self.layer_fns():
            hs.append(f(hs[-1]))
        return hs[-1], hs

    def forward(self, x):
        return self.forward_with_hiddens(x)[0]


def tiny_conv(c_in=1, side=8, classes=3):
    return StageNet([
        Stage(nn.Conv2d(c_in, 3, 3, padding=1), nn.ReLU()),
        Stage(nn.Conv2d(3, 2, 3, padding=1), nn.Tanh(), post=nn.MaxPool2d(2)),
        Stage(nn.Linear(2 * (side // 2) ** 2, classes), pre=nn.Flatten()),
    ])


class BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.act = nn.ReLU()
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(4 * 28 * 28, 10)

    def forward(self, x):
        return self.fc(self.drop(self.act(self.bn(self.conv(x)))).flatten(1))


class Stacked(nn.Module):
    def __init__(self):
        super().__init__()
        self.frontend = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 784), nn.Sigmoid(),
                                      nn.Unflatten(1, (1, 28, 28)))
        self.classifier = tiny_mlp()

    def forward(self, x):
        return self.classifier(self.frontend(x))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared 2-core machine they oversubscribe badly."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# ------------------------------------------------------------------------------------------------------------ data
def load_fmnist(n=512):
    if not FMNIST.is_dir():
        pytest.skip("Fashion-MNIST not found at /usr/share/datasets/fashion-mnist")
    with gzip.open(FMNIST / "train-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)
    with gzip.open(FMNIST / "train-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    return torch.from_numpy(images[:n].copy()), torch.from_numpy(labels[:n].astype(np.int64))


@pytest.fixture(scope="module")
def fmnist():
    return load_fmnist()


@pytest.fixture(scope="module")
def batch(fmnist):
    x, y = fmnist
    return as_float_images(x[:64]), y[:64]


# ----------------------------------------------------------------------------------------------------- registries
def test_registered_names_and_params_are_the_options():
    for name in ["pgd_at", "trades", "yopo", "gaussian_noise", "contractive", "dae", "ae_adv", "natural"]:
        assert name in RECIPES
        opts = RECIPES.validate(name, {}, f"recipe.{name}")
        assert build_recipe(name, **opts).params() == opts
    assert "contractive" in PENALTIES
    opts = PENALTIES.validate("contractive", {"lams": [1, 2], "conv_estimator": "exact"}, "p")
    pen = build_penalty("contractive", **opts)
    pen.loss(tiny_mlp(hidden=(5,)), torch.rand(2, 1, 28, 28), torch.tensor([0, 1]))  # no state leaks into params
    assert pen.params() == opts
    assert RECIPES.validate("trades", {"beta": 1, "eps": 0.3, "step": 0.01, "steps": 40}, "r")["beta"] == 1.0
    with pytest.raises(Exception, match="conv_estimator"):
        PENALTIES.validate("contractive", {"conv_estimator": "exactly"}, "p")
    with pytest.raises(Exception, match="variant"):
        RECIPES.validate("gaussian_noise", {"variant": "L2"}, "r")


# ----------------------------------------------------------------------------------------------------- contractive
def reference_penalty(fns, hs, lams):
    """Σ_j λ_j mean_b ‖∂f_j/∂h‖²_F by torch.autograd.functional.jacobian, one example at a time (differentiable)."""
    total = 0.0
    per_layer = []
    for lam, f, h_prev in zip(lams, fns, hs):
        vals = []
        for b in range(len(h_prev)):
            jac = torch.autograd.functional.jacobian(f, h_prev[b:b + 1], create_graph=True)
            vals.append(jac.pow(2).sum())
        per_layer.append(torch.stack(vals).mean())
        total = total + lam * per_layer[-1]
    return total, per_layer


@pytest.mark.parametrize("act", [nn.ReLU, nn.Sigmoid, nn.Tanh])
@pytest.mark.parametrize("output", ["softmax", "logits", "none"])
def test_contractive_dense_closed_form_equals_autograd_jacobian(act, output):
    torch.manual_seed(0)
    model = tiny_mlp(d_in=2 * 3 * 3, hidden=(6, 5), classes=4, act=act).double()
    x = torch.rand(5, 2, 3, 3, dtype=torch.float64)
    lams = [0.5, 2.0, 3.0] if output != "none" else [0.5, 2.0]
    pen = build_penalty("contractive", lams=lams, output=output)
    _, norms, methods = pen.layer_norms(model, x)
    expected_methods = {"softmax": ["closed_form"] * 2 + ["exact"], "logits": ["closed_form"] * 3,
                        "none": ["closed_form"] * 2}[output]
    assert methods == expected_methods
    value, stats = pen.loss(model, x, None)

    stages = model.hidden_layers()
    fns = list(stages)
    if output == "softmax":
        fns[-1] = lambda h: F.softmax(stages[-1](h), dim=1)
    if output == "none":
        fns = fns[:-1]
    _, hs = model.forward_with_hiddens(x)
    ref, ref_layers = reference_penalty(fns, hs, lams)
    torch.testing.assert_close(value, ref, rtol=1e-10, atol=1e-12)
    for j, r in enumerate(ref_layers, start=1):
        assert stats[f"contractive_l{j}"] == pytest.approx(r.item(), rel=1e-10)

    # The penalty is differentiable in the weights, with the same gradient as the autograd reference.
    params = list(model.parameters())
    g = torch.autograd.grad(value, params, allow_unused=True)
    g_ref = torch.autograd.grad(ref, params, allow_unused=True)
    for p, a, b in zip(params, g, g_ref):  # None = no dependence = zero gradient
        a = torch.zeros_like(p) if a is None else a
        b = torch.zeros_like(p) if b is None else b
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_contractive_without_hidden_layers_uses_exact_autograd_path():
    torch.manual_seed(1)
    model = FunctionalMLP().double()
    x = torch.randn(6, 12, dtype=torch.float64)
    pen = build_penalty("contractive", lam=0.3, output="logits")
    _, _, methods = pen.layer_norms(model, x)
    assert methods == ["exact"] * 3
    value, _ = pen.loss(model, x, None)
    _, hs = model.forward_with_hiddens(x)
    ref, _ = reference_penalty(model.layer_fns(), hs, [0.3] * 3)
    torch.testing.assert_close(value, ref, rtol=1e-10, atol=1e-12)
    # squared=False: mean of the per-example Frobenius norms.
    v1, _ = build_penalty("contractive", lam=1.0, output="none", squared=False).loss(model, x, None)
    jac = torch.stack([torch.autograd.functional.jacobian(model.layer_fns()[0], x[b:b + 1]).pow(2).sum().sqrt()
                       for b in range(len(x))]).mean()
    jac2 = torch.stack([torch.autograd.functional.jacobian(model.layer_fns()[1], hs[1][b:b + 1].detach())
                        .pow(2).sum().sqrt() for b in range(len(x))]).mean()
    torch.testing.assert_close(v1, jac + jac2, rtol=1e-8, atol=1e-10)


def test_contractive_conv_exact_and_hutchinson():
    torch.manual_seed(2)
    model = tiny_conv().double()
    x = torch.rand(4, 1, 8, 8, dtype=torch.float64)
    exact = build_penalty("contractive", lam=1.0, conv_estimator="exact", output="logits")
    _, norms_exact, methods = exact.layer_norms(model, x)
    assert methods == ["exact", "exact", "closed_form"]
    _, hs = model.forward_with_hiddens(x)
    _, ref_layers = reference_penalty(model.hidden_layers(), hs, [1.0] * 3)
    for n, r in zip(norms_exact, ref_layers):
        torch.testing.assert_close(n.mean(), r, rtol=1e-10, atol=1e-12)

    torch.manual_seed(3)
    hutch = build_penalty("contractive", lam=1.0, conv_estimator="hutchinson", samples=4000, output="logits")
    _, norms_h, methods = hutch.layer_norms(model, x)
    assert methods == ["hutchinson", "hutchinson", "closed_form"]
    for n_h, n_e in zip(norms_h[:2], norms_exact[:2]):
        assert n_h.mean().item() == pytest.approx(n_e.mean().item(), rel=0.05)
        assert not torch.allclose(n_h, n_e)  # it is an estimate, not the exact value by another route
    # one probe per step (the training default) is unbiased too: the mean over many single-probe draws matches
    one = build_penalty("contractive", lam=1.0, samples=1, output="none")
    draws = torch.stack([one.loss(model, x, None)[0].detach() for _ in range(600)])
    assert draws.mean().item() == pytest.approx(sum(n.mean() for n in norms_exact[:2]).item(), rel=0.05)
    # and it is differentiable in the weights
    value, _ = one.loss(model, x, None)
    grads = torch.autograd.grad(value, [model.stages[0].linear.weight])
    assert torch.count_nonzero(grads[0]) > 0


def test_contractive_errors_name_the_model():
    pen = build_penalty("contractive")
    bn = BNNet()
    bn.registry_name = "bnnet"
    with pytest.raises(ValueError, match="bnnet.*forward_with_hiddens"):
        pen.loss(bn, torch.rand(2, 1, 28, 28), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="lams has 2 entries.*3 layer pairs"):
        build_penalty("contractive", lams=[1.0, 1.0]).loss(tiny_mlp(hidden=(4, 4)), torch.rand(2, 1, 28, 28), None)


# ------------------------------------------------------------------------------------------- trades / inner attack
def test_trades_with_beta_zero_equals_natural_loss(batch):
    x, y = batch
    torch.manual_seed(0)
    model = BNNet().train()
    model.drop.eval()  # dropout off, so both losses see the same function (BN in train mode: batch statistics)
    nat, _ = build_recipe("natural").loss(model, x, y)
    tr, stats = build_recipe("trades", beta=0.0, eps=0.1, step=0.02, steps=3).loss(model, x, y)
    assert tr.item() == nat.item()
    assert stats["loss_robust"] > 0  # the inner maximisation did run
    tr6, _ = build_recipe("trades", beta=6.0, eps=0.1, step=0.02, steps=3).loss(model, x, y)
    assert tr6.item() > nat.item()


@pytest.mark.parametrize("name,opts", [
    ("pgd_at", {"eps": 0.1, "step": 0.04, "steps": 5}),
    ("pgd_at", {"eps": 0.05, "step": 0.5, "steps": 3, "random_start": False}),
    ("trades", {"eps": 0.1, "step": 0.04, "steps": 5}),
    ("ae_adv", {"eps": 0.1, "step": 0.04, "steps": 5}),
    ("ae_adv", {"attack": "fgsm", "target": "stacked", "eps": 0.1}),
])
def test_inner_iterates_stay_in_eps_ball_and_unit_box(monkeypatch, batch, name, opts):
    x, y = batch
    torch.manual_seed(0)
    model = Stacked() if name == "ae_adv" else tiny_mlp()
    model.train()
    iterates, original = [], inner.pgd_linf

    def recording(*args, **kwargs):
        kwargs["on_step"] = lambda xa: iterates.append(xa.clone())
        return original(*args, **kwargs)

    monkeypatch.setattr(inner, "pgd_linf", recording)
    recipe = build_recipe(name, **opts)
    recipe.loss(model, x, y)
    n_steps = 1 if opts.get("attack") == "fgsm" else opts["steps"]
    assert len(iterates) == n_steps + 1
    eps = opts["eps"]
    for xa in iterates:
        assert xa.min() >= 0 and xa.max() <= 1
        assert (xa - x).abs().max() <= eps + 1e-6
    assert (iterates[-1] - x).abs().max() > 0.5 * eps  # the attack moved
    assert model.training


@pytest.mark.parametrize("name,forwards", [("pgd_at", 1), ("trades", 2), ("ae_adv", 0)])
def test_inner_attack_runs_in_eval_mode_and_keeps_bn_stats(batch, name, forwards):
    x, y = batch
    torch.manual_seed(0)
    model = BNNet()
    if name == "ae_adv":
        stacked = Stacked()
        stacked.classifier = model
        model_to_train = stacked
    else:
        model_to_train = model
    model_to_train.train()
    model.drop.eval()  # a submodule deliberately in eval mode must stay so
    seen_modes = []
    hook = model.bn.register_forward_hook(lambda m, a, o: seen_modes.append(m.training))
    mean0, var0, n0 = model.bn.running_mean.clone(), model.bn.running_var.clone(), int(model.bn.num_batches_tracked)

    recipe = build_recipe(name, eps=0.1, step=0.03, steps=4)
    x_adv = recipe.craft(model_to_train, x, y)
    assert not any(seen_modes[:4]) and len(seen_modes) >= 4  # every attack forward saw eval mode
    assert torch.equal(model.bn.running_mean, mean0) and torch.equal(model.bn.running_var, var0)
    assert int(model.bn.num_batches_tracked) == n0
    assert model_to_train.training and model.training and model.bn.training and not model.drop.training
    assert x_adv.grad is None and all(p.grad is None for p in model_to_train.parameters())

    recipe.loss(model_to_train, x, y)  # the update's forwards are the only ones that touch the statistics
    assert int(model.bn.num_batches_tracked) == n0 + forwards
    assert model_to_train.training and not model.drop.training
    hook.remove()


# ---------------------------------------------------------------------------------------------------------- yopo
def test_yopo_with_eps_zero_gives_natural_gradient_plus_hamiltonian_on_layer_one(batch):
    """ε = 0: every x + η is x, so the rest of the network gets ∇L and layer one ∇L (full passes) + ∇L (Hamiltonian:
    ∇θ₁ ⟨layer_one(x), ∂L/∂o⟩ = ∇θ₁ L by the chain rule) — averaged over K, that is 1× and 2× the natural gradient."""
    x, y = batch
    torch.manual_seed(0)
    model = tiny_mlp(hidden=(16, 16)).double()
    x = x.double()
    loss, _ = build_recipe("yopo", K=3, inner=2, eps=0.0, step=0.01).loss(model, x, y)
    params = list(model.parameters())
    g = torch.autograd.grad(loss, params)
    g_nat = torch.autograd.grad(F.cross_entropy(model(x), y), params)
    assert loss.item() == pytest.approx(F.cross_entropy(model(x), y).item(), rel=1e-12)
    layer_one = {id(p) for p in model.stages[0].parameters()}
    for p, a, b in zip(params, g, g_nat):
        torch.testing.assert_close(a, (2.0 if id(p) in layer_one else 1.0) * b, rtol=1e-9, atol=1e-12)


def test_yopo_layer_one_choice_and_input_check(batch):
    x, y = batch
    from advsweep.training.yopo import find_layer_one
    model = tiny_mlp()
    assert find_layer_one(model, "first_stage") is model.stages[0]
    assert find_layer_one(model, "first_layer") is model.stages[0].linear
    bn = BNNet()
    assert find_layer_one(bn) is bn.conv
    torch.manual_seed(0)
    loss, stats = build_recipe("yopo", K=2, inner=3, eps=0.1, step=0.03).loss(bn, x, y)
    assert torch.isfinite(loss) and 0 <= stats["train_adv_acc"] <= 1

    class Normalised(nn.Module):  # the first conv does not see the raw input
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)
            self.fc = nn.Linear(2 * 26 * 26, 10)

        def forward(self, x):
            return self.fc(self.conv((x - 0.5) / 0.5).flatten(1))

    with pytest.raises(ValueError, match="does not act directly on the model input"):
        build_recipe("yopo", K=1, inner=1).loss(Normalised(), x, y)


# ------------------------------------------------------------------------------------------------ gaussian noise
def test_gaussian_noise_hidden_hooks_train_only_and_removed(batch):
    x, y = batch
    torch.manual_seed(0)
    model = tiny_mlp(hidden=(32, 32))
    calls = []
    orig = model.stages[1].forward
    model.stages[1].forward = lambda h: (calls.append(h.detach().clone()), orig(h))[1]
    torch.manual_seed(1)
    build_recipe("gaussian_noise", sigma=0.0, variant="L*", hidden_sigma=0.5).loss(model, x, y)
    h1_noisy = calls[-1]
    h1_clean = model.stages[0](x)
    assert (h1_noisy - h1_clean).std().item() == pytest.approx(0.5, rel=0.05)  # noise on h_1 (input σ = 0)
    for m in model.modules():
        assert not m._forward_hooks
    torch.manual_seed(1)
    build_recipe("gaussian_noise", sigma=0.0, variant="L1").loss(model, x, y)
    torch.testing.assert_close(calls[-1], h1_clean.detach())  # L1 leaves hidden layers clean
    # hooks are inert in eval mode: with σ = 0 at the input, an eval-mode model sees no noise at all
    model.eval()
    a, _ = build_recipe("gaussian_noise", sigma=0.0, variant="L*", hidden_sigma=1.0).loss(model, x, y)
    torch.testing.assert_close(a, F.cross_entropy(model(x), y))
    # models without hidden_layers(): activation modules are hooked
    bn = BNNet().eval()
    l_eval = F.cross_entropy(bn(x), y)
    bn.train()
    bn.bn.eval(), bn.drop.eval()
    torch.manual_seed(2)
    l_noisy, _ = build_recipe("gaussian_noise", sigma=0.0, variant="L*", hidden_sigma=1.0).loss(bn, x, y)
    assert abs(l_noisy.item() - l_eval.item()) > 1e-3
    with pytest.raises(ValueError, match="FunctionalMLP.*activation modules"):
        build_recipe("gaussian_noise", variant="L*").loss(FunctionalMLP(), torch.rand(3, 12), torch.tensor([0, 1, 2]))


# -------------------------------------------------------------------------------------------------- front-end
def test_frontend_recipes_need_frontend_and_freeze_classifier(batch):
    x, y = batch
    plain = tiny_mlp()
    plain.registry_name = "mlp"
    for name in ["dae", "ae_adv"]:
        with pytest.raises(ValueError, match=f"{name}: model 'mlp' has no .frontend"):
            build_recipe(name).loss(plain, x, y)
    torch.manual_seed(0)
    model = Stacked().train()
    for name, opts in [("dae", {}), ("ae_adv", {"target": "stacked", "steps": 3})]:
        model.zero_grad(set_to_none=True)
        loss, stats = build_recipe(name, **opts).loss(model, x, y)
        loss.backward()
        assert all(p.grad is None for p in model.classifier.parameters())
        assert all(p.grad is not None for p in model.frontend.parameters())
    assert stats["train_adv_acc"] <= 1
    assert build_recipe("dae").loss(model, x, y)[1]["noise_sigma"] == 0.1
    model.frontend.noise_std = 0.3
    assert build_recipe("dae").loss(model, x, y)[1]["noise_sigma"] == 0.3
    assert build_recipe("dae", sigma=0.2).loss(model, x, y)[1]["noise_sigma"] == 0.2


# ------------------------------------------------------------------------------------ training on real data
CASES = {
    "natural": (lambda: tiny_mlp(), "natural", {}, []),
    "pgd_at": (lambda: tiny_mlp(), "pgd_at", {"eps": 0.05, "step": 0.02, "steps": 5}, []),
    "trades": (lambda: tiny_mlp(), "trades", {"beta": 1.0, "eps": 0.05, "step": 0.02, "steps": 5}, []),
    "yopo": (lambda: tiny_mlp(), "yopo", {"K": 3, "inner": 3, "eps": 0.05, "step": 0.02}, []),
    "yopo_conv": (lambda: BNNet(), "yopo", {"K": 2, "inner": 2, "eps": 0.05, "step": 0.02}, []),
    "gaussian_L1": (lambda: tiny_mlp(), "gaussian_noise", {"sigma": 0.3}, []),
    "gaussian_Lstar": (lambda: tiny_mlp(hidden=(32, 32)), "gaussian_noise", {"sigma": 0.3, "variant": "L*"}, []),
    "contractive": (lambda: tiny_mlp(), "contractive", {"lam": 0.01}, []),
    "trades+contractive": (lambda: tiny_mlp(), "trades", {"beta": 1.0, "eps": 0.05, "step": 0.02, "steps": 3},
                           [("contractive", {"lam": 0.01})]),
    "pgd_at+contractive_conv": (lambda: conv_fmnist(), "pgd_at", {"eps": 0.05, "step": 0.02, "steps": 2},
                                [("contractive", {"lam": 0.01, "conv_estimator": "hutchinson", "samples": 1})]),
    "gaussian+contractive": (lambda: tiny_mlp(), "gaussian_noise", {"sigma": 0.2},
                             [("contractive", {"lams": [0.01, 0.1]})]),
    "yopo+contractive": (lambda: tiny_mlp(), "yopo", {"K": 2, "inner": 2, "eps": 0.05, "step": 0.02},
                         [("contractive", {"lam": 0.01, "output": "logits"})]),
    "dae": (lambda: Stacked(), "dae", {"sigma": 0.1}, []),
    "ae_adv": (lambda: Stacked(), "ae_adv", {"eps": 0.1, "step": 0.03, "steps": 3}, []),
}


def conv_fmnist():
    return StageNet([
        Stage(nn.Conv2d(1, 4, 5, stride=2), nn.ReLU()),  # 28 → 12
        Stage(nn.Conv2d(4, 8, 3, stride=2), nn.ReLU()),  # 12 → 5
        Stage(nn.Linear(8 * 5 * 5, 10), pre=nn.Flatten()),
    ])


def total_loss(recipe, penalties, model, x, y, seed=123):
    torch.manual_seed(seed)
    model.train()
    loss, _ = recipe.loss(model, x, y)
    for pen in penalties:
        loss = loss + pen.loss(model, x, y)[0]
    return loss.item()


@pytest.mark.parametrize("case", list(CASES))
def test_recipe_trains_on_fashion_mnist(fmnist, case):
    make_model, name, opts, pen_specs = CASES[case]
    x, y = fmnist
    torch.manual_seed(0)
    model = make_model()
    recipe = build_recipe(name, **RECIPES.validate(name, opts, "recipe"))
    penalties = [build_penalty(p, **PENALTIES.validate(p, o, "penalty")) for p, o in pen_specs]
    xb, yb = as_float_images(x[:128]), y[:128]
    before = total_loss(recipe, penalties, model, xb, yb)
    trainer = Trainer(model, recipe, penalties, OptimConfig(optimizer="adam", lr=3e-3, schedule="constant"),
                      epochs=3, batch_size=64, seed=0)
    for _ in range(3):
        stats = trainer.train_epoch(x, y)
    after = total_loss(recipe, penalties, model, xb, yb)
    assert np.isfinite(stats["loss"])
    if pen_specs:
        assert any(k.startswith("contractive") for k in stats)
    print(f"{case}: loss {before:.4f} → {after:.4f}")
    assert after < 0.85 * before, f"{case}: loss {before:.4f} → {after:.4f}"


# ----------------------------------------------------------------------------------- with the model zoo, if present
def test_recipes_run_on_zoo_models():
    """Contract check against advsweep.models (FeedForward stages, first_layer, stacked front-ends); skipped without."""
    from advsweep.models import MODELS, build_model
    if not all(n in MODELS for n in ("mlp", "smallcnn", "stacked", "dae")):
        pytest.skip("model zoo not available")
    torch.manual_seed(0)
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    mlp = build_model("mlp", 1, 10, 28, hidden=[16, 16])
    assert build_penalty("contractive").layer_norms(mlp, x)[2] == ["closed_form", "closed_form", "exact"]
    cnn = build_model("smallcnn", 1, 10, 28)
    from advsweep.training.yopo import find_layer_one
    assert find_layer_one(cnn) is cnn.hidden_layers()[0]
    for model in (mlp, cnn):
        for name, opts in [("pgd_at", {"steps": 1}), ("trades", {"steps": 1}), ("yopo", {"K": 1, "inner": 1}),
                           ("gaussian_noise", {"variant": "L*"}), ("contractive", {})]:
            model.train().zero_grad(set_to_none=True)
            loss, _ = build_recipe(name, **opts).loss(model, x, y)
            loss.backward()
            assert torch.isfinite(loss) and any(p.grad is not None for p in model.parameters())
    stacked = build_model("stacked", 1, 10, 28, frontend={"name": "dae", "hidden": [32]},
                          classifier={"name": "mlp", "hidden": [16]})
    for name in ("dae", "ae_adv"):
        stacked.train().zero_grad(set_to_none=True)
        recipe = build_recipe(name, steps=1) if name == "ae_adv" else build_recipe(name)
        loss, _ = recipe.loss(stacked, x, y)
        loss.backward()
        assert all(p.grad is None for p in stacked.classifier.parameters())
