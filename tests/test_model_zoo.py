"""Model zoo of the three papers: SONet / SOBlock / ResNet10, torchdiffeq MNIST ODENet / ResNet, SmallCNN, MLP,
ConvNet, AE / DAE / blur front-ends and `stacked`. Small widths and images keep the file fast on 2 CPU cores;
parameter counts need no forward pass and use the papers' sizes."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from advsweep.models import MODELS, build_model, count_parameters, has_ode, nfe, reset_nfe
from advsweep.models.layers import find_first_layer
from advsweep.models.sonet import SOBlock, SOFunc
from advsweep.models.stacked import validate_stacked
from advsweep.registry import SpecError

ZOO = ["sonet", "soblock", "resnet10", "odenet_mnist", "resnet6_mnist", "smallcnn", "mlp", "convnet", "ae", "dae",
       "blur", "stacked"]
FRONTENDS = {"ae", "dae", "blur"}


def make(name: str, in_channels: int = 1, image_size: int = 28, num_classes: int = 10, **options) -> nn.Module:
    """Build through the registry's validation, as a spec would."""
    return build_model(name, in_channels, num_classes, image_size, **MODELS.validate(name, options, "model"))


# ---------------------------------------------------------------------------------------------------------------
# Parameter counts, pinned. All agree with papers.md §1, whose numbers were derived from the official code; the
# arithmetic from the layer definitions (papers.md §2.2–2.3, §3.2; TRADES small_cnn.py):
#  SONet block in→out: kernel out·in·k² (k = 3, or 4 when strided) + 4 GroupNorms (2 on y, 2 on z) = 4·(in+out)
#    affine params; no biases by default. C = 32: stem 3→32: 864 + 140 = 1,004; layer1 2×(9,216 + 256) = 18,944;
#    layer2 (32,768 + 384) + (36,864 + 512) = 70,528; layer3 (131,072 + 768) + (147,456 + 1,024) = 280,320;
#    layer4 (524,288 + 1,536) + (589,824 + 2,048) = 1,117,696; ODE head W 256·10 + bias (256 + 10) = 2,826;
#    total 1,491,318.  C = 64 by the same formula: 5,944,022.
#  ResNet10 C = 32 (BasicBlocks with BN, nb [1,1,1,1]): stem conv 864 + BN 64 = 928; layer1 18,560; layer2 57,728
#    (incl. 1×1 shortcut + BN); layer3 230,144; layer4 919,040; Linear 2,570; total 1,228,970 (C = 64: 4,903,242).
#  SOBlock = ResNet10 − plain stem (928) + ODE stem (1,004) = +76: 1,229,046; C = 64: −(1,728+128) + (1,728+268)
#    = +140: 4,903,382.
#  odenet_mnist / resnet6_mnist: 208,266 / 576,778 (same modules as `odenet` / `resnet` width 64, blocks 6).
#  SmallCNN 1×28×28: 320 + 9,248 + 18,496 + 36,928 + 205,000 + 40,200 + 2,010 = 312,202.
#  MLP 784-100-100-10: 89,610; 784-200-200-10: 199,210. ConvNet (defaults): 832 + 51,264 + 31,370 = 83,466.
#  AE 784-256-128-256-784: 200,960 + 32,896 + 33,024 + 201,488 = 468,368. Blur: 0 (the kernel is a buffer).
PARAMS = [
    ("sonet", 3, 32, {"width": 32}, 1_491_318),
    ("sonet", 3, 32, {"width": 64}, 5_944_022),
    ("resnet10", 3, 32, {"width": 32}, 1_228_970),
    ("resnet10", 3, 32, {"width": 64}, 4_903_242),
    ("soblock", 3, 32, {"width": 32}, 1_229_046),
    ("soblock", 3, 32, {"width": 64}, 4_903_382),
    ("odenet_mnist", 1, 28, {}, 208_266),
    ("resnet6_mnist", 1, 28, {}, 576_778),
    ("smallcnn", 1, 28, {}, 312_202),
    ("mlp", 1, 28, {"hidden": [100, 100]}, 89_610),
    ("mlp", 1, 28, {"hidden": [200, 200]}, 199_210),
    ("convnet", 1, 28, {}, 83_466),
    ("ae", 1, 28, {"hidden": [256, 128]}, 468_368),
    ("dae", 1, 28, {"hidden": [256, 128]}, 468_368),
    ("blur", 1, 28, {"kernel_size": 5}, 0),
    ("stacked", 1, 28, {"frontend": {"name": "dae", "hidden": [256, 128]}, "classifier": {"name": "mlp"}},
     468_368 + 89_610),
]


