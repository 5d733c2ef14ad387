"""Evaluation units: minimal-distortion attacks run once per shard with ε rows derived from the distance found;
attacks that do not apply to a model are recorded, not fatal; suites can name the trials an attack runs on;
robustness rows carry the success rate, the found rate and the steps per example."""

import numpy as np
import pytest
import torch

from advsweep.attacks import build_attack
from advsweep.evaluation.checkpoints import load_model
from advsweep.evaluation.engine import EvalWorker
from advsweep.evaluation.units import AttackConfig, make_units
from advsweep.storage.parquet import read_examples, read_robustness, read_skipped
from checkpoints import make_checkpoint as _checkpoint

N, SHARD = 24, 12


@pytest.fixture(scope="module")
def data(fashion_available):
    from advsweep.data import load_dataset

    ds = load_dataset("fashion-mnist")
    train = (torch.from_numpy(ds.x_train[:3000]).float() / 255, torch.from_numpy(ds.y_train[:3000]).long())
    return ds.x_test[:N], ds.y_test[:N].astype(np.int64), np.arange(N), train


def test_unit_seeds_follow_the_trials_position_not_tunes_random_trial_id():
    """A rerun of a spec gets new Tune trial ids; its random starts must not change with them."""
    pgd = AttackConfig("pgd", "pgd", (0.05, 0.1), {"steps": 2})
    first = make_units("a1b2c_00000", [pgd], N, SHARD, trial_index=0)
    rerun = make_units("f9e8d_00000", [pgd], N, SHARD, trial_index=0)
    other = make_units("f9e8d_00001", [pgd], N, SHARD, trial_index=1)
    assert [u.seed(0) for u in first] == [u.seed(0) for u in rerun]
    assert not {u.seed(0) for u in first} & {u.seed(0) for u in other}
    assert [u.seed(0) for u in first] != [u.seed(1) for u in first]
    # No position known (a checkpoint evaluated on its own): the trial id decides.
    assert make_units("x", [pgd], N, SHARD)[0].seed(0) != make_units("y", [pgd], N, SHARD)[0].seed(0)


def test_jobs_pack_eps_batched_units_to_fill_a_pass():
    """⌈batch / shard length⌉ ε of an ε-batched attack per job; attacks that cannot batch, derived units and ε = 0 run
    alone."""
    from advsweep.evaluation.engine import jobs

    pgd = AttackConfig("pgd", "pgd", (0.0, 0.05, 0.1, 0.2), {"steps": 2})
    sq = AttackConfig("square", "square", (0.05, 0.1), {"n_queries": 5})
    df = AttackConfig("deepfool", "deepfool", (0.5, 2.0))
    units = make_units("t0", [pgd, sq, df], 37, 16)  # shards of 16, 16, 5
    grouped = jobs(units, [16, 16, 5], 32)
    shape = sorted((j[0].attack.label, j[0].shard, tuple(u.eps[0] for u in j)) for j in grouped)
    assert shape == sorted([
        ("pgd", 0, (0.0,)), ("pgd", 1, (0.0,)), ("pgd", 2, (0.0,)),
        ("pgd", 0, (0.05, 0.1)), ("pgd", 0, (0.2,)), ("pgd", 1, (0.05, 0.1)), ("pgd", 1, (0.2,)),
        ("pgd", 2, (0.05, 0.1, 0.2)),
        *[("square", s, (e,)) for s in range(3) for e in (0.05, 0.1)],
        *[("deepfool", s, (0.0,)) for s in range(3)]])
    assert sorted(map(str, sum(grouped, ()))) == sorted(map(str, units))
    # A batch no larger than the shard: full shards fill their own passes; only the short last shard packs.
    assert sorted(len(j) for j in jobs(units, [16, 16, 5], 16)) == [1] * (len(units) - 3) + [3]


