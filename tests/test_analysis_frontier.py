"""Bootstrap frontiers on hand-made per-example tables in the real schema: exact points, front membership
probabilities, hypervolume, fitted curve, replicates, labels, ensembles, and bad or partial input."""
import sys
from pathlib import Path

import numpy as np
import pytest

from advsweep.analysis.frontier import hypervolume, hypervolume_columns, pareto_mask, pareto_mask_columns
from advsweep.analysis.frontier_fit import analyse_fronts, frontier_curve
from advsweep.analysis.tables import load_sweep, trial_label
from advsweep.registry import SpecError

sys.path.insert(0, str(Path(__file__).parent))
from analysis_synth import finish, outcomes, write_cell, write_trials  # noqa: E402


def _brute_pareto(nat, rob):
    out = []
    for i in range(len(nat)):
        dom = any(nat[j] >= nat[i] and rob[j] >= rob[i] and (nat[j] > nat[i] or rob[j] > rob[i])
                  for j in range(len(nat)))
        out.append(not dom)
    return np.array(out)


def test_sort_based_pareto_and_hypervolume_match_brute_force_with_ties():
    rng = np.random.default_rng(0)
    nat = rng.integers(0, 6, size=(40, 30)) / 5  # a coarse grid: many exact ties and duplicates
    rob = rng.integers(0, 6, size=(40, 30)) / 5
    mask = pareto_mask_columns(nat, rob)
    hv = hypervolume_columns(nat, rob)
    for b in range(nat.shape[1]):
        assert (mask[:, b] == _brute_pareto(nat[:, b], rob[:, b])).all()
        grid = np.linspace(0, 1, 401)[:-1] + 1 / 800  # area by the midpoint rule on the exact staircase
        area = sum(max([r for n, r in zip(nat[:, b], rob[:, b]) if n >= x] + [0]) for x in grid) / 400
        assert abs(hv[b] - area) < 1e-9
    assert (pareto_mask(nat[:, 0], rob[:, 0]) == mask[:, 0]).all()
    assert hypervolume(nat[:, 0], rob[:, 0]) == pytest.approx(hv[0])


def _three_trials(tmp_path, extra_trial=False):
    trials = [{"trial_id": t, "model_name": m, "config": {"model.name": m, "model.width": w}}
              for t, m, w in [("A", "resnet", 8), ("B", "odenet", 8), ("C", "odenet", 16)]]
    if extra_trial:
        trials.append({"trial_id": "D", "model_name": "odenet", "config": {"model.name": "odenet", "model.width": 32}})
    write_trials(tmp_path, trials)
    for t, (clean, robust) in {"A": (90, 20), "B": (70, 40), "C": (60, 30), "D": (70, 40)}.items():
        if t != "D" or extra_trial:
            write_cell(tmp_path, t, "pgd", 0.1, *outcomes(100, clean, robust))
    return finish(tmp_path)


def test_points_front_probabilities_hypervolume_and_fitted_curve(tmp_path):
    sweep = load_sweep(_three_trials(tmp_path, extra_trial=True))
    f = analyse_fronts(sweep, resamples=400, seed=1)
    p = f.points[f.points["scope"] == "all"].set_index("config_key")
    assert p.loc["A", "natural_acc"] == 0.9 and p.loc["A", "robust_acc"] == 0.2
    assert p.loc["C", "natural_acc"] == 0.6 and p.loc["C", "robust_acc"] == 0.3
    assert p["on_front"].to_dict() == {"A": True, "B": True, "C": False, "D": True}  # D identical to B: both on it
    # B's correct/robust examples contain C's, so B dominates C in every resample; A is always the most accurate.
    assert p.loc["C", "p_front"] == 0.0 and p.loc["A", "p_front"] == 1.0 and p.loc["B", "p_front"] == 1.0
    assert (p["ci_low"] <= p["robust_acc"]).all() and (p["robust_acc"] <= p["ci_high"]).all()
    assert (p["ci_high"] - p["ci_low"] > 0.05).all()
    # Same examples resampled for every trial: identical outcomes give identical intervals.
    assert p.loc["B", ["ci_low", "ci_high"]].tolist() == p.loc["D", ["ci_low", "ci_high"]].tolist()
    hv = f.hypervolumes.set_index("scope").loc["all"]
    assert hv["hypervolume"] == pytest.approx(0.9 * 0.2 + 0.7 * 0.2)
    assert hv["ci_low"] < hv["hypervolume"] < hv["ci_high"]
    c = f.curves[f.curves["scope"] == "all"]
    x, y = c["natural_acc"].to_numpy(), c["robust_fit"].to_numpy()
    assert np.allclose(y, np.where(x <= 0.7, 0.4, 0.4 - (x - 0.7)))  # flat, then linear from (0.7,.4) to (0.9,.2)
    assert (np.diff(y) <= 1e-12).all()
    ok = np.isfinite(c["band_low"])
    assert ok.mean() > 0.8
    assert (c["band_low"][ok] <= y[ok] + 1e-12).all() and (y[ok] <= c["band_high"][ok] + 1e-12).all()
    assert set(f.points["scope"]) == {"all", "resnet", "odenet"}  # per family too


