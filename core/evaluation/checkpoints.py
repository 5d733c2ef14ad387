"""Load a trial's model from its checkpoint directory (state.pt + meta.json), safely (weights_only=True)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from advsweep.registry import SpecError

CHECKPOINT_STATE = "state.pt"
CHECKPOINT_META = "meta.json"


def load_model(checkpoint_dir: str | Path, device: torch.device | str = "cpu") -> torch.nn.Module:
    from advsweep.models import build_model
    from advsweep.storage.location import local_copy

    d = local_copy(checkpoint_dir)  # a checkpoint on remote storage (s3://…) is downloaded once per process
    state_file, meta_file = d / CHECKPOINT_STATE, d / CHECKPOINT_META
    for f in (state_file, meta_file):
        if not f.is_file():
            raise SpecError(str(f), "checkpoint file missing")
    try:
        meta = json.loads(meta_file.read_text())
        state = torch.load(state_file, map_location=device, weights_only=True)
        spec = dict(meta["model"])
        model = build_model(spec.pop("name"), meta["channels"], meta["num_classes"], meta["image_size"], **spec)
        model.load_state_dict(state["model"])
    except SpecError:
        raise
    except Exception as exc:  # truncated/corrupt pickle, wrong keys, bad JSON
        raise SpecError(str(d), f"corrupt checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    return model.to(device).eval()
