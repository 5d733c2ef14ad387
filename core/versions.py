"""Versions logged with every run (a result without them cannot be reproduced or compared)."""
from __future__ import annotations

import platform
from functools import lru_cache
from importlib import metadata

PACKAGES = ("torch", "torchdiffeq", "torchattacks", "ray", "mlflow", "pyarrow", "numpy", "advsweep")


@lru_cache(maxsize=1)
def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out