@pytest.mark.parametrize("name,c,s,opts,expected", PARAMS, ids=[f"{p[0]}-{p[3]}" for p in PARAMS])
def test_parameter_counts(name, c, s, opts, expected):
    assert count_parameters(make(name, c, s, **opts)) == expected


def test_zoo_registered():
    assert set(ZOO) <= set(MODELS.names())
    # defaults follow the papers
    assert MODELS.validate("sonet", {}, "m") | {} == {
        "width": 64, "blocks": [2, 2, 2, 2], "gamma": 0.0, "bias": False, "solver": "dopri5", "rtol": 0.1,
        "atol": 0.1, "step_size": None, "T": 1.0, "adjoint": False, "max_num_steps": 1000}
    assert MODELS.validate("soblock", {}, "m")["blocks"] == [1, 1, 1, 1]
    assert MODELS.validate("odenet_mnist", {}, "m")["rtol"] == 1e-3


# ---------------------------------------------------------------------------------------------------------------
# The stabilised block


def _linear_func(in_planes, planes, stride, gamma, bias=True):
    """SOFunc with its GroupNorms and LeakyReLU replaced by identities (the test's own construction), float64."""
    torch.manual_seed(0)
    f = SOFunc(in_planes, planes, stride, gamma=gamma, bias=bias).double()
    for attr in ("norm1_1", "norm1_2", "norm2_1", "norm2_2", "act"):
        setattr(f, attr, nn.Identity())
    return f


@pytest.mark.parametrize("stride,size", [(1, 4), (2, 4), (2, 5)])
@pytest.mark.parametrize("gamma", [0.0, 0.3])
def test_sonet_block_linear_part_is_skew_minus_gamma(stride, size, gamma):
    in_planes, planes = 2, 3
    f = _linear_func(in_planes, planes, stride, gamma)
    ho = f.out_size(size, size)
    ny, nz = planes * ho[0] * ho[1], in_planes * size * size

    def flat_dynamics(v):
        y = v[:ny].view(1, planes, *ho)
        z = v[ny:].view(1, in_planes, size, size)
        dy, dz = f(torch.tensor(0.0), (y, z))
        assert dz.shape == z.shape and dy.shape == y.shape
        return torch.cat([dy.flatten(), dz.flatten()])

    v = torch.randn(ny + nz, dtype=torch.float64)
    J = torch.autograd.functional.jacobian(flat_dynamics, v, vectorize=True)
    eye = torch.eye(ny + nz, dtype=torch.float64)
    torch.testing.assert_close(J + J.T, -2 * gamma * eye, atol=1e-12, rtol=0)
    # ... and the off-diagonal block is really the kernel (not zero): dy/dz = K.
    assert J[:ny, ny:].abs().max() > 0.05


@pytest.mark.parametrize("stride,size", [(1, 5), (2, 8), (2, 7)])
def test_transposed_conv_is_exact_adjoint(stride, size):
    torch.manual_seed(1)
    f = SOFunc(3, 4, stride).double()
    z = torch.randn(2, 3, size, size, dtype=torch.float64)
    Kz = f.conv(z)
    y = torch.randn_like(Kz)
    KTy = f.conv_transpose(y, (size, size))
    assert KTy.shape == z.shape
    torch.testing.assert_close((Kz * y).sum(), (z * KTy).sum(), atol=1e-10, rtol=1e-12)


def test_sonet_initial_state_extend():
    x = torch.arange(3 * 4 * 4, dtype=torch.float32).view(1, 3, 4, 4)
    y0 = SOBlock(3, 8, stride=1).extend(x)
    assert torch.equal(y0, x[:, [0, 1, 2, 0, 1, 2, 0, 1]])
    y0 = SOBlock(3, 4, stride=2).extend(x)  # nearest downsampling (even rows/cols), then tiling
    assert torch.equal(y0, x[:, [0, 1, 2, 0]][:, :, ::2, ::2])


