"""Sweep specs: YAML → validated, fully expanded `Spec`.

A spec names things (dataset, models, recipes, attacks); the registries resolve and validate them. Axes are written
in place of a value as a one-key mapping:
    {grid: [a, b]}               every value (cartesian product with the family's other grid axes)
    {choice: [a, b]}             one value drawn per sample
    {uniform: [lo, hi]}, {loguniform: [lo, hi]}, {randint: [lo, hi]}
Random axes are drawn `samples` times per grid point with a generator seeded by the spec's `seed`, so a spec always
expands to the same trial list (recorded in the trials table). Any error names the field: `trials[1].model.solver: …`.
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveFloat, PositiveInt, confloat

from advsweep.registry import SpecError

AXIS_KINDS = ("grid", "choice", "uniform", "loguniform", "randint")
Eps = confloat(ge=0.0, le=1.0)
NonNegative = confloat(ge=0.0)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSpec(_Strict):
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    n_train: PositiveInt | None = None  # None: the whole training split (less the validation subset)
    n_val: PositiveInt = 200  # held out of the training split for per-epoch monitoring
    n_test: PositiveInt = 1000
    seed: int = 0


class MonitorSpec(_Strict):
    """Quick per-epoch robustness probe on the validation subset (PGD-ℓ∞)."""

    eps: Eps = 0.1
    steps: PositiveInt = 10
    n: PositiveInt = 200


class AttackSpec(BaseModel):
    """One attack configuration: registry `name`, an optional unique `label`, its ε list, and its own options."""

    model_config = ConfigDict(extra="allow")
    name: str
    label: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    eps: list[NonNegative] = Field(default_factory=lambda: [0.0])  # ℓ∞ ε ≤ 1 is checked against the attack's norm
    # Transfer attacks: the trial (id, or index in the spec's trial list) whose model crafts the examples.
    source_trial: str | int | None = None
    # Run only on these trials (ids, or indices in the spec's trial list); default: every completed trial.
    trials: list[str | int] | None = Field(default=None, min_length=1)

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class TrainingSpec(_Strict):
    recipe: dict[str, Any] = Field(default_factory=lambda: {"name": "natural"})
    penalties: list[dict[str, Any]] = Field(default_factory=list)
    epochs: PositiveInt = 1
    batch_size: PositiveInt = 128
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: PositiveFloat = 0.1
    momentum: confloat(ge=0, lt=1) = 0.9
    nesterov: bool = False
    weight_decay: confloat(ge=0) = 0.0
    schedule: Literal["constant", "cosine", "step"] = "cosine"
    milestones: list[NonNegativeInt] = Field(default_factory=list)
    gamma: PositiveFloat = 0.1
    warmup_epochs: NonNegativeInt = 0
    augment: Literal["none", "crop", "crop_flip"] = "none"


class SchedulerSpec(_Strict):
    type: Literal["fifo", "asha"] = "fifo"
    metric: str = "val_robust_acc"
    mode: Literal["max", "min"] = "max"
    grace_period: PositiveInt = 1
    reduction_factor: confloat(gt=1) = 3


class ResourcesSpec(_Strict):
    cpu: PositiveFloat = 1
    gpu: confloat(ge=0) = 0
    memory_gb: PositiveFloat | None = None  # per trial: Ray schedules no more trials than the node's memory holds
    max_concurrent: PositiveInt | None = None


class EvalSpec(_Strict):
    batch_size: PositiveInt = 250
    shard_size: PositiveInt = 500
    seed: int = 0


class FamilySpec(_Strict):
    model: dict[str, Any]
    training: dict[str, Any] = Field(default_factory=dict)
    samples: PositiveInt = 1


class RawSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    seed: int = 0
    data: DataSpec = Field(default_factory=DataSpec)
    trials: list[FamilySpec] = Field(min_length=1)
    attacks: list[AttackSpec] = Field(default_factory=list)
    monitor: MonitorSpec | None = Field(default_factory=MonitorSpec)
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    eval: EvalSpec = Field(default_factory=EvalSpec)


class TrialConfig(_Strict):
    """One concrete trial: what a Tune trial receives (as a plain dict) and what the trials table records."""

    family: int
    index: int  # position in the expanded trial list
    model: dict[str, Any]
    training: TrainingSpec

    def flat(self) -> dict[str, Any]:
        """Config fields as `model.width`, `training.lr`, `training.recipe.beta`, ... (lists kept as lists)."""
        return flatten({"model": self.model, "training": self.training.model_dump()})


class Spec(BaseModel):
    raw: RawSpec
    trials: list[TrialConfig]
    source: str  # YAML text as given
    digest: str

    @property
    def name(self) -> str:
        return self.raw.name


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _is_axis(v: Any) -> bool:
    return isinstance(v, dict) and len(v) == 1 and next(iter(v)) in AXIS_KINDS


def _axes(node: Any, path: tuple) -> list[tuple[tuple, str, Any]]:
    if _is_axis(node):
        kind, values = next(iter(node.items()))
        return [(path, kind, values)]
    if isinstance(node, dict):
        return [a for k, v in node.items() for a in _axes(v, path + (k,))]
    if isinstance(node, list):
        return [a for i, v in enumerate(node) for a in _axes(v, path + (i,))]
    return []


def _set(node: Any, path: tuple, value: Any) -> None:
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value


def _field(prefix: str, path: tuple) -> str:
    out = prefix
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out


def _check_axis(field: str, kind: str, values: Any) -> None:
    if kind in ("grid", "choice"):
        if not isinstance(values, list) or not values:
            raise SpecError(field, f"{kind} needs a non-empty list")
    else:
        if not (isinstance(values, list) and len(values) == 2 and all(isinstance(v, (int, float)) for v in values)
                and values[0] < values[1]):
            raise SpecError(field, f"{kind} needs [low, high] with low < high")
        if kind == "loguniform" and values[0] <= 0:
            raise SpecError(field, "loguniform needs low > 0")


def _draw(kind: str, values: list, rng: np.random.Generator) -> Any:
    if kind == "choice":
        return copy.deepcopy(values[int(rng.integers(len(values)))])
    lo, hi = values
    if kind == "uniform":
        return float(rng.uniform(lo, hi))
    if kind == "loguniform":
        return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    return int(rng.integers(int(lo), int(hi) + 1))


def expand_family(fam: FamilySpec, index: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    body = {"model": fam.model, "training": fam.training}
    axes = _axes(body, ())
    for path, kind, values in axes:
        _check_axis(_field(f"trials[{index}]", path), kind, values)
    grid = [a for a in axes if a[1] == "grid"]
    rand = [a for a in axes if a[1] != "grid"]
    out = []
    for combo in itertools.product(*[a[2] for a in grid]) if grid else [()]:
        for _ in range(fam.samples if rand else 1):
            cfg = copy.deepcopy(body)
            for (path, _, _), value in zip(grid, combo):
                _set(cfg, path, copy.deepcopy(value))
            for path, kind, values in rand:
                _set(cfg, path, _draw(kind, values, rng))
            out.append(cfg)
    return out


def _validated_trial(cfg: dict[str, Any], family: int, index: int, data_channels_ok: bool = True) -> TrialConfig:
    from advsweep.models import MODELS
    from advsweep.training import PENALTIES, RECIPES

    where = f"trials[{family}]"
    model = dict(cfg["model"])
    if "name" not in model:
        raise SpecError(f"{where}.model.name", "missing")
    name = model.pop("name")
    model = {"name": name, **MODELS.validate(name, model, f"{where}.model")}
    try:
        training = TrainingSpec.model_validate(cfg["training"])
    except pydantic.ValidationError as exc:
        raise _pydantic_error(exc, f"{where}.training") from None
    recipe = dict(training.recipe)
    rname = recipe.pop("name", None)
    if rname is None:
        raise SpecError(f"{where}.training.recipe.name", "missing")
    training.recipe = {"name": rname, **RECIPES.validate(rname, recipe, f"{where}.training.recipe")}
    pens = []
    for j, pen in enumerate(training.penalties):
        pen = dict(pen)
        pname = pen.pop("name", None)
        if pname is None:
            raise SpecError(f"{where}.training.penalties[{j}].name", "missing")
        pens.append({"name": pname, **PENALTIES.validate(pname, pen, f"{where}.training.penalties[{j}]")})
    training.penalties = pens
    return TrialConfig(family=family, index=index, model=model, training=training)


def _validate_attacks(attacks: list[AttackSpec]) -> None:
    from advsweep.attacks import ATTACKS

    labels = set()
    for i, atk in enumerate(attacks):
        ATTACKS.validate(atk.name, atk.options, f"attacks[{i}]")
        if ATTACKS.get(atk.name).norm == "linf":
            for j, e in enumerate(atk.eps):
                if e > 1:
                    raise SpecError(f"attacks[{i}].eps[{j}]", f"ℓ∞ ε = {e} is outside [0, 1] (images lie in [0, 1])")
        if atk.source_trial is not None and not atk.name.startswith("transfer"):
            raise SpecError(f"attacks[{i}].source_trial", f"only transfer attacks take a source trial, not {atk.name}")
        if atk.source_trial is None and atk.name.startswith("transfer"):
            raise SpecError(f"attacks[{i}].source_trial", "a transfer attack needs the trial it crafts on")
        atk.label = atk.label or atk.name
        if atk.label in labels:
            raise SpecError(f"attacks[{i}].label", f"duplicate label {atk.label!r}; give each configuration a label")
        labels.add(atk.label)


def _pydantic_error(exc: pydantic.ValidationError, prefix: str) -> SpecError:
    err = exc.errors()[0]
    loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"])
    return SpecError(f"{prefix}{loc}".lstrip("."), err["msg"])


def parse_spec(text: str, source: str = "<spec>") -> Spec:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError(source, f"not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise SpecError(source, "a sweep spec must be a YAML mapping")
    try:
        raw = RawSpec.model_validate(data)
    except pydantic.ValidationError as exc:
        raise _pydantic_error(exc, "") from None
    from advsweep.data import DATASETS

    DATASETS.get(raw.data.dataset, "data.dataset")
    _validate_attacks(raw.attacks)
    rng = np.random.default_rng(raw.seed)
    trials: list[TrialConfig] = []
    for f, fam in enumerate(raw.trials):
        for cfg in expand_family(fam, f, rng):
            trials.append(_validated_trial(cfg, f, len(trials)))
    for i, atk in enumerate(raw.attacks):
        for j, t in enumerate(atk.trials or []):
            if isinstance(t, int) and not 0 <= t < len(trials):
                raise SpecError(f"attacks[{i}].trials[{j}]", f"trial index {t} is not in 0..{len(trials) - 1}")
    if raw.scheduler.type == "asha" and raw.monitor is None and raw.scheduler.metric.startswith("val_robust"):
        raise SpecError("scheduler.metric", "val_robust_acc needs a `monitor` section")
    digest = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return Spec(raw=raw, trials=trials, source=text, digest=digest)


class SuiteSpec(_Strict):
    """`advsweep eval DIR --suite SUITE.yaml`: attacks added to an existing sweep without retraining."""

    attacks: list[AttackSpec] = Field(min_length=1)
    eval: EvalSpec = Field(default_factory=EvalSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)


def _read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise SpecError(str(path), "file not found")
    try:
        data = yaml.safe_load(_read_text(p))
    except yaml.YAMLError as exc:
        raise SpecError(str(path), f"not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise SpecError(str(path), "expected a YAML mapping")
    return data


def load_suite(path: str | Path) -> SuiteSpec:
    data = _read_yaml(path)
    try:
        suite = SuiteSpec.model_validate(data)
    except pydantic.ValidationError as exc:
        raise _pydantic_error(exc, "") from None
    _validate_attacks(suite.attacks)
    return suite


def _read_text(p: Path) -> str:
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SpecError(str(p), "not a text file (expected a YAML spec)") from None
    except OSError as exc:
        raise SpecError(str(p), f"cannot be read ({exc.strerror})") from None


def load_spec(path: str | Path) -> Spec:
    p = Path(path)
    if not p.is_file():
        raise SpecError(str(path), "spec file not found")
    return parse_spec(_read_text(p), str(path))
