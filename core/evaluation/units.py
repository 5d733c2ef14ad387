"""Units of evaluation work: (trial, attack configuration, ε, shard). One unit → one deterministic Parquet file."""
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

    @property
    def norm(self) -> str:
        return ATTACKS.get(self.name).norm

    def params_json(self) -> str:
        extra = {"source_trial": self.source_trial} if self.source_trial is not None else {}
        return json.dumps({**self.options, **extra}, sort_keys=True, default=str)


@dataclass(frozen=True)
class Unit:
    trial_id: str
    attack: AttackConfig
    eps: float
    shard: int

    def seed(self, base_seed: int) -> int:
        """Stable per-unit seed: the same job always draws the same random starts, whatever ran before it."""
        key = f"{base_seed}|{self.trial_id}|{self.attack.label}|{self.attack.params_json()}|{self.eps!r}|{self.shard}"
        return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") >> 1


def shard_bounds(n: int, shard_size: int) -> list[tuple[int, int]]:
    return [(s, min(s + shard_size, n)) for s in range(0, n, shard_size)]


def make_units(trial_id: str, attacks: list[AttackConfig], n: int, shard_size: int) -> list[Unit]:
    shards = range(len(shard_bounds(n, shard_size)))
    return [Unit(trial_id, a, e, s) for a in attacks for e in a.eps for s in shards]
