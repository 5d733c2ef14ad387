"""advsweep on a CUDA GPU: the attacks, a trial's resume and the engine's rows there.

Skipped where torch sees no GPU (CI has none). `benchmarks/device/gpu_check.sh` runs this file on a lent GPU
machine. `ADVSWEEP_TEST_DEVICE=cpu` runs the same checks on the CPU, to try them on a machine without a GPU.
"""
from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch

from advsweep.attacks import ATTACKS, build_attack
from advsweep.devices import worker_device
from advsweep.evaluation.checkpoints import load_model
from advsweep.evaluation.engine import TrialRef, evaluate
from advsweep.evaluation.units import AttackConfig
from advsweep.models import build_model
from advsweep.storage.parquet import read_examples
from advsweep.training import build_recipe
from advsweep.training.trainer import OptimConfig, Trainer
from checkpoints import make_checkpoint
from test_attacks import BOUNDED, train_test

DEVICE = os.environ.get("ADVSWEEP_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="torch sees no CUDA GPU")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small ResNet trained for a few seconds on the CPU (its checkpoint, the model, 64 test points)."""
    (xtr, ytr), (x, y) = train_test(2000, 64)
    ckpt = make_checkpoint(tmp_path_factory.mktemp("cuda") / "c", 0, width=8, blocks=1, train=(xtr, ytr))
    return ckpt, load_model(ckpt), x, y


@pytest.fixture(scope="module")
def device():
    return worker_device(1 if DEVICE == "cuda" else 0, "the test")


@pytest.mark.parametrize("name, options", BOUNDED, ids=[f"{n}-{i}" for i, (n, _) in enumerate(BOUNDED)])
def test_attack_on_the_device_stays_in_ball_is_reproducible_and_agrees_with_the_cpu(trained, device, name,
                                                                                     options):
    _, cpu_model, x, y = trained
    model = copy.deepcopy(cpu_model).to(device).eval()
    xd, yd = x.to(device), y.to(device)
    cls = ATTACKS.get(name)
    eps = {"linf": 0.1, "l2": 1.5}[cls.norm]
    opts = ATTACKS.validate(name, options, "a")
    res = build_attack(name, model, eps, 3, **opts)(xd, yd)
    assert res.x_adv.device.type == device.type and res.x_adv.shape == x.shape
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    delta = (res.x_adv - xd).flatten(1)
    size = delta.abs().amax(1) if cls.norm == "linf" else delta.norm(dim=1)
    assert (size <= eps * (1 + 1e-5) + 1e-6).all(), size.max()
    again = build_attack(name, model, eps, 3, **opts)(xd, yd)
    assert torch.equal(res.x_adv, again.x_adv), "same seed, same device: different points"
    # Against the CPU: rounding differs between the devices, so a trajectory may part ways on a point near a tie;
    # the robust flags of (almost) all points agree.
    on_cpu = build_attack(name, cpu_model, eps, 3, **opts)(x, y)
    with torch.no_grad():
        robust_dev = (model(res.x_adv).argmax(1).cpu() == y) & (model(xd).argmax(1).cpu() == y)
        robust_cpu = (cpu_model(on_cpu.x_adv).argmax(1) == y) & (cpu_model(x).argmax(1) == y)
    assert (robust_dev == robust_cpu).float().mean() >= 0.9, (robust_dev.sum(), robust_cpu.sum())


def test_trainer_resumes_on_the_device_as_if_uninterrupted(device, tmp_path):
    """Two epochs in one go == one epoch, a checkpoint, a fresh trainer that loads it, one more epoch (the
    data-order generator is a CPU one: loading a checkpoint onto a GPU trainer must keep it one)."""
    (xtr, ytr), _ = train_test(512, 1)

    def trainer():
        torch.manual_seed(0)
        model = build_model("resnet", 1, 10, 28, width=8, blocks=1).to(device)
        return Trainer(model, build_recipe("natural"), [], OptimConfig(lr=0.05), epochs=2, batch_size=64,
                       augment="crop_flip", seed=4, device=device)

    whole = trainer()
    whole.train_epoch(xtr, ytr)
    whole.train_epoch(xtr, ytr)
    first = trainer()
    first.train_epoch(xtr, ytr)
    torch.save(first.state_dict(), tmp_path / "state.pt")
    resumed = trainer()
    resumed.load(tmp_path / "state.pt")
    assert resumed.epoch == 1
    resumed.train_epoch(xtr, ytr)
    for (k, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
        assert b.device.type == device.type
        assert torch.equal(a, b), k


def test_engine_rows_on_the_device_are_complete_and_survive_a_killed_worker(ray_local, trained, device, tmp_path):
    """The engine's workers on the GPU (half a GPU each): one row per (attack, ε, example), a worker killed mid-unit
    changes nothing, and the rows' clean predictions are the model's on that device."""
    ckpt, _, x, y = trained
    xu8 = (x * 255).round().to(torch.uint8).numpy()
    trials = [TrialRef("t0", ckpt)]
    attacks = [AttackConfig("pgd", "pgd", (0.05, 0.1), {"steps": 10}),
               AttackConfig("aa", "autoattack", (0.1,), {"n_iter": 5, "n_queries": 50})]
    gpus = 0.5 if device.type == "cuda" else 0
    kw = dict(shard_size=32, batch_size=32, base_seed=1, num_workers=2, gpus_per_worker=gpus)
    index = np.arange(len(x))
    marker = tmp_path / "crashed"
    counts = evaluate(tmp_path / "a", "s", trials, attacks, xu8, y.numpy(), index, crash_marker=str(marker), **kw)
    assert marker.exists() and counts["resubmitted"] >= 1
    evaluate(tmp_path / "b", "s", trials, attacks, xu8, y.numpy(), index, **kw)

    def rows(d):
        df = read_examples(d).to_pandas().drop(columns=["wall_time_s", "node_id", "node_ip"])
        df["attack"] = df["attack"].astype(str)
        return df.sort_values(["attack", "eps", "example_index"]).reset_index(drop=True)

    a, b = rows(tmp_path / "a"), rows(tmp_path / "b")
    assert len(a) == 3 * len(x) and not a.duplicated(["attack", "eps", "example_index"]).any()
    assert a.equals(b), "a rerun after a killed worker wrote other rows"
    model = load_model(ckpt, device)
    with torch.no_grad():
        clean = model(torch.from_numpy(xu8).float().div(255).to(device)).argmax(1).cpu().numpy()
    first = a[(a["attack"] == "pgd") & (a["eps"] == 0.05)].sort_values("example_index")
    assert (first["clean_pred"].to_numpy() == clean).all()
