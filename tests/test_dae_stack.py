"""`dae_stack`: the front-end gets only the reconstruction gradient, the classifier only the clean CE gradient."""
import torch
import torch.nn.functional as F

from advsweep.models import build_model
from advsweep.training import build_recipe
from advsweep.training.trainer import OptimConfig, Trainer


def _stack():
    torch.manual_seed(0)
    return build_model("stacked", 1, 10, 28, frontend={"name": "dae", "hidden": [64]},
                       classifier={"name": "mlp", "hidden": [32]})


def test_losses_touch_disjoint_parameters():
    model = _stack()
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    recipe = build_recipe("dae_stack", sigma=0.1)
    loss, stats = recipe.loss(model, x, y)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    # The classifier's gradient equals that of CE on clean inputs alone.
    model.zero_grad()
    F.cross_entropy(model.classifier(x), y).backward()
    for n, p in model.classifier.named_parameters():
        assert torch.allclose(grads[f"classifier.{n}"], p.grad, atol=1e-6)
    assert all(grads[f"frontend.{n}"].abs().sum() > 0 for n, _ in model.frontend.named_parameters())
    assert {"recon", "clean_ce", "classifier_acc", "train_acc"} <= set(stats)


def test_trains_both_parts_on_real_data(fashion_available):
    from advsweep.data import load_dataset

    ds = load_dataset("fashion-mnist")
    x = torch.tensor(ds.x_train[:512]).float() / 255
    y = torch.tensor(ds.y_train[:512]).long()
    model = _stack()
    recipe = build_recipe("dae_stack", sigma=0.1)
    before = recipe.loss(model, x[:64], y[:64])[1]
    trainer = Trainer(model, recipe, [], OptimConfig(optimizer="adam", lr=3e-3, schedule="constant"), 5, 32)
    for _ in range(5):
        trainer.train_epoch(x, y)
    after = recipe.loss(model, x[:64], y[:64])[1]
    assert after["recon"] < 0.8 * before["recon"] and after["clean_ce"] < 0.8 * before["clean_ce"]
