"""Checkpoints in the layout the engine loads (state.pt + meta.json), for engine tests."""
import json
from pathlib import Path

import torch

from advsweep.evaluation.checkpoints import CHECKPOINT_META, CHECKPOINT_STATE
from advsweep.models import build_model


def make_checkpoint(d: Path, seed: int, name="resnet", train=None, **opts) -> str:
    torch.manual_seed(seed)
    model = build_model(name, 1, 10, 28, **opts)
    if train is not None:  # a few seconds of Adam on real images, so that attacks have something to break
        xtr, ytr = train
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(2):
            for i in range(0, len(xtr), 50):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(xtr[i:i + 50]), ytr[i:i + 50]).backward()
                opt.step()
    d.mkdir(parents=True)
    torch.save({"model": model.state_dict(), "epoch": 1}, d / CHECKPOINT_STATE)
    (d / CHECKPOINT_META).write_text(json.dumps({"model": {"name": name, **opts}, "channels": 1, "num_classes": 10,
                                                 "image_size": 28}))
    return str(d)


def two_trial_job(root: Path, n: int, first_index: int):
    """An engine job on two tiny trials (a ResNet and an Euler ODENet) and n random 28×28 images:
    (trials, x, y, dataset indices)."""
    import numpy as np

    from advsweep.evaluation.engine import TrialRef

    trials = [TrialRef("t0", make_checkpoint(root / "c0", 0, width=8, blocks=1)),
              TrialRef("t1", make_checkpoint(root / "c1", 1, "odenet", width=8, solver="euler"))]
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(n, 1, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, size=n).astype(np.int64)
    return trials, x, y, np.arange(first_index, first_index + n)
