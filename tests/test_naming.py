"""Trial names say what varies within a sweep, and nothing that does not."""
from pathlib import Path

from advsweep.naming import trial_names, varying_keys
from advsweep.spec import load_spec

SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"


def test_quickstart_names_the_swept_solver():
    assert load_spec(SWEEPS / "quickstart.yaml").trial_names()[0] == ["resnet", "odenet·dopri5", "odenet·rk4"]


def test_fields_that_follow_from_the_family_are_left_out():
    names, _ = load_spec(SWEEPS / "papers" / "natural_robustness_paper.yaml").trial_names()
    assert names[:2] == ["odenet_mnist·natural", "resnet6_mnist·natural"]  # not their epochs, lr, milestones
    assert len(set(names)) == len(names)


def test_replicates_share_a_config_name_and_differ_by_seed():
    flats = [{"model.name": "mlp", "training.lr": lr} for lr in (0.1, 0.1, 0.01, 0.01)]
    names, cfg = trial_names(flats, [0, 1, 0, 1], ["a", "a", "b", "b"])
    assert cfg == ["lr=0.1", "lr=0.1", "lr=0.01", "lr=0.01"]  # the model is the same: not named
    assert names == ["lr=0.1·seed=0", "lr=0.1·seed=1", "lr=0.01·seed=0", "lr=0.01·seed=1"]


def test_clashing_keys_get_a_longer_label_and_search_axes_always_count():
    flats = [{"model.name": "m", "model.lr": 1, "training.lr": 2}, {"model.name": "m", "model.lr": 3, "training.lr": 4}]
    keys = varying_keys(flats, axes=["training.batch_size"])
    assert keys == ["model.lr", "training.batch_size"]  # training.lr follows from model.lr here
    names, _ = trial_names(flats, [0, 0], ["x", "y"])
    assert names == ["lr=1", "lr=3"]
    flats2 = [{"model.name": "m", "model.lr": 1, "training.lr": 2}, {"model.name": "m", "model.lr": 1, "training.lr": 4},
              {"model.name": "m", "model.lr": 3, "training.lr": 2}]
    names, _ = trial_names(flats2, [0, 0, 0], ["x", "y", "z"])
    assert names == ["model.lr=1·training.lr=2", "model.lr=1·training.lr=4", "model.lr=3·training.lr=2"]


def test_searched_trials_are_named_by_their_axes():
    s = load_spec(SWEEPS / "quickstart.yaml")
    assert s.search_axes() == ["model.solver", "model.name"]


def test_a_stacked_models_varying_front_end_is_named():
    """The front end's name is kept even where the recipe already tells the two stacked trials apart."""
    names, _ = load_spec(SWEEPS / "papers" / "contractive.yaml").trial_names()
    stacked = [n for n in names if n.startswith("stacked")]
    assert stacked == ["stacked·blur·natural", "stacked·dae·gaussian_noise·sigma=0.1·variant=L1"]
    assert len(set(names)) == len(names)