def test_frontier_curve_is_undefined_beyond_the_most_accurate_point():
    y = frontier_curve(np.array([0.5, 0.8]), np.array([0.6, 0.1]), np.array([0.2, 0.5, 0.65, 0.8, 0.9]))
    assert np.allclose(y[:4], [0.6, 0.6, 0.35, 0.1]) and np.isnan(y[4])


def test_seed_replicates_are_averaged_with_their_spread(tmp_path):
    trials = [{"trial_id": t, "model_name": "mlp", "config": {"model.name": "mlp", "model.width": w, "seed": s}}
              for t, w, s in [("a1", 8, 1), ("a2", 8, 2), ("b1", 16, 1)]]
    write_trials(tmp_path, trials, {"config_id": ["w8", "w8", "w16"], "seed": [1, 2, 1]})
    for t, (clean, robust) in {"a1": (80, 40), "a2": (80, 50), "b1": (60, 55)}.items():
        write_cell(tmp_path, t, "pgd", 0.1, *outcomes(100, clean, robust))
    sweep = load_sweep(finish(tmp_path))
    assert sweep.trials.set_index("trial_id")["label"].to_dict() == {"a1": "width=8", "a2": "width=8",
                                                                     "b1": "width=16"}
    p = analyse_fronts(sweep, resamples=300).points.set_index("config_key")
    assert len(p) == 2 and p.loc["w8", "n_seeds"] == 2 and p.loc["w8", "trial_ids"] == "a1,a2"
    assert p.loc["w8", "robust_acc"] == pytest.approx(0.45)
    assert p.loc["w8", "seed_sd_robust"] == pytest.approx(np.std([0.4, 0.5], ddof=1))
    assert np.isnan(p.loc["w16", "seed_sd_robust"])
    # Resampling seeds widens the interval beyond the example-only one of a single replicate.
    assert p.loc["w8", "ci_high"] - p.loc["w8", "ci_low"] > 0.1


def test_trial_label_names_what_varies_and_prefers_trial_name():
    import pandas as pd

    df = pd.DataFrame({"trial_id": ["x", "y", "z"], "trial_index": [0, 1, 2], "model_name": ["odenet"] * 3,
                       "config.model.name": ["odenet"] * 3, "config.model.solver": ["dopri5", "euler", "euler"],
                       "config.training.lr": [0.1, 0.1, 0.01], "config.training.seed": [1, 2, 3],
                       "config.model.blocks": [2, None, None]})  # set for one model only: not a difference
    assert trial_label(df).tolist() == ["dopri5·lr=0.1", "euler·lr=0.1", "euler·lr=0.01"]
    df["trial_name"] = ["n0", "n1", "n2"]
    assert trial_label(df).tolist() == ["n0", "n1", "n2"]


def test_ensemble_is_the_per_example_worst_case(tmp_path):
    write_trials(tmp_path, [{"trial_id": "A", "model_name": "m", "config": {}}])
    label = np.zeros(6, np.int32)
    clean = np.zeros(6, np.int32)
    write_cell(tmp_path, "A", "pgd", 0.1, label, clean, [0, 0, 1, 1, 0, 0])
    write_cell(tmp_path, "A", "square", 0.1, label, clean, [0, 1, 0, 1, 0, 0], name="square", grad=[None] * 6)
    sweep = load_sweep(finish(tmp_path))
    ens = sweep.cell("ensemble", 0.1)
    assert ens.robust[0].tolist() == [True, False, False, False, True, True]


def test_partial_and_missing_results_are_named(tmp_path):
    _three_trials(tmp_path)
    write_cell(tmp_path, "A", "fgsm", 0.1, *outcomes(100, 90, 30), name="fgsm")
    write_trials(tmp_path, [{"trial_id": "A", "model_name": "resnet", "config": {"model.width": 8}},
                            {"trial_id": "B", "model_name": "odenet", "config": {"model.width": 9}},
                            {"trial_id": "C", "model_name": "odenet", "config": {"model.width": 10}},
                            {"trial_id": "E", "model_name": "odenet", "status": "early_stopped",
                             "config": {"model.width": 11}}])
    sweep = load_sweep(tmp_path)
    assert any("1 of 4 trials not completed" in n and "early_stopped: 1" in n for n in sweep.notes)
    assert any(n.startswith("fgsm at eps=0.1 missing for 2 trial(s)") for n in sweep.notes)
    with pytest.raises(SpecError, match="'pgd' was not run at eps=0.3"):
        sweep.cell("pgd", 0.3)
    with pytest.raises(SpecError, match="attack 'cw' was not run"):
        sweep.cell("cw", 0.1)


