"""The torch device of a trial or an evaluation worker, from the GPUs Ray gave it."""
from __future__ import annotations

import torch


def worker_device(gpus: float, what: str) -> torch.device:
    """`cuda` when the worker was given GPUs (`resources.gpu` > 0), else `cpu`. A GPU that was asked for but that
    torch cannot see is an error, not a silent run on the CPU (a CPU-only torch build, or CUDA_VISIBLE_DEVICES empty).

    On CUDA, convolutions and matrix products run in full fp32 (PyTorch lets cuDNN use TF32 by default, which moves
    logits by ~1e-3 relative: the size of the minimal-distortion attacks' margin tolerance) and cuDNN picks
    deterministic algorithms, so a unit rerun after a failure writes the rows of an uninterrupted run, as on a CPU."""
    if gpus <= 0:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise RuntimeError(f"{what} was given {gpus:g} GPU by Ray, but torch {torch.__version__} ({build}) sees no "
                           "GPU: install a CUDA build of torch on the GPU nodes, or set resources.gpu: 0")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    return torch.device("cuda")
