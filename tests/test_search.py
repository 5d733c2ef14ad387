"""Search (grid/random/tpe/nsga2), seed replicates and their bad input; tiny real tpe/nsga2 sweeps on local Ray."""
import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from advsweep.registry import SpecError
from advsweep.spec import TrialConfig, parse_spec

ADVSWEEP = str(Path(sys.executable).parent / "advsweep")

BASE = """
name: search
seed: 7
data: {dataset: fashion-mnist, n_train: 256, n_val: 64, n_test: 40, seed: 0}
trials:
  - model: {name: mlp, hidden: {grid: [[16], [32]]}}
    training: {recipe: {name: natural}, optimizer: adam, epochs: 2, batch_size: 64, lr: {grid: [0.003, 0.01]}}
  - model: {name: mlp, hidden: {grid: [[16], [32]]}}
    training: {recipe: {name: trades, beta: {uniform: [1.0, 6.0]}, eps: 0.1, step: 0.05, steps: 2},
               optimizer: adam, epochs: 2, batch_size: 64, lr: {grid: [0.003, 0.01]}}
attacks: []
monitor: {eps: 0.1, steps: 2, n: 64}
SEARCH
resources: {cpu: 1}
eval: {batch_size: 40, shard_size: 40}
"""
F0 = "lr: {grid: [0.003, 0.01]}}\n  - model"  # end of family 0
F1 = "lr: {grid: [0.003, 0.01]}}\nattacks"  # end of family 1


def f1(line: str) -> tuple[str, str]:
    """Edit adding `line` to family 1."""
    return F1, F1.replace("\nattacks", f"\n    {line}\nattacks")


def f0(line: str) -> tuple[str, str]:
    return F0, F0.replace("\n  - model", f"\n    {line}\n  - model")


TPE = "search: {algorithm: tpe, num_samples: 4, objective: [val_acc, val_robust_acc], startup_trials: 2}"


def spec(search: str = "", **edits) -> str:
    text = BASE.replace("SEARCH", search)
    for old, new in edits.values():
        assert old in text, old
        text = text.replace(old, new)
    return text


# ---- spec: grid / random / seeds ---------------------------------------------------------------------------------

def test_grid_default_and_seed_policy():
    s = parse_spec(spec(edits=f1("samples: 2")))
    assert s.raw.search.algorithm == "grid" and not s.searched
    assert len(s.trials) == 4 + 4 * 2
    assert [t.index for t in s.trials] == list(range(12))
    # Training seed = the replicate seed (the spec's seed here), never the position in the list.
    assert {t.seed for t in s.trials} == {7}
    assert len({t.config_id for t in s.trials}) == 12


def test_seeds_and_replicates_share_config_id():
    s = parse_spec(spec(a=f0("seeds: [3, 5]"), b=f1("replicates: 3")))
    fam0 = [t for t in s.trials if t.family == 0]
    assert [t.seed for t in fam0] == [3, 5] * 4  # replicates adjacent
    ids = [t.config_id for t in fam0]
    assert ids[0] == ids[1] and ids[2] == ids[3] and len(set(ids)) == 4
    fam1 = [t for t in s.trials if t.family == 1]
    assert [t.seed for t in fam1] == [7, 8, 9] * 4  # replicates: n = seeds [seed, seed + 1, ...]
    assert all(fam1[i].training.recipe == fam1[i + 1].training.recipe for i in (0, 1))
    assert len({t.config_id for t in fam1}) == 4
    # config_id: the configuration less the seed (and index/family)
    a = fam0[0]
    assert TrialConfig(**{**a.model_dump(), "seed": 99, "index": 50, "family": 3}).config_id == a.config_id
    assert TrialConfig(**{**a.model_dump(), "model": {**a.model, "hidden": [999]}}).config_id != a.config_id


def test_random_expands_num_samples_deterministically():
    text = spec("search: {algorithm: random, num_samples: 9, seed: 3}")
    s, again = parse_spec(text), parse_spec(text)
    assert len(s.trials) == 9
    assert [t.model_dump() for t in s.trials] == [t.model_dump() for t in again.trials]
    assert {t.family for t in s.trials} == {0, 1}
    assert all(t.training.lr in (0.003, 0.01) for t in s.trials)  # grid axes drawn like choice


