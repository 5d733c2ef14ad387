"""A small real sweep directory for the analysis tests, built the honest way: small models trained on real
Fashion-MNIST, attacked by the real attacks through the engine's own unit code (advsweep.evaluation.shard.run_unit),
examples written to the real hive layout, the robustness table by the engine's aggregation, the trials table by
advsweep.storage.parquet.trials_table.

Models with known gradient-masking answers:
  natural     small ResNet (the zoo's `resnet`, width 16, 2 blocks) trained naturally        → ok
  pgd_at      the same ResNet trained with PGD-ℓ∞ (ε = 0.1, 5 steps) adversarial training     → ok
  quantised   an MLP behind an input quantiser round(3x)/3; its derivative is 0 almost everywhere, so
              every input gradient is exactly 0 (gradient masking by construction)              → masked
  collapsed   a trained MLP whose logits are 1e-3 × themselves + a fixed bias: one class for every input, small
              but non-zero gradients                                                             → flagged
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from advsweep.attacks import build_attack
from advsweep.data import load_dataset, stratified_subset
from advsweep.evaluation.aggregate import robustness_table
from advsweep.evaluation.shard import predict_logits, run_unit
from advsweep.evaluation.stats import wilson_interval
from advsweep.evaluation.units import AttackConfig, make_units
from advsweep.models import build_model
from advsweep.storage.parquet import example_file, read_examples, trial_rows, trials_table, write_atomic
from advsweep.storage.tracking import stored_uri

SWEEP_ID = "analysis-test"
ATTACKS = [
    AttackConfig("fgsm", "fgsm", (0.1,)),
    AttackConfig("pgd", "pgd", (0.1, 0.5), {"steps": 10}),
    AttackConfig("pgd40", "pgd", (0.1,), {"steps": 40}),
    AttackConfig("square", "square", (0.1,), {"n_queries": 150}),
    AttackConfig("deepfool", "deepfool", (0.0,), {"steps": 20, "candidates": 4}),
]


class Quantise(nn.Module):
    def forward(self, x):
        return torch.round(x * 3) / 3


class Collapse(nn.Module):
    def __init__(self, model: nn.Module, cls: int):
        super().__init__()
        self.model = model
        bias = torch.zeros(10)
        bias[cls] = 50.0
        self.register_buffer("bias", bias)

    def forward(self, x):
        return 1e-3 * self.model(x) + self.bias


def small_resnet() -> nn.Module:
    torch.manual_seed(0)
    return build_model("resnet", in_channels=1, num_classes=10, image_size=28, width=16, blocks=2)


MODEL_NAMES = {"natural": "resnet", "pgd_at": "resnet", "quantised": "mlp", "collapsed": "mlp"}


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, adv_eps: float = 0.0, seed: int = 0):
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for epoch in range(epochs):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 100):
            xb, yb = x[perm[i:i + 100]], y[perm[i:i + 100]]
            if adv_eps:
                model.eval()
                xb = build_attack("pgd", model, adv_eps, seed + epoch * 1000 + i, steps=5)(xb, yb).x_adv
            model.train()
            opt.zero_grad()
            nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()
    return model.eval()


def models(data, n_train: int) -> dict[str, nn.Module]:
    idx = stratified_subset(data.y_train, n_train, 0)
    x = torch.from_numpy(data.x_train[idx]).float() / 255
    y = torch.from_numpy(data.y_train[idx])
    natural = train(small_resnet(), x, y, 4)
    pgd_at = train(small_resnet(), x, y, 4, adv_eps=0.1)
    quant = train(nn.Sequential(Quantise(), mlp()), x, y, 4)
    collapsed = Collapse(train(mlp(), x, y, 2, seed=1), 3).eval()
    return {"natural": natural, "pgd_at": pgd_at, "quantised": quant, "collapsed": collapsed}


def build_sweep(out: Path, data_dir, n_train: int = 3000, n_test: int = 200, mlflow_uri: str | None = None,
                attacks: list[AttackConfig] = ATTACKS) -> Path:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small models: a second thread only adds contention on a busy machine
    try:
        return _build(out, data_dir, n_train, n_test, mlflow_uri, attacks)
    finally:
        torch.set_num_threads(threads)


def _build(out, data_dir, n_train, n_test, mlflow_uri, attacks) -> Path:
    data = load_dataset("fashion-mnist", str(data_dir), download=False)
    test_idx = np.sort(stratified_subset(data.y_test, n_test, 1))
    x = torch.from_numpy(data.x_test[test_idx]).float() / 255
    y = torch.from_numpy(data.y_test[test_idx])
    run_ids = {}
    out.mkdir(parents=True, exist_ok=True)
    if mlflow_uri:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(mlflow_uri)  # artifacts beside the sweep, never in the working directory
        exp = client.create_experiment(f"advsweep/{SWEEP_ID}", artifact_location=(out / "mlartifacts").as_uri())
        run_ids = {name: client.create_run(exp, run_name=name).info.run_id for name in
                   ("natural", "pgd_at", "quantised", "collapsed")}
    rows = []
    for i, (name, model) in enumerate(models(data, n_train).items()):
        trial_id = f"t{i}_{name}"
        logits = predict_logits(model, x, 256, torch.device("cpu"))
        for unit in make_units(trial_id, attacks, n_test, n_test):
            for eps, table in run_unit(model, unit, x, y, test_idx, logits, SWEEP_ID, 0, 256, torch.device("cpu")):
                write_atomic(table, example_file(out, trial_id, unit.attack.label, eps, unit.shard), SWEEP_ID)
        k = int((logits.argmax(1) == y).sum())
        lo, hi = wilson_interval(k, n_test)
        rows.append({"schema_version": "1", "sweep_id": SWEEP_ID, "trial_id": trial_id, "trial_index": i,
                     "family": 0, "model_name": MODEL_NAMES[name], "status": "completed", "epochs_completed": 4,
                     "epochs_planned": 4, "n_test": n_test, "natural_acc": k / n_test, "natural_ci_low": lo,
                     "natural_ci_high": hi, "nfe_forward": 0.0, "mlflow_run_id": run_ids.get(name),
                     "config": {"model.name": MODEL_NAMES[name], "training.recipe.name": name}})
    write_atomic(trials_table(rows), out / "trials" / "part-0.parquet", SWEEP_ID)
    write_atomic(robustness_table(read_examples(out), None, trial_rows(out)), out / "robustness" / "part-0.parquet",
                 SWEEP_ID)
    stored = stored_uri(mlflow_uri, out) if mlflow_uri else None  # as the driver stores it ("embedded:…" for its own)
    (out / "sweep.json").write_text(json.dumps({"sweep_id": SWEEP_ID, "name": "analysis-test", "mlflow_uri": stored,
                                                "data": {"dataset": "fashion-mnist", "n_test": n_test}}))
    (out / "spec.yaml").write_text("name: analysis-test\n")
    return out
