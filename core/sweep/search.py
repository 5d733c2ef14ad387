"""A validated Spec → what Ray Tune searches: `param_space`, `search_alg`, `num_samples`.

grid / random: the spec's deterministic trial list as one `tune.grid_search` (no searcher).
tpe / nsga2:   `StudySearch`, Ray Tune's OptunaSearch with
  - a define-by-run space (`SpecSpace`): Optuna picks a family (`family`), then only that family's axes
    (conditional space), each as an Optuna distribution: grid/choice → categorical, uniform → float,
    loguniform → float(log), randint → int with both ends included. An axis at the same place with the same values in
    several families is one shared parameter (`model.width`), otherwise it is named per family
    (`trials[1].training.recipe.beta`). The sampled configuration is validated by the spec's own code and reaches
    the trainable as the same `{"trial": TrialConfig}` a grid trial gets;
  - a seeded sampler (TPE: multivariate, grouped for the conditional space; NSGA-II), objectives maximised;
  - the study in `<sweep>/optuna.db` (sqlite), study name = sweep id, so `optuna.load_study` reads it;
  - trials told to Optuna as COMPLETE only when they ran their full budget (the `completed` flag of the final
    report): ASHA-stopped or interrupted trials are PRUNED, failed/diverged/errored ones FAIL (Tune's OptunaSearch
    would tell them COMPLETE with their last, truncated metrics);
  - a sampled configuration that fails validation is told FAIL (reason in the user attribute `invalid`) and
    replaced by another draw, so it never becomes a Tune trial;
  - trial indices in order of creation; its state (sampler, study handle, indices) is saved in Tune's experiment
    checkpoint, so `Tuner.restore` continues the search where it stopped.
"""
from __future__ import annotations

import copy
import json
import logging
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from ray.tune.search.optuna import OptunaSearch

from advsweep.registry import SpecError
from advsweep.spec import OPTUNA_ALGORITHMS, RawSpec, Spec, _field, _set, _validated_trial, family_axes

logger = logging.getLogger(__name__)

STUDY_FILE = "optuna.db"
MAX_INVALID_DRAWS = 200  # consecutive invalid sampled configurations before the searcher gives up
_PRIMITIVE = (type(None), bool, int, float, str)


@dataclass
class SearchPlan:
    param_space: dict[str, Any]
    search_alg: Any | None
    num_samples: int  # Tune's num_samples (1 with a grid_search over the expanded list)
    n_trials: int  # trials the sweep will create
    max_epochs: int  # the largest training budget any trial can have (ASHA's max_t)
    max_concurrent: int | None
    manifest: dict[str, Any] = field(default_factory=dict)  # recorded in sweep.json under "search"


def trial_name(config: dict[str, Any]) -> str:
    t = config["trial"]
    return f"{t['index']:03d}-{t['model']['name']}"


def study_storage_url(out_dir: str | Path) -> str:
    return f"sqlite:///{Path(out_dir).resolve() / STUDY_FILE}"


def planned_trials(spec: Spec) -> int:
    return spec.raw.search.num_samples if spec.searched else len(spec.trials)


def search_record(spec: Spec, out_dir: str | Path, study_name: str) -> dict[str, Any]:
    """What sweep.json records under "search" (no side effects)."""
    s = spec.raw.search
    record: dict[str, Any] = {"algorithm": s.algorithm, "objective": s.objectives}
    if spec.searched:
        record.update(study_name=study_name, storage=study_storage_url(out_dir), sampler_seed=sampler_seed(spec.raw),
                      sampler={"tpe": "TPESampler", "nsga2": "NSGAIISampler"}[s.algorithm],
                      num_samples=s.num_samples)
    return record


def build_search(spec: Spec, out_dir: str | Path, study_name: str) -> SearchPlan:
    """What a new `tune.Tuner` needs for this spec. For tpe/nsga2 this creates (or loads) the study in
    `<out_dir>/optuna.db`; a restored Tuner brings its own searcher back from the experiment checkpoint."""
    from ray import tune

    raw = spec.raw
    s = raw.search
    max_concurrent = s.max_concurrent or raw.resources.max_concurrent
    record = search_record(spec, out_dir, study_name)
    if not spec.searched:
        configs = [t.model_dump() for t in spec.trials]
        return SearchPlan({"trial": tune.grid_search(configs)}, None, 1, len(configs),
                          max(t.training.epochs for t in spec.trials), max_concurrent, record)
    searcher = StudySearch(SpecSpace(raw), s.objectives, make_sampler(raw), study_name, record["storage"])
    return SearchPlan({}, searcher, s.num_samples, s.num_samples, max(t.training.epochs for t in spec.probes),
                      max_concurrent, record)


def sampler_seed(raw: RawSpec) -> int:
    return raw.search.seed if raw.search.seed is not None else raw.seed


class PicklableNSGAIISampler(optuna.samplers.NSGAIISampler):
    """NSGA-II whose thread lock (optuna ≥ 5.1) is left out of its pickle and made anew: Tune pickles the searcher
    into its experiment state when the Tuner is created and at every experiment checkpoint."""

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_thread_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._thread_lock = threading.Lock()


def make_sampler(raw: RawSpec):
    s = raw.search
    seed = sampler_seed(raw)
    if s.algorithm == "nsga2":
        return PicklableNSGAIISampler(seed=seed, population_size=s.population_size or 50)
    with warnings.catch_warnings():  # `group` is flagged experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True,
                                          n_startup_trials=s.startup_trials or 10)


