"""Units of evaluation work: (trial, attack configuration, ε values, shard). One unit → one deterministic Parquet file
per ε.

An ε-bounded attack gets one unit per ε. An attack whose result at every ε follows from one run (a minimal-distortion
attack, or `boundary` without early stopping: the adversarial counts at ε iff its distance ≤ ε) gets one unit per
shard covering all its ε, and the ε rows are derived by thresholding the distance found.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from advsweep.attacks import ATTACKS


@dataclass(frozen=True)
class AttackConfig:
    label: str
    name: str
    eps: tuple[float, ...]
    options: dict[str, Any] = field(default_factory=dict, hash=False)
    source_trial: str | int | None = None  # transfer attacks: the trial whose model crafts the examples
    trials: tuple[str | int, ...] | None = None  # run only on these trials (ids or indices in the spec's list)

    @property
    def norm(self) -> str:
        return ATTACKS.get(self.name).norm

    @property
    def eps_from_distance(self) -> bool:
        """One run gives every ε row (thresholding the distance found)."""
        return ATTACKS.get(self.name).derives_eps(self.options)

    def runs_on(self, trial_id: str, trial_index: int | None) -> bool:
        return self.trials is None or trial_id in self.trials or (trial_index is not None and trial_index in self.trials)

    def params_json(self) -> str:
        extra = {"source_trial": self.source_trial} if self.source_trial is not None else {}
        return json.dumps({**self.options, **extra}, sort_keys=True, default=str)


@dataclass(frozen=True)
class Unit:
    trial_id: str
    attack: AttackConfig
    eps: tuple[float, ...]  # one ε, or all of a derived attack's ε
    shard: int
    # The trial as seeds know it: its position in the spec's trial list ("#3"), which a rerun of the same spec
    # keeps, while Tune's trial id is random per run. Falls back to the trial id when no position is known.
    seed_key: str = ""

    @property
    def derived(self) -> bool:
        return self.attack.eps_from_distance

    def seed(self, base_seed: int) -> int:
        """Stable per-unit seed: the same job always draws the same random starts, whatever ran before it, and a rerun
        of the same spec draws the same ones again. A derived unit's seed does not depend on ε (one run serves them
        all)."""
        eps = "derived" if self.derived else repr(self.eps[0])
        key = f"{base_seed}|{self.seed_key or self.trial_id}|{self.attack.label}|{self.attack.params_json()}|{eps}|{self.shard}"
        return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") >> 1


def shard_bounds(n: int, shard_size: int) -> list[tuple[int, int]]:
    return [(s, min(s + shard_size, n)) for s in range(0, n, shard_size)]


def make_units(trial_id: str, attacks: list[AttackConfig], n: int, shard_size: int,
               trial_index: int | None = None) -> list[Unit]:
    shards = range(len(shard_bounds(n, shard_size)))
    out = []
    for a in attacks:
        if not a.runs_on(trial_id, trial_index):
            continue
        if a.eps_from_distance:
            # A minimal-distortion attack always keeps its unbounded result (ε = 0 rows: the adversarial as found),
            # the raw material of accuracy-vs-ε curves; the listed ε > 0 are thresholds on its distance.
            groups = [tuple(sorted({*a.eps, 0.0})) if a.norm == "none" else tuple(a.eps)]
        else:
            groups = [(e,) for e in a.eps]
        key = f"#{trial_index}" if trial_index is not None else trial_id
        out += [Unit(trial_id, a, g, s, key) for g in groups for s in shards]
    return out