def test_bad_directories_are_one_line_exit_2(tmp_path):
    from typer.testing import CliRunner

    from advsweep.cli import app

    runner = CliRunner()
    empty = tmp_path / "empty"
    empty.mkdir()
    for args, needle in ((["report", str(tmp_path / "nowhere")], "no such directory"),
                         (["audit", str(empty)], "not a sweep directory"),
                         (["compare", str(empty), "a", "b", "--attack", "pgd", "--eps", "0.1"], "not a sweep")):
        res = runner.invoke(app, args)
        assert res.exit_code == 2, res.output
        assert needle in res.output and res.output.count("\n") == 1
    write_trials(tmp_path / "noex", [{"trial_id": "A", "model_name": "m", "config": {}}])
    res = runner.invoke(app, ["audit", str(tmp_path / "noex")])
    assert res.exit_code == 2 and "no attack results" in res.output
    write_trials(tmp_path / "none", [{"trial_id": "A", "model_name": "m", "status": "failed", "config": {}}])
    res = runner.invoke(app, ["report", str(tmp_path / "none")])
    assert res.exit_code == 2 and "no completed trials" in res.output
    assert not (tmp_path / "none" / "report").exists()


def test_attacks_on_different_example_subsets_share_one_example_axis(tmp_path):
    write_trials(tmp_path, [{"trial_id": "A", "model_name": "m", "config": {}}])
    write_cell(tmp_path, "A", "pgd", 0.1, *outcomes(100, 80, 40))
    write_cell(tmp_path, "A", "fgsm", 0.1, *outcomes(50, 40, 30), name="fgsm", index=np.arange(50, 100))
    sweep = load_sweep(finish(tmp_path))
    assert sweep.examples.tolist() == list(range(100))
    fgsm, ens = sweep.cell("fgsm", 0.1), sweep.cell("ensemble", 0.1)
    assert fgsm.present[0].tolist() == [False] * 50 + [True] * 50
    assert ens.present[0].sum() == 50 and fgsm.accuracy()[0] == 30 / 50


def test_thresholded_minimal_distortion_rows_become_frontier_cells(tmp_path):
    """The engine writes a minimal-distortion attack's ε > 0 rows by thresholding its distances (ε = 0: as found);
    those rows are frontier cells, the ε = 0 rows feed the distance statistics."""
    write_trials(tmp_path, [{"trial_id": t, "model_name": "m", "config": {"model.width": w}}
                            for t, w in (("A", 8), ("B", 16))])
    label = np.zeros(5, np.int32)
    for t, dist, clean in (("A", [0.2, 0.6, 1.5, np.inf, 0.0], [0, 0, 0, 0, 1]),
                           ("B", [0.7, 0.8, 0.9, 1.2, 2.0], [0, 0, 0, 0, 0])):
        dist = np.array(dist, np.float32)
        clean = np.array(clean, np.int32)
        for eps in (0.0, 0.5, 1.0):
            broken = np.isfinite(dist) & (clean == 0) & ((dist <= eps) | (eps == 0))
            adv = np.where(broken, 3, clean).astype(np.int32)
            write_cell(tmp_path, t, "deepfool", eps, label, clean, adv, name="deepfool", norm="none", distance=dist)
    sweep = load_sweep(finish(tmp_path))
    half = sweep.cell("deepfool", 0.5)
    assert half.derived_from == "deepfool" and sweep.cell("deepfool", 0.0).derived_from is None
    assert half.robust.tolist() == [[False, True, True, True, False], [True, True, True, True, True]]
    assert sweep.cell("deepfool", 1.0).accuracy().tolist() == [0.4, 0.4]
    pts = analyse_fronts(sweep, resamples=50).points
    assert set(zip(pts["attack"], pts["eps"])) == {("deepfool", 0.5), ("deepfool", 1.0)}
    from advsweep.analysis.paired import compare

    res = compare(sweep, "A", "B", "deepfool", 0.5)
    assert (res["mcnemar"]["only_a"], res["mcnemar"]["only_b"]) == (0, 2)
    assert len(res["wilcoxon"]) == 1  # on the ε = 0 distances