def test_randint_includes_both_ends():
    s = parse_spec(spec(edits=("epochs: 2, batch_size: 64, lr: {grid: [0.003, 0.01]}}\n  - model",
                               "epochs: {randint: [1, 2]}, batch_size: 64, lr: 0.01}\n    samples: 40\n  - model")))
    assert {t.training.epochs for t in s.trials if t.family == 0} == {1, 2}
    study = optuna.create_study()
    from advsweep.sweep.search import suggest

    t = study.ask()
    suggest(t, "k", "randint", [1, 2])
    assert t.distributions["k"] == optuna.distributions.IntDistribution(1, 2)  # Optuna's high is inclusive too


# ---- the Optuna space --------------------------------------------------------------------------------------------

def test_space_is_conditional_per_family_and_yields_valid_trial_configs():
    from advsweep.sweep.search import SpecSpace

    s = parse_spec(spec(TPE))
    assert s.searched and s.trials == [] and len(s.probes) >= 2
    space = SpecSpace(s.raw)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = {0: 0, 1: 0}
    for _ in range(30):
        trial = study.ask()
        cfg = TrialConfig.model_validate(space(trial)["trial"])
        seen[cfg.family] += 1
        params = set(trial.params)
        # shared axes have one name; beta exists only when the TRADES family is chosen
        assert {"family", "model.hidden", "training.lr"} <= params
        assert ("training.recipe.beta" in params) == (cfg.family == 1)
        assert cfg.model["hidden"] == json.loads(trial.params["model.hidden"])  # lists offered as JSON text
        assert isinstance(trial.distributions["model.hidden"], optuna.distributions.CategoricalDistribution)
        if cfg.family == 1:
            assert cfg.training.recipe["name"] == "trades" and 1.0 <= cfg.training.recipe["beta"] <= 6.0
            assert trial.distributions["training.recipe.beta"] == optuna.distributions.FloatDistribution(1.0, 6.0)
        assert cfg.seed == 7
        study.tell(trial, 0.5)
    assert min(seen.values()) > 0


def test_axis_with_different_values_per_family_is_named_per_family():
    from advsweep.sweep.search import SpecSpace

    s = parse_spec(spec(TPE, edits=("hidden: {grid: [[16], [32]]}}\n    training: {recipe: {name: trades",
                                    "hidden: {grid: [[64], [32]]}}\n    training: {recipe: {name: trades")))
    names = [{a[3] for a in fam} for fam in SpecSpace(s.raw).axes]
    assert "trials[0].model.hidden" in names[0] and "trials[1].model.hidden" in names[1]
    assert "training.lr" in names[0] & names[1]


def _searcher(tmp_path, text, name="s"):
    from advsweep.sweep.search import SpecSpace, StudySearch, make_sampler, study_storage_url

    raw = parse_spec(text).raw
    return StudySearch(SpecSpace(raw), raw.search.objectives, make_sampler(raw), name, study_storage_url(tmp_path))


def test_searcher_tells_only_full_budget_trials_complete(tmp_path):
    s = _searcher(tmp_path, spec(TPE))
    cfgs = [s.suggest(f"t{i}") for i in range(4)]
    assert [c["trial"]["index"] for c in cfgs] == [0, 1, 2, 3]  # order of creation
    s.on_trial_complete("t0", {"val_acc": 0.8, "val_robust_acc": 0.3, "completed": True, "epoch": 2})
    s.on_trial_complete("t1", {"val_acc": 0.9, "val_robust_acc": 0.5, "completed": False, "epoch": 1})  # ASHA stop
    s.on_trial_complete("t2", {"val_acc": 0.7, "val_robust_acc": 0.2, "completed": False, "epoch": 1}, error=True)
    s.on_trial_complete("t3", None)
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.PRUNED]
    assert study.trials[0].values == [0.8, 0.3]
    assert study.trials[1].user_attrs["epochs_completed"] == 1
    assert [t.number for t in study.best_trials] == [0]  # the stopped trial's better metrics never reach the front
    assert study.trials[2].user_attrs["ray_trial_id"] == "t2"