def test_minimal_attacks_run_once_per_shard_and_threshold_their_distance(tmp_path, data):
    x, y, index, train = data
    ckpt = _checkpoint(tmp_path / "c", 0, "mlp", train=train)
    df_cfg = AttackConfig("deepfool", "deepfool", (0.5, 2.0), {"steps": 20})
    pgd_cfg = AttackConfig("pgd", "pgd", (0.05, 0.1), {"steps": 2})
    bnd_cfg = AttackConfig("boundary", "boundary", (1.0, 3.0), {"steps": 50})
    units = make_units("t0", [df_cfg, pgd_cfg, bnd_cfg], N, SHARD)
    assert sorted((u.attack.label, u.eps) for u in units if u.shard == 0) == [
        ("boundary", (1.0, 3.0)), ("deepfool", (0.0, 0.5, 2.0)), ("pgd", (0.05,)), ("pgd", (0.1,))]
    assert units[0].seed(0) == units[0].seed(0) and len({u.seed(0) for u in units}) == len(units)

    worker = EvalWorker(str(tmp_path / "out"), "s", 1, False)
    for u in units:
        worker.run(u, ckpt, x[u.shard * SHARD:(u.shard + 1) * SHARD], y[u.shard * SHARD:(u.shard + 1) * SHARD],
                   index[u.shard * SHARD:(u.shard + 1) * SHARD], 0, 8)
    ex = read_examples(tmp_path / "out").to_pandas()
    ex["attack"] = ex["attack"].astype(str)
    df = ex[ex["attack"] == "deepfool"]
    assert sorted(df["eps"].unique()) == [0.0, 0.5, 2.0]
    assert (df.groupby("eps").size() == N).all()
    # ε = 0: the attack as run directly (same seed, same batch size) on each shard
    model = load_model(ckpt)
    xt, yt = torch.from_numpy(x).float() / 255, torch.from_numpy(y)
    direct = torch.cat([build_attack("deepfool", model, 0.0, u.seed(0), steps=20)(
        xt[i:min(i + 8, (u.shard + 1) * SHARD)], yt[i:min(i + 8, (u.shard + 1) * SHARD)]).distance
        for u in units if u.attack.label == "deepfool" for i in range(u.shard * SHARD, (u.shard + 1) * SHARD, 8)])
    unb = df[df["eps"] == 0].sort_values("example_index")
    correct = unb["clean_pred"] == unb["label"]
    assert correct.sum() >= N // 2 and np.isfinite(unb.loc[correct, "distance"]).sum() >= N // 3
    np.testing.assert_allclose(unb["distance"].to_numpy(), direct.numpy(), rtol=1e-6)
    correct = unb["clean_pred"] == unb["label"]
    assert (unb.loc[correct, "robust"] == ~np.isfinite(unb.loc[correct, "distance"])).all()
    assert 0 < ((unb["distance"] <= 0.5) & correct).sum() < ((unb["distance"] <= 2.0) & correct).sum()
    # ε > 0: broken iff the distance found ≤ ε; the perturbation is the adversarial's or none
    for eps in (0.5, 2.0):
        r = df[df["eps"] == eps].sort_values("example_index")
        broken = correct.to_numpy() & (unb["distance"].to_numpy() <= eps)
        assert np.array_equal(~r["robust"].to_numpy() & correct.to_numpy(), broken)
        assert (r.loc[~broken & correct.to_numpy(), "l2"] == 0).all()
        assert (r.loc[broken, "l2"] <= eps + 1e-5).all()
    # every returned adversarial carries a positive margin, recorded in the engine's batch size
    assert (df.loc[df["adv_pred"] != df["label"], "margin"] > 0).all()
    assert (df.loc[df["adv_pred"] == df["label"], "margin"] < 0).all()
    # boundary (no early stop): one run gives every ε row, each within its ball, fewer robust at the larger ε
    b = ex[ex["attack"] == "boundary"]
    assert (b.groupby("eps").size() == N).all() and (b[b["eps"] == 1.0]["l2"] <= 1.0 + 1e-5).all()
    assert (b[b["eps"] == 1.0]["robust"].sum() >= b[b["eps"] == 3.0]["robust"].sum())


@pytest.mark.slow
def test_not_applicable_attacks_are_recorded_and_trial_filters_apply(ray_local, tmp_path, data):
    from advsweep.spec import parse_spec
    from advsweep.sweep.evaluate import attack_configs, check_evaluation, run_evaluation_stage

    x, y, index, _ = data
    rows = [{"trial_id": "res", "trial_index": 0, "status": "completed",
             "checkpoint": _checkpoint(tmp_path / "c0", 0, width=8, blocks=1), "config": {}},
            {"trial_id": "ode", "trial_index": 1, "status": "completed",
             "checkpoint": _checkpoint(tmp_path / "c1", 1, "odenet", width=8, solver="euler"), "config": {}}]
    spec = parse_spec("""
name: t
trials: [{model: {name: resnet, width: 8, blocks: 1}}, {model: {name: odenet, width: 8, solver: euler}}]
attacks:
  - {name: solver_surrogate, eps: [0.1], solver: rk4, step_size: 0.5, base_options: {steps: 2}}
  - {name: fgsm, eps: [0.1], trials: [1]}
  - {name: deepfool, eps: [1.0], steps: 10}
""")
    attacks = attack_configs(spec.raw.attacks)
    skip = check_evaluation(tmp_path, rows, attacks)
    assert skip == {("res", "solver_surrogate"): "resnet has no ODE blocks to change the solver of"}
    out = tmp_path
    counts = run_evaluation_stage(out, "s", rows, attacks, {"x_test": x, "y_test": y, "test_index": index},
                                  {"shard_size": SHARD, "batch_size": 8, "seed": 0}, None, num_workers=2, skip=skip)
    # solver_surrogate on ode (1 ε × 2 shards), fgsm on ode only (2), deepfool once per shard on both (4)
    assert counts["units"] == 2 + 2 + 4
    rob = read_robustness(out).to_pandas()
    na = rob[rob["status"] == "not_applicable"]
    assert na[["trial_id", "attack", "eps"]].values.tolist() == [["res", "solver_surrogate", 0.1]]
    assert "no ODE blocks" in na["reason"].iloc[0] and na["n"].iloc[0] == 0
    assert read_skipped(out).num_rows == 1
    ok = rob[rob["status"] == "ok"]
    assert set(ok[ok["attack"] == "fgsm"]["trial_id"]) == {"ode"}
    assert set(ok[ok["attack"] == "solver_surrogate"]["trial_id"]) == {"ode"}
    dfr = ok[ok["attack"] == "deepfool"]
    assert sorted(dfr["eps"].unique()) == [0.0, 1.0]
    assert dfr["found_rate"].between(0, 1).all() and (dfr["mean_steps"] > 0).all()
    unb = dfr[dfr["eps"] == 0].set_index("trial_id")
    assert np.allclose(unb["found_rate"], unb["success_rate"])  # unbounded: success = found
    pgd_like = ok[ok["attack"] == "fgsm"]
    assert pgd_like["found_rate"].isna().all() and (pgd_like["mean_steps"] == 1).all()
