"""A sweep directory's manifest (sweep.json): identity, schema version, data subset, tracking ids, and its state.

States: `training` → `trained` (trials and epochs tables written) → `evaluating` → `finished`; or `interrupted`
(Ctrl-C; trials marked interrupted) — and a directory whose driver was killed keeps the state it had. Everything
except `finished` is resumable with `advsweep resume DIR` (or `advsweep run SPEC --out DIR --resume`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from advsweep.registry import SpecError
from advsweep.storage import location as L

MANIFEST = "sweep.json"


def read_manifest(out_dir: str | Path) -> dict[str, Any]:
    f = L.join(out_dir, MANIFEST)
    try:
        text = L.read_bytes(f)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise SpecError(str(out_dir), f"not a sweep directory (no {MANIFEST})") from None
    except OSError as exc:  # a remote store that refuses (unknown bucket, no credentials)
        raise SpecError(str(out_dir), f"cannot read {MANIFEST} ({type(exc).__name__}: "
                                      f"{str(exc).splitlines()[0][:200]})") from None
    try:
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SpecError(str(f), f"unreadable manifest ({exc})") from None


def write_manifest(out_dir: str | Path, manifest: dict[str, Any]) -> None:
    """Whole or not at all: a temp name and a rename locally, one object remotely (location.write_bytes)."""
    L.write_bytes(L.join(out_dir, MANIFEST), json.dumps(manifest, indent=2, default=str).encode())


def require_results(out_dir: str | Path) -> dict[str, Any]:
    """The manifest of a sweep whose results are complete; else one line pointing at resume (readers call this)."""
    manifest = read_manifest(out_dir)
    if not any(f.endswith(".parquet") for f in L.list_files(L.join(out_dir, "trials"))):
        raise SpecError(str(out_dir), f"has no trials table (sweep state: {manifest.get('status')}); "
                                      f"finish it with: advsweep resume {out_dir}")
    if manifest.get("status") != "finished":
        raise SpecError(str(out_dir), f"did not finish (sweep state: {manifest.get('status')}); "
                                      f"finish it with: advsweep resume {out_dir}")
    return manifest
