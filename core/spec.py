"""Sweep specs: YAML → validated, fully expanded `Spec`.

A spec names things (dataset, models, recipes, attacks); the registries resolve and validate them. Axes are written
in place of a value as a one-key mapping:
    {grid: [a, b]}               every value (cartesian product with the family's other grid axes)
    {choice: [a, b]}             one value drawn per sample
    {uniform: [lo, hi]}, {loguniform: [lo, hi]}, {randint: [lo, hi]}   (randint: an integer lo ≤ k ≤ hi, both ends
                                 included, as in Optuna's suggest_int; unlike numpy's and Tune's randint)
With `search.algorithm: grid` (the default), random axes are drawn `samples` times per grid point with a generator
seeded by the spec's `seed`, so a spec always expands to the same trial list (recorded in the trials table);
`random` draws `search.num_samples` configurations up front the same way; `tpe`/`nsga2` leave the sampling to Optuna
(advsweep.sweep.search), and the spec only validates the space. Seed policy: a trial's training seed is its
replicate seed (`seeds:` / `replicates:` on a family, else the spec's `seed`), never its position in the list, so
two trials differ in seed only when they are replicates. Any error names the field: `trials[1].model.solver: …`.
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveFloat, PositiveInt, confloat

from advsweep.registry import FRACTION_PARAMS, SpecError, fraction_float, pydantic_message

AXIS_KINDS = ("grid", "choice", "uniform", "loguniform", "randint")
RANDOM_KINDS = ("choice", "uniform", "loguniform", "randint")
ALGORITHMS = ("grid", "random", "tpe", "nsga2")
OPTUNA_ALGORITHMS = ("tpe", "nsga2")  # sampled by Optuna while the sweep runs; grid/random expand up front
OBJECTIVES = ("val_acc", "val_robust_acc")  # what every trial reports each epoch (val_robust_acc needs `monitor`)
# ε may be written as a fraction (`8/255`); stored as the float.
Eps = Annotated[confloat(ge=0.0, le=1.0), pydantic.BeforeValidator(fraction_float)]
NonNegative = confloat(ge=0.0)
NonNegativeEps = Annotated[NonNegative, pydantic.BeforeValidator(fraction_float)]


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
    eps: list[NonNegativeEps] = Field(default_factory=lambda: [0.0])  # ℓ∞ ε ≤ 1 is checked against the attack's norm
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
    # Attack each trial as soon as it completes, while other trials still train (transfer attacks, which need
    # their source trial, wait for the end). Off by default: measured slower on a 2-core machine (README).
    overlap: bool = False


class FamilySpec(_Strict):
    model: dict[str, Any]
    training: dict[str, Any] = Field(default_factory=dict)
    samples: PositiveInt = 1
    seeds: list[int] | None = None  # training seeds: every configuration is trained once per seed
    replicates: PositiveInt | None = None  # = seeds [seed, seed + 1, ..., seed + replicates - 1]


class SearchSpec(_Strict):
    """How the trials are chosen: grid/random expand up front; tpe/nsga2 ask Optuna while the sweep runs."""

    algorithm: Literal["grid", "random", "tpe", "nsga2"] = "grid"
    num_samples: PositiveInt | None = None  # random/tpe/nsga2: trials to run (grid: every combination)
    max_concurrent: PositiveInt | None = None  # trials in flight (default resources.max_concurrent)
    seed: int | None = None  # sampler seed (default: the spec's seed)
    objective: str | list[str] = "val_robust_acc"  # one metric, or two for a front; always maximised
    startup_trials: PositiveInt | None = None  # tpe: random trials before the model is used (Optuna's default 10)
    population_size: int | None = Field(default=None, ge=2)  # nsga2: generation size (Optuna's default 50)

    @property
    def objectives(self) -> list[str]:
        return [self.objective] if isinstance(self.objective, str) else list(self.objective)


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
    search: SearchSpec = Field(default_factory=SearchSpec)


class TrialConfig(_Strict):
    """One concrete trial: what a Tune trial receives (as a plain dict) and what the trials table records."""

    family: int
    index: int  # position in the expanded trial list (searched sweeps: order of creation)
    model: dict[str, Any]
    training: TrainingSpec
    seed: int = 0  # training seed (the replicate seed)

    def flat(self) -> dict[str, Any]:
        """Config fields as `model.width`, `training.lr`, `training.recipe.beta`, ... (lists kept as lists)."""
        return flatten({"model": self.model, "training": self.training.model_dump()})

    @property
    def config_id(self) -> str:
        """Hash of what was trained, less the seed (and index, family): shared by the replicates of a config."""
        body = json.dumps({"model": self.model, "training": self.training.model_dump()}, sort_keys=True, default=str)
        return hashlib.sha256(body.encode()).hexdigest()[:12]


class Spec(BaseModel):
    raw: RawSpec
    trials: list[TrialConfig]  # the expanded trial list (grid/random); empty for tpe/nsga2, which sample as they run
    source: str  # YAML text as given
    digest: str
    probes: list[TrialConfig] = Field(default_factory=list)  # tpe/nsga2: configs validated at spec time

    @property
    def name(self) -> str:
        return self.raw.name

    @property
    def searched(self) -> bool:
        return self.raw.search.algorithm in OPTUNA_ALGORITHMS

    def search_axes(self) -> list[str]:
        """Flat config keys the search space varies (every family's axes; model/recipe names when families differ)."""
        from advsweep.naming import axis_key

        keys = [axis_key(path) for f, fam in enumerate(self.raw.trials) for path, _, _ in family_axes(fam, f)]
        flats = [flatten({"model": fam.model, "training": fam.training}) for fam in self.raw.trials]
        for k in ("model.name", "training.recipe.name"):
            if len({json.dumps(f.get(k), default=str) for f in flats}) > 1:
                keys.append(k)
        return list(dict.fromkeys(keys))

    def trial_names(self) -> tuple[list[str], list[str]]:
        """(trial names, config names) of the expanded trials (see advsweep.naming)."""
        from advsweep.naming import trial_names

        return trial_names([t.flat() for t in self.trials], [t.seed for t in self.trials],
                           [t.config_id for t in self.trials])

    def name_of(self, cfg: "TrialConfig") -> tuple[str, str]:
        """(trial name, config name) of one trial: from the expanded list, or, for a sampled (tpe/nsga2) trial,
        from the values of the search axes."""
        from advsweep.naming import config_name, varying_keys

        if not self.searched:
            names, cfg_names = self.trial_names()
            return names[cfg.index], cfg_names[cfg.index]
        flat = cfg.flat()
        n = config_name(flat, varying_keys([], self.search_axes()), str(cfg.model["name"]))
        return n, n


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
        if kind == "randint" and not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise SpecError(field, "randint needs integer [low, high] (both included)")


def _draw(kind: str, values: list, rng: np.random.Generator) -> Any:
    if kind == "choice":
        return copy.deepcopy(values[int(rng.integers(len(values)))])
    lo, hi = values
    if kind == "uniform":
        return float(rng.uniform(lo, hi))
    if kind == "loguniform":
        return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    return int(rng.integers(int(lo), int(hi) + 1))


def family_axes(fam: FamilySpec, index: int) -> list[tuple[tuple, str, Any]]:
    """The family's axes as (path, kind, values), each checked; paths run from {"model": …, "training": …}."""
    axes = _axes({"model": fam.model, "training": fam.training}, ())
    for path, kind, values in axes:
        _check_axis(_field(f"trials[{index}]", path), kind, values)
    return axes


def expand_family(fam: FamilySpec, index: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    body = {"model": fam.model, "training": fam.training}
    axes = family_axes(fam, index)
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


def draw_config(fam: FamilySpec, index: int, rng: np.random.Generator) -> dict[str, Any]:
    """One random configuration of a family: grid axes are drawn like `choice` (search.algorithm: random)."""
    cfg = copy.deepcopy({"model": fam.model, "training": fam.training})
    for path, kind, values in family_axes(fam, index):
        _set(cfg, path, _draw("choice" if kind == "grid" else kind, values, rng))
    return cfg


def probe_configs(fam: FamilySpec, index: int) -> list[dict[str, Any]]:
    """Configurations that together take every grid/choice value and both ends of every range, each against a base
    of first values and low ends: validating them checks every value the search can choose (not their
    combinations, which are checked again when sampled)."""
    body = {"model": fam.model, "training": fam.training}
    axes = family_axes(fam, index)
    base = copy.deepcopy(body)
    for path, kind, values in axes:
        _set(base, path, copy.deepcopy(values[0]))
    out = [base]
    for path, kind, values in axes:
        for v in values[1:]:  # grid/choice: the other values; ranges: the high end
            cfg = copy.deepcopy(base)
            _set(cfg, path, copy.deepcopy(v))
            out.append(cfg)
    return out


def family_seeds(fam: FamilySpec, index: int, base_seed: int) -> list[int]:
    """Training seeds of a family's configurations: `seeds`, or `replicates` consecutive seeds from the spec's seed,
    or the spec's seed alone."""
    where = f"trials[{index}]"
    if fam.seeds is not None and fam.replicates is not None:
        raise SpecError(f"{where}.replicates", "give seeds or replicates, not both")
    if fam.seeds is not None:
        if not fam.seeds:
            raise SpecError(f"{where}.seeds", "empty list; give at least one seed or leave the field out")
        repeated = sorted({s for s in fam.seeds if fam.seeds.count(s) > 1})
        if repeated:
            raise SpecError(f"{where}.seeds", f"seed {repeated[0]} repeated; replicates need distinct seeds")
        return list(fam.seeds)
    if fam.replicates is not None:
        return [base_seed + k for k in range(fam.replicates)]
    return [base_seed]


def _check_family(fam: FamilySpec, index: int, algorithm: str) -> None:
    where = f"trials[{index}]"
    if "samples" in fam.model_fields_set:
        if algorithm != "grid":
            raise SpecError(f"{where}.samples", f"search.algorithm {algorithm} draws search.num_samples "
                                                "configurations; samples (draws per grid point) is for grid")
        if not any(kind in RANDOM_KINDS for _, kind, _ in family_axes(fam, index)):
            raise SpecError(f"{where}.samples", "the family has no random axis (choice, uniform, loguniform, randint), "
                                                "so samples would draw nothing; use seeds/replicates for repeats")
    if algorithm in OPTUNA_ALGORITHMS and (fam.seeds is not None or fam.replicates is not None):
        field = "seeds" if fam.seeds is not None else "replicates"
        raise SpecError(f"{where}.{field}", f"replicates need search.algorithm grid or random; under {algorithm} "
                                            "one Optuna trial is one training run")


def _check_search(raw: RawSpec) -> None:
    s = raw.search
    alg = s.algorithm
    if alg in OPTUNA_ALGORITHMS or "objective" in s.model_fields_set:
        objs = s.objectives
        if not 1 <= len(objs) <= 2:
            raise SpecError("search.objective", f"one metric or two (a natural-vs-robust front), not {len(objs)}")
        for o in objs:
            if o not in OBJECTIVES:
                raise SpecError("search.objective", f"{o!r} is not reported by the trials; reported: "
                                                    f"{', '.join(OBJECTIVES)}")
        if len(set(objs)) < len(objs):
            raise SpecError("search.objective", f"{objs[0]!r} repeated; give two different metrics")
        if "val_robust_acc" in objs and raw.monitor is None:
            raise SpecError("search.objective", "val_robust_acc is reported only with a `monitor` section")
        if alg == "nsga2" and len(objs) < 2:
            raise SpecError("search.objective", "nsga2 is multi-objective: give two metrics, "
                                                "e.g. [val_acc, val_robust_acc] (or use tpe for one)")
    if alg == "grid" and s.num_samples is not None:
        raise SpecError("search.num_samples", "grid runs every combination; num_samples is for random, tpe and nsga2")
    if alg != "grid" and s.num_samples is None:
        raise SpecError("search.num_samples", f"{alg} needs the number of trials to run")
    if s.startup_trials is not None and alg != "tpe":
        raise SpecError("search.startup_trials", f"only tpe has startup trials, not {alg}")
    if s.population_size is not None and alg != "nsga2":
        raise SpecError("search.population_size", f"only nsga2 has a population size, not {alg}")


def expand_trials(raw: RawSpec) -> tuple[list[TrialConfig], list[TrialConfig]]:
    """(trials, probes): grid/random give the trial list (each configuration once per seed, replicates adjacent);
    tpe/nsga2 give the validated probes of their space instead."""
    alg = raw.search.algorithm
    for f, fam in enumerate(raw.trials):
        _check_family(fam, f, alg)
    rng = np.random.default_rng(raw.search.seed if raw.search.seed is not None else raw.seed)
    if alg in OPTUNA_ALGORITHMS:
        probes = [_validated_trial(cfg, f, 0, seed=raw.seed) for f, fam in enumerate(raw.trials)
                  for cfg in probe_configs(fam, f)]
        return [], probes
    if alg == "grid":
        drawn = [(f, cfg) for f, fam in enumerate(raw.trials) for cfg in expand_family(fam, f, rng)]
    else:
        drawn = []
        for _ in range(raw.search.num_samples):
            f = int(rng.integers(len(raw.trials)))
            drawn.append((f, draw_config(raw.trials[f], f, rng)))
    trials: list[TrialConfig] = []
    for f, cfg in drawn:
        for seed in family_seeds(raw.trials[f], f, raw.seed):
            trials.append(_validated_trial(cfg, f, len(trials), seed=seed))
    return trials, []


def _validated_trial(cfg: dict[str, Any], family: int, index: int, seed: int = 0) -> TrialConfig:
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
    return TrialConfig(family=family, index=index, model=model, training=training, seed=seed)


def _validate_attacks(attacks: list[AttackSpec]) -> None:
    from advsweep.attacks import ATTACKS

    labels = set()
    for i, atk in enumerate(attacks):
        checked = ATTACKS.validate(atk.name, atk.options, f"attacks[{i}]")
        for k, v in atk.options.items():  # a fraction (alpha: 2/255) is kept as the float it stands for
            if k in FRACTION_PARAMS and isinstance(v, str):
                atk.__pydantic_extra__[k] = checked[k]
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
    return SpecError(f"{prefix}{loc}".lstrip("."), pydantic_message(err))


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
    _check_search(raw)
    trials, probes = expand_trials(raw)
    n_trials = raw.search.num_samples if raw.search.algorithm in OPTUNA_ALGORITHMS else len(trials)
    for i, atk in enumerate(raw.attacks):
        for j, t in enumerate(atk.trials or []):
            if isinstance(t, int) and not 0 <= t < n_trials:
                raise SpecError(f"attacks[{i}].trials[{j}]", f"trial index {t} is not in 0..{n_trials - 1}")
    if raw.scheduler.type == "asha" and raw.monitor is None and raw.scheduler.metric.startswith("val_robust"):
        raise SpecError("scheduler.metric", "val_robust_acc needs a `monitor` section")
    digest = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return Spec(raw=raw, trials=trials, source=text, digest=digest, probes=probes)


def describe_space(raw: RawSpec) -> list[str]:
    """One line per family: its fixed model name and recipe, and its axes."""
    lines = []
    for f, fam in enumerate(raw.trials):
        axes = ", ".join(f"{_field('', p).lstrip('.')}={kind}{json.dumps(v)}" for p, kind, v in family_axes(fam, f))
        lines.append(f"  family {f}: model={fam.model.get('name')} recipe={fam.training.get('recipe', {'name': 'natural'})}"
                     f" axes: {axes or 'none'}")
    return lines


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
