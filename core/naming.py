"""Readable trial names built from what varies within a sweep: `resnet`, `odenet·dopri5`, `resnet10·trades·beta=6`.

A config field *varies* when it takes at least two distinct values among the trials that set it (a field only some
models have, such as `solver`, is not a difference by itself) or, for tpe/nsga2 sweeps whose trials are sampled as
they run, when it is an axis of the search space. A varying field whose value follows from the fields already
named (a family's own learning rate once its model and recipe are named) is left out. Seeds are left out of the config name; when a configuration is
trained with several seeds the trial name adds `seed=N`. The same names label Parquet rows (`trial_name`,
`config_name`), MLflow runs, plots, `front.csv` and the CLI tables.
"""
from __future__ import annotations

import json
from typing import Any, Iterable

SEP = "·"
NAME_FIELDS = ("model.name", "training.recipe.name")  # shown first
BARE = ("name", "solver")  # string values of these fields are shown bare (`odenet·dopri5`); others as `key=value`


def _seedless(key: str) -> bool:
    return not (key == "seed" or key.endswith(".seed") or key.endswith("_seed"))


def _is_name(key: str) -> bool:
    return key.rsplit(".", 1)[-1] == "name"


def _rank(key: str) -> int:
    """Names first: the model, its components (`model.frontend.name`), the recipe; then the rest in spec order."""
    if key == NAME_FIELDS[0]:
        return 0
    if key.startswith("model.") and _is_name(key):
        return 1
    return 2 if _is_name(key) else 3


def varying_keys(flats: Iterable[dict[str, Any]], axes: Iterable[str] = ()) -> list[str]:
    """Flat config keys that vary among these configs, plus the given search axes; names first, then spec order."""
    flats = list(flats)
    order: list[str] = []
    values: dict[str, set[str]] = {}
    for f in flats:
        for k, v in f.items():
            if k not in values:
                order.append(k)
                values[k] = set()
            if v is not None:
                values[k].add(json.dumps(v, sort_keys=True, default=str))
    cands = sorted([k for k in order if len(values[k]) > 1 and _seedless(k)], key=_rank)
    # A key whose value follows from the keys already kept (a family's own epochs or lr once the family's model and
    # recipe are named) tells nothing new: keep a key only if it splits configurations the kept keys do not. A
    # component's name (a stacked model's front end) is always kept when it varies: it says what the trial is.
    keys: list[str] = []
    distinct = 1
    for k in cands:
        n = len({tuple(json.dumps(f.get(c), sort_keys=True, default=str) for c in keys + [k]) for f in flats})
        if n > distinct or _is_name(k):
            keys.append(k)
            distinct = n
    keys += [a for a in axes if a not in keys and _seedless(a)]
    return keys


def _labels(keys: list[str]) -> dict[str, str]:
    """Shortest dotted suffix of each key that no other varying key shares (`lr`, unless both `training.lr` and
    `model.lr` vary)."""
    out = {}
    for k in keys:
        parts = k.split(".")
        for n in range(1, len(parts) + 1):
            tail = ".".join(parts[-n:])
            if not any(o != k and (o == tail or o.endswith("." + tail)) for o in keys):
                break
        out[k] = tail
    return out


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, (list, dict)):
        return json.dumps(v, separators=(",", ":"), default=str)
    return str(v)


def config_name(flat: dict[str, Any], keys: list[str], fallback: str) -> str:
    """Name of one configuration from the values of the varying keys (strings bare, numbers as `key=value`)."""
    labels = _labels(keys)
    parts = []
    for k in keys:
        v = flat.get(k)
        if v is None:
            continue
        bare = isinstance(v, str) and k.rsplit(".", 1)[-1] in BARE
        parts.append(v if bare else f"{labels[k]}={_value(v)}")
    return SEP.join(parts) or fallback


def trial_names(flats: list[dict[str, Any]], seeds: list[int], config_ids: list[str],
                axes: Iterable[str] = ()) -> tuple[list[str], list[str]]:
    """(trial names, config names) for a sweep's trials, in order. Replicated configurations get `seed=N` in the
    trial name; two different configurations that would share a name get their position (`#3`)."""
    keys = varying_keys(flats, axes)
    names = [config_name(f, keys, str(f.get("model.name", "trial"))) for f in flats]
    owners: dict[str, set[str]] = {}
    for n, c in zip(names, config_ids):
        owners.setdefault(n, set()).add(c)
    cfg_names = [n if len(owners[n]) == 1 else f"{n} #{i}" for i, n in enumerate(names)]
    seeds_of: dict[str, set[int]] = {}
    for c, s in zip(config_ids, seeds):
        seeds_of.setdefault(c, set()).add(s)
    trial = [f"{n}{SEP}seed={s}" if len(seeds_of[c]) > 1 else n for n, c, s in zip(cfg_names, config_ids, seeds)]
    return trial, cfg_names


def axis_key(path: tuple) -> str:
    """Flat config key of an axis path: list elements belong to the list's key (`training.penalties`)."""
    out = []
    for p in path:
        if isinstance(p, int):
            break
        out.append(str(p))
    return ".".join(out)