def _axis_key(path: tuple) -> str:
    return _field("", path).lstrip(".")


class SpecSpace:
    """Define-by-run Optuna space of a spec's families. Plain data only, so that it pickles with the searcher."""

    def __init__(self, raw: RawSpec):
        self.seed = raw.seed
        self.bodies = [{"model": f.model, "training": f.training} for f in raw.trials]
        axes = [family_axes(f, i) for i, f in enumerate(raw.trials)]
        variants: dict[str, set[str]] = {}
        for fam_axes in axes:
            for path, kind, values in fam_axes:
                variants.setdefault(_axis_key(path), set()).add(json.dumps([kind, values], sort_keys=True))
        # (path, kind, values, Optuna parameter name) per family
        self.axes = [[(path, kind, values, _axis_key(path) if len(variants[_axis_key(path)]) == 1
                       else f"trials[{i}].{_axis_key(path)}") for path, kind, values in fam_axes]
                     for i, fam_axes in enumerate(axes)]

    def __call__(self, trial) -> dict[str, Any]:
        family = trial.suggest_categorical("family", list(range(len(self.bodies)))) if len(self.bodies) > 1 else 0
        cfg = copy.deepcopy(self.bodies[family])
        for path, kind, values, name in self.axes[family]:
            _set(cfg, path, suggest(trial, name, kind, values))
        # Raises SpecError naming the field if this combination is invalid; StudySearch.suggest handles it.
        return {"trial": _validated_trial(cfg, family, 0, seed=self.seed).model_dump()}


def suggest(trial, name: str, kind: str, values: list) -> Any:
    """One axis as an Optuna distribution. Non-scalar categorical values (lists, mappings) are offered as their JSON
    text, which is what the study records."""
    if kind in ("grid", "choice"):
        if all(isinstance(v, _PRIMITIVE) for v in values):
            return trial.suggest_categorical(name, list(values))
        return json.loads(trial.suggest_categorical(name, [json.dumps(v, sort_keys=True) for v in values]))
    lo, hi = values
    if kind == "randint":
        return trial.suggest_int(name, int(lo), int(hi))  # both ends included
    return trial.suggest_float(name, float(lo), float(hi), log=kind == "loguniform")


class StudySearch(OptunaSearch):
    """OptunaSearch that tells Optuna only full-budget trials as COMPLETE, resamples invalid configurations and
    numbers trials in order of creation."""

    def __init__(self, space: SpecSpace, objectives: list[str], sampler, study_name: str, storage_url: str):
        import optuna

        multi = len(objectives) > 1
        storage = optuna.storages.RDBStorage(storage_url)
        super().__init__(space=space, metric=list(objectives) if multi else objectives[0],
                         mode=["max"] * len(objectives) if multi else "max", sampler=sampler,
                         study_name=study_name, storage=storage)
        self._next_index = 0

    def suggest(self, trial_id: str):
        from optuna.trial import TrialState
        from ray.tune.search import Searcher

        for _ in range(MAX_INVALID_DRAWS):
            try:
                config = super().suggest(trial_id)
            except SpecError as exc:
                ot_trial = self._ot_trials.pop(trial_id)
                ot_trial.set_user_attr("invalid", str(exc))
                self._ot_study.tell(ot_trial, state=TrialState.FAIL)
                logger.warning("sampled configuration rejected (Optuna trial %d FAIL): %s", ot_trial.number, exc)
                continue
            index = self._next_index
            self._next_index += 1
            config["trial"]["index"] = index
            ot_trial = self._ot_trials[trial_id]
            ot_trial.set_user_attr("trial_index", index)
            ot_trial.set_user_attr("ray_trial_id", trial_id)
            return config
        logger.error("%d sampled configurations in a row were invalid; the search stops here", MAX_INVALID_DRAWS)
        return Searcher.FINISHED

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        from optuna.trial import TrialState

        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        ot_trial = self._ot_trials[trial_id]
        metrics = self._metric if isinstance(self._metric, list) else [self._metric]
        values = None
        if error or (result or {}).get("final_status") in ("failed", "diverged"):  # crashed / own code raised
            state = TrialState.FAIL
        elif result and result.get("completed") and all(result.get(m) is not None for m in metrics):
            state = TrialState.COMPLETE
            values = [float(result[m]) for m in metrics]
        else:  # stopped early (ASHA) or ended without its final report: its metrics are not the full budget's
            state = TrialState.PRUNED
            if result and result.get("epoch") is not None:
                ot_trial.set_user_attr("epochs_completed", int(result["epoch"]))
        try:
            self._ot_study.tell(ot_trial, values if values is None or len(values) > 1 else values[0], state=state)
        except Exception as exc:  # already told (e.g. a trial re-run after a restore from an older checkpoint)
            logger.warning("Optuna trial %d not told again: %s", ot_trial.number, exc)
        self._completed_trials.add(trial_id)

    def restore(self, checkpoint_path: str) -> None:
        """After `Tuner.restore`: Optuna trials asked after the last searcher checkpoint belong to no Tune trial; mark
        them FAIL so that they do not stay RUNNING (TPE's constant liar would keep avoiding their region)."""
        from optuna.trial import TrialState

        super().restore(checkpoint_path)
        known = {t.number for t in self._ot_trials.values()}
        for t in self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.number not in known:
                self._ot_study.tell(t.number, state=TrialState.FAIL)