def test_sonet_head_starts_at_point_one_and_zero_time_is_identity():
    torch.manual_seed(0)
    m = make("sonet", 1, 8, width=2, blocks=[1, 0, 0, 0], solver="euler", T=1e-9)
    m.eval()
    out = m(torch.rand(2, 1, 8, 8))
    torch.testing.assert_close(out, torch.full((2, 10), 0.1), atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------------------------
# Shapes, logits, NFE, first layer for every model

SMALL = {
    "sonet": {"width": 2, "solver": "euler"},
    "soblock": {"width": 4, "solver": "euler"},
    "resnet10": {"width": 4},
    "odenet_mnist": {"width": 8, "solver": "euler"},
    "resnet6_mnist": {"width": 8},
    "smallcnn": {},
    "mlp": {"hidden": [16, 16], "activation": "tanh"},
    "convnet": {"channels": [4, 8], "hidden": [16]},
    "ae": {"hidden": [32]},
    "dae": {"hidden": [8, 4], "kind": "conv"},
    "blur": {"kernel_size": 3, "sigma": 0.8},
    "stacked": {"frontend": {"name": "blur"}, "classifier": {"name": "convnet", "channels": [4]}},
}
# Forward NFE with one Euler step per ODE block (step_size None = T): SONet = stem + 8 blocks + head.
EULER_NFE = {"sonet": 10, "soblock": 1, "odenet_mnist": 1}


@pytest.mark.parametrize("c,s", [(1, 28), (3, 32)])
@pytest.mark.parametrize("name", ZOO)
def test_shapes_logits_nfe_first_layer(name, c, s):
    torch.manual_seed(0)
    model = make(name, c, s, **SMALL[name])
    model.eval()
    if name == "smallcnn":  # TRADES zero-initialises the last layer, which would zero the input gradient
        last = model.hidden_layers()[-1].linear
        assert not last.weight.any() and not last.bias.any()
        nn.init.normal_(last.weight)
    x = torch.rand(2, c, s, s, requires_grad=True)
    seen = []
    hook = find_first_layer(model).register_forward_hook(lambda m, inp, out: seen.append(inp[0]))
    reset_nfe(model)
    out = model(x)
    hook.remove()
    if name in FRONTENDS:
        assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    else:
        assert out.shape == (2, 10)
    assert torch.isfinite(out).all()
    # the first layer sees the input itself (flattened for dense layers)
    assert torch.equal(seen[0].detach().flatten(1), x.detach().flatten(1))
    assert hasattr(model, "first_layer")
    out.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    counts = nfe(model)
    if name in EULER_NFE:
        assert counts == {"forward": EULER_NFE[name], "backward": EULER_NFE[name]}
    else:
        assert counts == {"forward": 0, "backward": 0} and not has_ode(model)


@pytest.mark.parametrize("name,opts", [
    ("sonet", {"width": 2, "blocks": [1, 1, 0, 0]}),  # stem + 2 blocks + head: 4 adaptive solves on tuple states
    ("soblock", {"width": 4}),
    ("odenet_mnist", {"width": 8}),
    ("soblock", {"width": 4, "adjoint": True}),
])
def test_adaptive_solver_nfe(name, opts):
    torch.manual_seed(0)
    model = make(name, 1, 12, **opts)
    x = torch.rand(2, 1, 12, 12)
    out = model(x)
    counts = nfe(model)
    n_blocks = 4 if name == "sonet" else 1
    assert counts["forward"] >= 6 * n_blocks and counts["backward"] == 0  # dopri5: ≥ 6 stages + first eval
    out.sum().backward()
    assert nfe(model)["backward"] > 0
    reset_nfe(model)
    assert nfe(model) == {"forward": 0, "backward": 0}


def test_odenet_mnist_one_euler_step_is_a_residual_step():
    torch.manual_seed(0)
    model = make("odenet_mnist", 1, 28, width=16, solver="euler")
    stem, block, head = model
    assert block.step_size == 1.0
    x = torch.rand(3, 1, 28, 28)
    h = stem(x)
    f = block.dynamics.func
    expected = head(h + f(torch.tensor(0.0), h))
    torch.testing.assert_close(model(x), expected, atol=1e-6, rtol=1e-5)
    # two half steps are two residual steps with the time channel at 0 and 0.5
    model2 = make("odenet_mnist", 1, 28, width=16, solver="euler", step_size=0.5)
    model2.load_state_dict(model.state_dict())
    h1 = h + 0.5 * f(torch.tensor(0.0), h)
    h2 = h1 + 0.5 * f(torch.tensor(0.5), h1)
    reset_nfe(model2)
    torch.testing.assert_close(model2(x), head(h2), atol=1e-6, rtol=1e-5)
    assert nfe(model2)["forward"] == 2


def test_odenet_mnist_is_odenet():
    a, b = make("odenet_mnist", 1, 28), make("odenet", 1, 28)
    assert a.state_dict().keys() == b.state_dict().keys()
    a, b = make("resnet6_mnist", 1, 28), make("resnet", 1, 28)
    assert a.state_dict().keys() == b.state_dict().keys()


# ---------------------------------------------------------------------------------------------------------------
# Hidden layers of the feed-forward nets (Deep Contractive Network penalty)


@pytest.mark.parametrize("name,opts,n_layers", [
    ("mlp", {"hidden": [20, 10], "activation": "sigmoid"}, 3),
    ("convnet", {"channels": [4, 8], "hidden": [12]}, 4),
    ("smallcnn", {}, 7),
])
def test_forward_with_hiddens(name, opts, n_layers):
    torch.manual_seed(0)
    model = make(name, 1, 28, **opts).eval()
    x = torch.rand(2, 1, 28, 28)
    logits, hs = model.forward_with_hiddens(x)
    layers = model.hidden_layers()
    assert len(layers) == n_layers and len(hs) == n_layers + 1
    assert hs[0] is x and hs[-1] is logits
    torch.testing.assert_close(logits, model(x))
    for j, layer in enumerate(layers, start=1):
        torch.testing.assert_close(layer(hs[j - 1]), hs[j])
    assert model.first_layer is layers[0].linear
    assert [layer.act_name for layer in layers][-1] == "identity"


# ---------------------------------------------------------------------------------------------------------------
# Front-ends and `stacked`


def test_stacked_builds_and_exposes_parts():
    opts = validate_stacked({"frontend": {"name": "dae", "hidden": 64}, "classifier": {"name": "mlp", "hidden": [32]}})
    assert opts["frontend"] == {"name": "dae", "hidden": [64], "kind": "dense", "activation": "relu",
                                "noise_std": 0.1}
    assert opts["classifier"]["activation"] == "relu"
    model = build_model("stacked", 1, 10, 28, **opts)
    assert model.frontend.noise_std == 0.1 and model.frontend.is_frontend
    assert count_parameters(model) == count_parameters(model.frontend) + count_parameters(model.classifier)
    x = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(model(x), model.classifier(model.frontend(x)))
    assert model.first_layer is model.frontend.first_layer


@pytest.mark.parametrize("options,field,fragment", [
    ({"frontend": {"name": "dea"}, "classifier": {"name": "mlp"}}, "trials[0].model.frontend.name", "unknown model 'dea'"),
    ({"frontend": {"name": "mlp"}, "classifier": {"name": "mlp"}}, "trials[0].model.frontend.name", "not a front-end"),
    ({"frontend": {"name": "blur"}, "classifier": {"name": "ae"}}, "trials[0].model.classifier.name", "is a front-end"),
    ({"frontend": {"hidden": 3}, "classifier": {"name": "mlp"}}, "trials[0].model.frontend.name", "missing"),
    ({"frontend": {"name": "dae", "hidden": [0]}, "classifier": {"name": "mlp"}}, "trials[0].model.frontend.hidden.0",
     "greater than 0"),
    ({"frontend": {"name": "blur", "kernel_size": 4}, "classifier": {"name": "mlp"}},
     "trials[0].model.frontend.kernel_size", "odd"),
    ({"frontend": {"name": "blur"}, "classifier": {"name": "mlp", "hiden": [3]}}, "trials[0].model.classifier.hiden",
     "Extra inputs"),
    ({"frontend": {"name": "blur"}, "classifier": {"name": "stacked", "frontend": {"name": "x"},
                                                   "classifier": {"name": "mlp"}}},
     "trials[0].model.classifier.frontend.name", "unknown model 'x'"),
    ({"frontend": {"name": "blur"}}, "trials[0].model.classifier", "required"),
])
def test_stacked_nested_validation_errors(options, field, fragment):
    with pytest.raises(SpecError) as exc:
        validate_stacked(options, "trials[0].model")
    assert exc.value.field == field
    assert fragment in exc.value.message
    assert "\n" not in str(exc.value)


def test_stacked_build_without_validation_checks_too():
    with pytest.raises(SpecError) as exc:
        build_model("stacked", 1, 10, 28, frontend={"name": "nope"}, classifier={"name": "mlp"})
    assert exc.value.field == "model.frontend.name"


def test_zoo_option_validation():
    with pytest.raises(SpecError) as exc:
        MODELS.validate("sonet", {"blocks": [2, 2, 2]}, "model")
    assert exc.value.field == "model.blocks"
    with pytest.raises(SpecError) as exc:
        MODELS.validate("mlp", {"activation": "gelu"}, "model")
    assert exc.value.field == "model.activation"
    with pytest.raises(SpecError) as exc:
        MODELS.validate("soblock", {"solver": "adams"}, "model")  # gone from torchdiffeq
    assert exc.value.field == "model.solver"


def test_blur_is_a_normalised_gaussian():
    model = make("blur", 3, 16, kernel_size=5, sigma=1.0)
    w = model.weight
    assert w.shape == (3, 1, 5, 5) and not list(model.parameters())
    torch.testing.assert_close(w.sum(dim=(-1, -2)), torch.ones(3, 1))
    assert w[0, 0, 2, 2] == w.max() and torch.equal(w[0, 0], w[0, 0].T) and torch.equal(w[0, 0], w[0, 0].flip(0))
    x = torch.full((1, 3, 16, 16), 0.7)  # constant images are fixed points (reflect padding)
    torch.testing.assert_close(model(x), x)


# ---------------------------------------------------------------------------------------------------------------
# MaxPool2d: the strided-maximum forward where no gradient is recorded must give nn.MaxPool2d's output exactly.

@pytest.mark.parametrize("shape,k", [((64, 16, 28, 28), 2), ((3, 32, 27, 13), 2), ((160, 9, 9), 3), ((2, 8, 31, 30), 3)])
def test_maxpool_fast_forward_equals_torch(shape, k):
    from advsweep.models.layers import MaxPool2d

    gen = torch.Generator().manual_seed(0)
    x = torch.relu(torch.randn(*shape, generator=gen))
    x = torch.round(x * 4) / 4  # many ties, zeros (post-ReLU) and positive ones
    x.view(-1)[::997] = float("nan")
    x.view(-1)[5::1009] = float("-inf")
    fast, ref = MaxPool2d(k), nn.MaxPool2d(k)
    with torch.no_grad():
        assert fast._fast(x)  # the test is about the fast path: it must be taken here
        out = fast(x)
        expected = ref(x)
    assert out.shape == expected.shape
    assert torch.equal(out.isnan(), expected.isnan()) and out.isnan().any()
    assert torch.equal(torch.nan_to_num(out), torch.nan_to_num(expected))


def test_maxpool_keeps_torch_kernel_where_gradients_flow_or_windows_overlap():
    from advsweep.models.layers import MaxPool2d

    x = torch.rand(4, 16, 28, 28, requires_grad=True)
    assert not MaxPool2d(2)._fast(x)  # gradients recorded: torch's kernel and its backward
    with torch.no_grad():
        assert MaxPool2d(2)._fast(x)
        assert not MaxPool2d(3, stride=2)._fast(x) and not MaxPool2d(2, padding=1)._fast(x)
        assert not MaxPool2d(2, ceil_mode=True)._fast(x) and not MaxPool2d(2)._fast(x[:1, :1])  # small: slower
        assert torch.equal(MaxPool2d(3, stride=2)(x), nn.MaxPool2d(3, stride=2)(x))


@pytest.mark.parametrize("name", ["convnet", "smallcnn"])
def test_pooled_models_give_torch_pooling_logits_and_gradients(name):
    """The zoo's pooled models against copies with nn.MaxPool2d: equal logits without gradients, equal input
    gradients with them."""
    import copy

    from advsweep.models.layers import MaxPool2d

    torch.manual_seed(0)
    model = make(name).eval()
    plain = copy.deepcopy(model)
    swapped = 0
    for module in plain.modules():
        for child_name, child in module.named_children():
            if isinstance(child, MaxPool2d):
                setattr(module, child_name, nn.MaxPool2d(child.kernel_size, child.stride))
                swapped += 1
    assert swapped == 2
    x = torch.rand(32, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), plain(x))
    grads = []
    for m in (model, plain):
        xr = x.clone().requires_grad_(True)
        grads.append(torch.autograd.grad(m(xr).logsumexp(1).sum(), xr)[0])
    assert torch.equal(*grads)