@pytest.mark.parametrize("algorithm", ["tpe", "nsga2"])
def test_searcher_pickles_as_tune_stores_it_and_goes_on_sampling(tmp_path, algorithm):
    """Tune cloudpickles the searcher into its experiment state (Tuner creation, every experiment checkpoint); the
    unpickled searcher keeps sampling from the same study (optuna 5.1's NSGA-II holds a thread lock)."""
    from ray import cloudpickle

    extra = "population_size: 2" if algorithm == "nsga2" else "startup_trials: 1"
    s = _searcher(tmp_path, spec("search: {algorithm: %s, num_samples: 4, objective: [val_acc, val_robust_acc], %s}"
                                 % (algorithm, extra)))
    s.suggest("t0")
    s.on_trial_complete("t0", {"val_acc": 0.8, "val_robust_acc": 0.3, "completed": True, "epoch": 2})
    copy = cloudpickle.loads(cloudpickle.dumps(s))
    assert copy.suggest("t1")["trial"]["index"] == 1
    copy.on_trial_complete("t1", {"val_acc": 0.7, "val_robust_acc": 0.4, "completed": True, "epoch": 2})
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2


def test_invalid_sampled_config_is_failed_and_resampled(tmp_path):
    from advsweep.spec import RawSpec
    from advsweep.sweep.search import SpecSpace, StudySearch, make_sampler, study_storage_url
    import yaml

    # momentum < 1 is enforced by TrainingSpec; draws from [0.5, 1.5) above 1 are invalid. (parse_spec would reject
    # this spec at its high end; the raw spec exercises the searcher's own guard.)
    raw = RawSpec.model_validate(yaml.safe_load(spec(TPE).replace("optimizer: adam, epochs",
                                                                  "momentum: {uniform: [0.5, 1.5]}, epochs")))
    s = StudySearch(SpecSpace(raw), raw.search.objectives, make_sampler(raw), "inv", study_storage_url(tmp_path))
    cfgs = [s.suggest(f"t{i}") for i in range(5)]
    assert all(c["trial"]["training"]["momentum"] < 1 for c in cfgs)
    assert [c["trial"]["index"] for c in cfgs] == list(range(5))
    failed = [t for t in s._ot_study.trials if t.state == TrialState.FAIL]
    assert failed and all(t.user_attrs["invalid"].startswith("trials[") and ".training.momentum" in
                          t.user_attrs["invalid"] for t in failed)


# ---- bad input ---------------------------------------------------------------------------------------------------

BAD = [
    ("search: {algorithm: bayes, num_samples: 4}", {}, "search.algorithm"),
    ("search: {algorithm: nsga2, num_samples: 4, objective: val_robust_acc}", {}, "search.objective"),
    ("search: {algorithm: tpe, num_samples: 4, objective: [val_acc, test_acc]}", {}, "search.objective"),
    ("search: {algorithm: tpe, num_samples: 4, objective: [val_acc, val_acc]}", {}, "search.objective"),
    ("search: {algorithm: tpe, num_samples: 4, objective: [val_acc, val_robust_acc, train_acc]}", {},
     "search.objective"),
    ("search: {algorithm: tpe, num_samples: 4}", {"m": ("monitor: {eps: 0.1, steps: 2, n: 64}", "monitor: null")},
     "search.objective"),
    ("search: {algorithm: grid, num_samples: 4}", {}, "search.num_samples"),
    ("search: {algorithm: tpe}", {}, "search.num_samples"),
    ("search: {algorithm: nsga2, num_samples: 4, objective: [val_acc, val_robust_acc], startup_trials: 2}", {},
     "search.startup_trials"),
    ("search: {algorithm: tpe, num_samples: 4, population_size: 4}", {}, "search.population_size"),
    ("", {"s": f1("seeds: []")}, "trials[1].seeds"),
    ("", {"s": f1("seeds: [1, 2, 1]")}, "trials[1].seeds"),
    ("", {"s": f1("seeds: [1, 2]\n    replicates: 2")}, "trials[1].replicates"),
    ("", {"s": f1("replicates: 0")}, "trials[1].replicates"),
    (TPE, {"s": f1("seeds: [1, 2]")}, "trials[1].seeds"),
    ("", {"s": f0("samples: 3")},
     "trials[0].samples"),
    ("search: {algorithm: random, num_samples: 4}", {"s": f1("samples: 2")},
     "trials[1].samples"),
    ("", {"r": ("steps: 2}", "steps: {randint: [1.0, 3.5]}}")},
     "trials[1].training.recipe.steps"),
    (TPE, {"r": ("beta: {uniform: [1.0, 6.0]}", "beta: {uniform: [-1.0, 6.0]}")}, "trials[1].training.recipe.beta"),
]


