"""ASHA through real Tune: early-stopped trials are recorded as such, get no attack rows and never reach a front."""
import pytest

from advsweep.analysis.frontier import load_points
from advsweep.spec import parse_spec
from advsweep.storage.parquet import read_examples, read_trials

pytestmark = pytest.mark.slow

ASHA_SPEC = """
name: asha
seed: 0
data: {dataset: fashion-mnist, n_train: 512, n_val: 100, n_test: 40, seed: 0}
trials:
  - model: {name: mlp, hidden: [64]}
    training: {recipe: {name: natural}, optimizer: adam, epochs: 3, batch_size: 32, lr: {grid: [0.01, 1.0e-7, 2.0e-7]}}
attacks:
  - {name: fgsm, eps: [0.1]}
monitor: null
scheduler: {type: asha, metric: val_acc, mode: max, grace_period: 1, reduction_factor: 3}
resources: {cpu: 1, max_concurrent: 1}
eval: {batch_size: 40, shard_size: 40}
"""


def test_asha_stops_bad_trials_and_they_stay_off_the_front(tmp_path, ray_local, fashion_available):
    from advsweep.sweep.driver import run_sweep

    result = run_sweep(parse_spec(ASHA_SPEC), tmp_path / "asha")
    trials = read_trials(result.out_dir).to_pandas()
    by_lr = trials.set_index("config_training_lr")
    # One at a time, the lr=0.01 trial runs first and sets the bar; the near-zero-lr trials fall below it at the
    # first rung (epoch 1) and are stopped there.
    assert by_lr.loc[0.01, "status"] == "completed"
    stopped = trials[trials["status"] == "early_stopped"]
    assert len(stopped) >= 1
    assert (stopped["epochs_completed"] < stopped["epochs_planned"]).all()
    assert stopped["natural_acc"].isna().all() and stopped["robust_summary"].map(len).eq(0).all()
    examples = read_examples(result.out_dir).to_pandas()
    assert set(examples["trial_id"].astype(str)) == set(trials.loc[trials["status"] == "completed", "trial_id"])
    assert set(load_points(result.out_dir)["trial_id"]).isdisjoint(set(stopped["trial_id"]))
