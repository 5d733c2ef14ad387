"""Frontier analysis on hand-made tables written with the real schema (no Ray needed)."""
import numpy as np
import pandas as pd
import pyarrow as pa

from advsweep.analysis.frontier import compute_fronts, hypervolume, load_points, pareto_mask, write_frontiers
from advsweep.storage import schema as S
from advsweep.storage.parquet import trials_table, write_atomic


def test_pareto_mask_and_hypervolume():
    nat = np.array([0.9, 0.8, 0.7, 0.85, 0.6, 0.9])
    rob = np.array([0.1, 0.3, 0.5, 0.2, 0.4, 0.05])
    assert pareto_mask(nat, rob).tolist() == [True, True, True, True, False, False]
    # Staircase area of the front (0.9,.1) (0.85,.2) (0.8,.3) (0.7,.5) above (0, 0).
    assert abs(hypervolume(nat, rob) - (0.9 * 0.1 + 0.85 * 0.1 + 0.8 * 0.1 + 0.7 * 0.2)) < 1e-12


def _sweep(tmp_path):
    rows = []
    for i, (status, nat, name) in enumerate([("completed", 0.9, "resnet"), ("completed", 0.7, "odenet"),
                                               ("early_stopped", 0.95, "odenet"), ("error", None, "resnet")]):
        rows.append({"schema_version": "1", "sweep_id": "s", "trial_id": f"t{i}", "trial_index": i, "family": 0,
                     "model_name": name, "status": status, "natural_acc": nat, "natural_ci_low": nat and nat - 0.05,
                     "natural_ci_high": nat and nat + 0.05, "config": {"model.name": name, "model.width": 8 + i}})
    write_atomic(trials_table(rows), tmp_path / "trials" / "part-0.parquet", "s")
    rob = [{"sweep_id": "s", "trial_id": f"t{i}", "attack": "pgd", "attack_name": "pgd", "norm": "linf", "eps": 0.1,
            "n": 100, "n_robust": r, "robust_acc": r / 100, "ci_low": r / 100 - 0.1, "ci_high": r / 100 + 0.1}
           for i, r in enumerate([20, 40, 90])]  # the early-stopped t2 would dominate everything
    write_atomic(pa.Table.from_pylist(rob, schema=S.ROBUSTNESS), tmp_path / "robustness" / "part-0.parquet", "s")


def test_early_stopped_and_failed_trials_never_reach_a_front(tmp_path):
    _sweep(tmp_path)
    points = load_points(tmp_path)
    assert sorted(points["trial_id"]) == ["t0", "t1"]
    fronts = compute_fronts(points)
    assert fronts["on_front"].all()  # t0 (0.9, 0.2) and t1 (0.7, 0.4) trade off
    files = write_frontiers(tmp_path)
    png = tmp_path / "frontier" / "pgd_eps0.1.png"
    assert png in files and png.read_bytes()[:4] == b"\x89PNG"
    back = pd.read_parquet(tmp_path / "frontier" / "front.parquet")
    assert set(back["trial_id"]) == {"t0", "t1"}


def test_trials_table_types_config_columns(tmp_path):
    _sweep(tmp_path)
    from advsweep.storage.parquet import read_trials

    t = read_trials(tmp_path)
    assert t.schema.field("config_model_width").type == pa.int64()
    assert t.schema.field("natural_acc").type == pa.float64()


def test_accuracy_vs_eps_curves_from_minimal_distortion(tmp_path):
    from advsweep.analysis.curves import accuracy_curves, distortion_summary, minimal_examples, write_curves
    from advsweep.storage.parquet import example_file, examples_table

    _sweep(tmp_path)
    # t0: 4 examples; #0 misclassified clean, #1 and #2 broken at ℓ2 0.5 and 1.5, #3 no adversarial found.
    rows = {"sweep_id": ["s"] * 4, "attack_name": ["deepfool"] * 4, "attack_params": ["{}"] * 4,
            "norm": ["none"] * 4, "eps": [0.0] * 4, "shard": [0] * 4, "example_index": [10, 11, 12, 13],
            "label": [1, 2, 3, 4], "clean_pred": [0, 2, 3, 4], "adv_pred": [0, 5, 6, 4],
            "robust": [False, False, False, True], "linf": [0.0, 0.1, 0.3, 0.0], "l2": [0.0, 0.5, 1.5, 0.0],
            "rms": [0.0, 0.5 / 28, 1.5 / 28, 0.0], "distance": [0.0, 0.5, 1.5, None], "steps": [0, 3, 5, 50],
            "grad_norm": [1.0] * 4, "seed": [1] * 4, "wall_time_s": [0.1] * 4}
    write_atomic(examples_table(rows), example_file(tmp_path, "t0", "deepfool", 0.0, 0), "s")
    df = minimal_examples(tmp_path)
    curves = accuracy_curves(df)
    l2 = curves[curves["measure"] == "l2"].set_index("eps")["robust_acc"]
    assert l2.iloc[0] == 0.75  # at ε = 0 all but the misclassified one survive
    assert l2[(l2.index > 0.5) & (l2.index < 1.5)].eq(0.5).all()
    assert l2[l2.index > 1.5].eq(0.25).all()  # the unbroken example stays robust at every ε
    summary = distortion_summary(df).iloc[0]
    assert summary["found_rate"] == 2 / 3 and summary["median_l2"] == 1.0
    files = write_curves(tmp_path)
    assert (tmp_path / "curves" / "deepfool_l2.png") in files