@pytest.mark.parametrize("search, edits, field", BAD)
def test_bad_search_input_names_field(search, edits, field):
    with pytest.raises(SpecError) as exc:
        parse_spec(spec(search, **edits))
    assert str(exc.value).startswith(field), str(exc.value)


def _cli(*args):
    return subprocess.run([ADVSWEEP, *args], capture_output=True, text=True, timeout=180)


@pytest.mark.parametrize("search, edits, field", [BAD[0], BAD[6], BAD[11]])
def test_cli_bad_search_input_exit_2_nothing_written(tmp_path, search, edits, field):
    f = tmp_path / "bad.yaml"
    f.write_text(spec(search, **edits))
    for args in (["validate", str(f)], ["run", str(f), "--out", str(tmp_path / "out")]):
        r = _cli(*args)
        assert r.returncode == 2, r.stderr
        lines = [ln for ln in r.stderr.strip().splitlines() if ln]
        assert len(lines) == 1 and field in lines[0], r.stderr
    assert not (tmp_path / "out").exists()


def test_cli_validate_describes_search_space(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text(spec(TPE))
    r = _cli("validate", str(f))
    assert r.returncode == 0, r.stderr
    assert "tpe samples 4 trials" in r.stdout and "training.recipe.beta=uniform[1.0, 6.0]" in r.stdout


# ---- real sweeps -------------------------------------------------------------------------------------------------

def _study(out: Path) -> optuna.Study:
    m = json.loads((out / "sweep.json").read_text())["search"]  # FileNotFoundError before the manifest exists
    assert m["storage"] == f"sqlite:///{out / 'optuna.db'}"
    return optuna.load_study(study_name=m["study_name"], storage=m["storage"])


@pytest.mark.slow
def test_tpe_sweep_with_asha_prunes_stopped_trials(tmp_path, ray_local, fashion_available):
    """Two-objective TPE under ASHA (ASHA on val_acc; the infra.md §1.6 trap), one trial at a time: lr is mostly near
    zero, so trials after a good one are stopped at the first rung; those must be PRUNED in the study, never on its
    front, and COMPLETE only the full-budget ones."""
    from advsweep.storage.parquet import read_trials
    from advsweep.sweep.driver import run_sweep

    text = spec("search: {algorithm: tpe, num_samples: 5, max_concurrent: 1, seed: 1, "
                "objective: [val_acc, val_robust_acc], "
                "startup_trials: 5}\nscheduler: {type: asha, metric: val_acc, mode: max, grace_period: 1, "
                "reduction_factor: 2}",
                a=("lr: {grid: [0.003, 0.01]}}\n  - model", "lr: {grid: [0.01, 1.0e-7, 2.0e-7]}}\n  - model"),
                b=("lr: {grid: [0.003, 0.01]}}\nattacks", "lr: {grid: [0.01, 1.0e-7, 2.0e-7]}}\nattacks"))
    result = run_sweep(parse_spec(text), tmp_path / "tpe", make_plots=False)
    trials = read_trials(result.out_dir).to_pandas().sort_values("trial_index")
    assert list(trials["trial_index"]) == [0, 1, 2, 3, 4]
    assert {"seed", "config_id"} <= set(trials.columns) and set(trials["seed"]) == {7}
    study = _study(result.out_dir)
    assert len(study.trials) == 5
    by_index = {t.user_attrs["trial_index"]: t for t in study.trials}
    for row in trials.itertuples():
        t = by_index[row.trial_index]
        assert t.user_attrs["ray_trial_id"] == row.trial_id
        assert t.state == {"completed": TrialState.COMPLETE, "early_stopped": TrialState.PRUNED}[row.status]
        if row.status == "completed":
            assert t.values == pytest.approx([row.val_acc, row.val_robust_acc])
        else:
            assert t.user_attrs["epochs_completed"] == row.epochs_completed < row.epochs_planned
    assert (trials["status"] == "early_stopped").sum() >= 1
    assert all(t.state == TrialState.COMPLETE for t in study.best_trials)
    assert sum(t.state == TrialState.COMPLETE for t in study.trials) == (trials["status"] == "completed").sum()


@pytest.mark.slow
def test_nsga2_sweep_completes_and_stores_study(tmp_path, ray_local, fashion_available):
    from advsweep.storage.parquet import read_trials
    from advsweep.sweep.driver import run_sweep

    text = spec("search: {algorithm: nsga2, num_samples: 4, max_concurrent: 2, objective: [val_acc, val_robust_acc], "
                "population_size: 2}")
    result = run_sweep(parse_spec(text), tmp_path / "nsga2", make_plots=False)
    trials = read_trials(result.out_dir).to_pandas()
    assert result.n_trials == 4 and (trials["status"] == "completed").all()
    study = _study(result.out_dir)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE] * 2
    rows = {r.trial_id: r for r in trials.itertuples()}
    for t in study.trials:
        r = rows[t.user_attrs["ray_trial_id"]]
        assert t.values == pytest.approx([r.val_acc, r.val_robust_acc])
        assert TrialConfig.model_validate_json(r.config_json).config_id == r.config_id
    manifest = json.loads((result.out_dir / "sweep.json").read_text())
    assert manifest["search"]["sampler"] == "NSGAIISampler" and manifest["n_trials"] == 4


@pytest.mark.slow
def test_tpe_sweep_resumed_continues_search(tmp_path, ray_local, fashion_available):
    """Interrupt a tpe sweep's driver (SIGINT) after two trials, then resume it (`run_sweep(resume=True)`, i.e.
    `Tuner.restore`): the search continues to num_samples with the restored searcher and study, and the finished
    trials are not run again."""
    import os
    import signal
    import time

    from advsweep.storage.parquet import read_trials
    from advsweep.sweep.driver import run_sweep

    text = spec("search: {algorithm: tpe, num_samples: 4, max_concurrent: 1, objective: [val_acc, val_robust_acc], "
                "startup_trials: 2}")
    out = tmp_path / "sweep"
    script = f"from advsweep.spec import parse_spec\nfrom advsweep.sweep.driver import run_sweep\n" \
             f"run_sweep(parse_spec({text!r}), {str(out)!r}, make_plots=False)\n"
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    done = []
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            time.sleep(1)
            try:
                done = [t for t in _study(out).trials if t.state == TrialState.COMPLETE]
            except (FileNotFoundError, KeyError):  # manifest or study not written yet
                continue
            if len(done) >= 2:
                break
        assert len(done) >= 2, "the first two trials did not finish in time"
        interrupted = time.time()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    study = _study(out)
    finished_before = {t.user_attrs["ray_trial_id"] for t in study.trials if t.state == TrialState.COMPLETE}
    assert len(study.trials) < 4 or any(t.state != TrialState.COMPLETE for t in study.trials), \
        "the interrupt came too late to test a resume"

    result = run_sweep(parse_spec((out / "spec.yaml").read_text()), out, resume=True, make_plots=False)
    assert result.n_trials == 4 and result.n_completed == 4
    trials = read_trials(out).to_pandas()
    assert sorted(trials["trial_index"]) == [0, 1, 2, 3]
    study = _study(out)
    assert [t.state for t in study.trials].count(TrialState.COMPLETE) == 4
    assert {t.user_attrs["ray_trial_id"] for t in study.trials if t.state == TrialState.COMPLETE} == set(
        trials["trial_id"])
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]
    exp = out / "ray" / json.loads((out / "sweep.json").read_text())["sweep_id"]
    for trial_id in finished_before:  # not run again: two epochs reported, both before the interrupt
        (result_file,) = exp.glob(f"*-{trial_id}/result.json")
        reports = [json.loads(line) for line in result_file.read_text().splitlines()]
        assert [r["epoch"] for r in reports] == [1, 2] and max(r["timestamp"] for r in reports) <= interrupted
