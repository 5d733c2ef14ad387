"""Schema version 3 of the result tables: config columns queried unquoted, names in every table, ε as a hive
partition that reads back bit-identical, ε written as a fraction, and sweeps written by version 2 still read.

tests/data/sweep_v2 is a real sweep (two MLPs, natural vs PGD-AT, on Fashion-MNIST; FGSM and PGD at ε = 8/255)
written by `advsweep run` at schema version 2; its Parquet tables, sweep.json and spec.yaml are kept, not its
checkpoints or MLflow store.
"""
import json
import shutil
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from advsweep.evaluation.aggregate import robustness_table
from advsweep.registry import SpecError
from advsweep.storage import schema as S
from advsweep.storage.parquet import (example_dataset, example_file, examples_table, read_examples, read_robustness,
                                      read_trials, sweep_schema_version, trial_rows, trials_table, write_atomic)

V2 = Path(__file__).parent / "data" / "sweep_v2"
EPS = [0.0, 8 / 255, 0.1, 1e-5, 2 / 3, 0.3, 16 / 255]


@pytest.fixture
def v2(tmp_path):
    """A copy of the version 2 sweep (analysis writes beside the tables)."""
    return Path(shutil.copytree(V2, tmp_path / "v2"))


def _examples(out: Path, trial_id: str, attack: str, eps: float, n: int = 3) -> None:
    rows = {"sweep_id": ["s"] * n, "attack_name": ["pgd"] * n, "attack_params": ["{}"] * n, "norm": ["linf"] * n,
            "shard": [0] * n, "example_index": list(range(n)), "label": [1] * n, "clean_pred": [1] * n,
            "adv_pred": [1, 0, 1][:n], "robust": [True, False, True][:n], "steps": [5] * n}
    write_atomic(examples_table(rows), example_file(out, trial_id, attack, eps, 0), "s")


# ---- ε as a hive partition ---------------------------------------------------------------------------------------

def test_eps_partition_reads_back_bit_identical_in_every_reader(tmp_path):
    for e in EPS:
        _examples(tmp_path, "t0", "pgd", e)
    f = example_file(tmp_path, "t0", "pgd", 8 / 255, 0)
    assert f.relative_to(tmp_path).as_posix() == "examples/trial_id=t0/attack=pgd/eps=0.03137254901960784/shard-00000.parquet"
    assert "eps" not in pq.read_schema(f).names  # stored once, in the directory name
    want = sorted(EPS)
    assert sorted(set(read_examples(tmp_path).column("eps").to_pylist())) == want
    assert sorted(set(example_dataset(tmp_path).to_table(columns=["eps"]).column("eps").to_pylist())) == want
    assert read_examples(tmp_path, filter=ds.field("eps") == 8 / 255).num_rows == 3
    duck = duckdb.sql(f"SELECT DISTINCT eps FROM read_parquet('{tmp_path}/examples/**/*.parquet', "
                      "hive_types={'eps': 'DOUBLE'}) ORDER BY eps").fetchall()
    assert [r[0] for r in duck] == want
    pandas = pd.read_parquet(tmp_path / "examples")  # pandas sees partition values as text: float() is exact
    assert sorted(set(pandas["eps"].astype(str).map(float))) == want


def test_finished_units_are_found_by_their_eps_partition(tmp_path):
    from advsweep.evaluation.engine import TrialRef, pending_units
    from advsweep.evaluation.units import AttackConfig

    attack = AttackConfig("pgd", "pgd", (8 / 255, 0.1), {"steps": 2})
    units, todo = pending_units(tmp_path, [TrialRef("t0", "ckpt", 0)], [attack], n=3, shard_size=3)
    assert len(units) == len(todo) == 2
    _examples(tmp_path, "t0", "pgd", 8 / 255)
    _, todo = pending_units(tmp_path, [TrialRef("t0", "ckpt", 0)], [attack], n=3, shard_size=3)
    assert [u.eps for u in todo] == [(0.1,)]


# ---- trials table ------------------------------------------------------------------------------------------------

def _trial(i: int, width: int, recipe: str, nat: float) -> dict:
    return {"schema_version": S.SCHEMA_VERSION, "sweep_id": "s", "trial_id": f"t{i}", "trial_index": i,
            "trial_name": f"mlp·{recipe}·width={width}", "config_name": f"mlp·{recipe}·width={width}", "family": 0,
            "seed": 0, "config_id": f"c{i}", "model_name": "mlp", "status": "completed", "natural_acc": nat,
            "natural_ci_low": nat - 0.05, "natural_ci_high": nat + 0.05,
            "robust_summary": [{"attack": "pgd", "eps": 0.1, "robust_acc": 0.5, "ci_low": 0.4, "ci_high": 0.6}],
            "config": {"model.name": "mlp", "model.width": width, "training.recipe.name": recipe,
                       "training.lr": 0.1, "model.hidden": [width, width]}}


def test_config_columns_are_unquoted_names_that_round_trip(tmp_path):
    rows = [_trial(0, 8, "natural", 0.9), _trial(1, 16, "trades", 0.8)]
    write_atomic(trials_table(rows), tmp_path / "trials" / "part-0.parquet", "s")
    t = read_trials(tmp_path)
    assert {"config_model_width", "config_training_recipe_name", "config_model_hidden"} <= set(t.column_names)
    assert not [c for c in t.column_names if "." in c]
    assert t.schema.field("config_model_width").type == pa.int64()
    assert t.schema.field("config_model_width").metadata == {S.CONFIG_KEY: b"model.width"}
    assert "robust" not in t.column_names and t.schema.field("robust_summary").type == pa.list_(S.ROBUST_ITEM)
    back = trial_rows(tmp_path)
    # dotted keys again; lists are stored as JSON text (config_json keeps the structured value)
    assert [r["config"] for r in back] == [{**r["config"], "model.hidden": json.dumps(r["config"]["model.hidden"])}
                                           for r in rows]
    q = duckdb.sql(f"SELECT trial_name, config_model_width FROM '{tmp_path}/trials/*.parquet' "
                   "WHERE config_training_recipe_name = 'trades'").fetchall()
    assert q == [("mlp·trades·width=16", 16)]
    df = pd.read_parquet(tmp_path / "trials")
    assert df[df.config_model_width > 8].trial_name.tolist() == ["mlp·trades·width=16"]
    with pytest.raises(ValueError, match="config_model_a_b"):
        trials_table([{**rows[0], "config": {"model.a_b": 1, "model.a.b": 2}}])


def test_robustness_rows_carry_their_trial(tmp_path):
    rows = [_trial(0, 8, "natural", 0.9), _trial(1, 16, "trades", 0.8)]
    write_atomic(trials_table(rows), tmp_path / "trials" / "part-0.parquet", "s")
    for i in range(2):
        _examples(tmp_path, f"t{i}", "pgd", 0.1)
    rob = robustness_table(read_examples(tmp_path), None, trial_rows(tmp_path))
    write_atomic(rob, tmp_path / "robustness" / "part-0.parquet", "s")
    r = pd.read_parquet(tmp_path / "robustness").sort_values("trial_id")
    assert r.trial_name.tolist() == ["mlp·natural·width=8", "mlp·trades·width=16"]
    assert r.recipe.tolist() == ["natural", "trades"] and r.model_name.tolist() == ["mlp", "mlp"]
    assert r.natural_acc.tolist() == [0.9, 0.8] and (r.natural_ci_low < r.natural_acc).all()
    assert r.robust_acc.tolist() == [2 / 3, 2 / 3]


# ---- ε written as a fraction -------------------------------------------------------------------------------------

FRACTION_SPEC = """
name: fractions
data: {dataset: fashion-mnist, n_train: 200, n_test: 40}
trials:
  - model: {name: mlp}
    training: {recipe: {name: trades, eps: {grid: [8/255, "4/255"]}}, epochs: 1}
  - model: {name: mlp}
    training: {recipe: {name: pgd_at, eps: 2/255, step: 1/255}, epochs: 1}
attacks:
  - {name: pgd, eps: [8/255, 0.1, 0], steps: 3, alpha: 2/255}
monitor: {eps: 8/255}
"""


def test_eps_may_be_a_fraction_and_is_stored_as_the_float():
    from advsweep.spec import parse_spec

    spec = parse_spec(FRACTION_SPEC)
    assert spec.raw.attacks[0].eps == [8 / 255, 0.1, 0.0]
    assert spec.raw.monitor.eps == 8 / 255
    assert [t.training.recipe["eps"] for t in spec.trials] == [8 / 255, 4 / 255, 2 / 255]
    assert spec.trials[2].training.recipe["step"] == 1 / 255  # an ℓ∞ step size too
    assert spec.raw.attacks[0].options["alpha"] == 2 / 255  # what the engine will build the attack with
    assert json.loads(json.dumps(spec.trials[0].training.recipe))["eps"] == 8 / 255  # a float, not the text


@pytest.mark.parametrize("old, new, field", [
    ("eps: [8/255, 0.1, 0]", "eps: [8/0, 0.1, 0]", "attacks[0].eps[0]"),
    ("eps: [8/255, 0.1, 0]", "eps: [0.1, eight]", "attacks[0].eps[1]"),
    ("monitor: {eps: 8/255}", "monitor: {eps: 8//255}", "monitor.eps"),
    ("monitor: {eps: 8/255}", "monitor: {eps: 300/255}", "monitor.eps"),
    ("eps: 2/255,", "eps: 2/255/3,", "trials[1].training.recipe.eps"),
    ("alpha: 2/255", "alpha: 2/x", "attacks[0].alpha"),
])
def test_a_bad_fraction_is_one_line_naming_the_field(old, new, field):
    from advsweep.spec import parse_spec

    with pytest.raises(SpecError) as exc:
        parse_spec(FRACTION_SPEC.replace(old, new))
    assert exc.value.field == field and "\n" not in str(exc.value)
    assert "Value error" not in str(exc.value)


def test_a_suite_takes_fractions(tmp_path):
    from advsweep.spec import load_suite

    (tmp_path / "suite.yaml").write_text("attacks:\n  - {name: fgsm, eps: [4/255, 8/255]}\n")
    assert load_suite(tmp_path / "suite.yaml").attacks[0].eps == [4 / 255, 8 / 255]


# ---- a sweep written by schema version 2 ---------------------------------------------------------------------------

def test_version_2_tables_read_in_the_version_3_form():
    assert sweep_schema_version(V2) == "2" and S.SCHEMA_VERSION == "3"
    raw = pq.read_schema(next((V2 / "trials").glob("*.parquet")))
    assert "config.model.name" in raw.names and "robust" in raw.names  # really the old layout
    t = read_trials(V2)
    assert "config_training_recipe_name" in t.column_names and "robust_summary" in t.column_names
    assert not [c for c in t.column_names if c.startswith("config.")]
    assert t.column("trial_name").to_pylist() == ["natural", "pgd_at"]  # what varies: the recipe
    rows = trial_rows(V2)
    assert rows[1]["config"]["training.recipe.name"] == "pgd_at" and rows[1]["config"]["training.recipe.eps"] == 0.1
    assert {x["attack"] for x in rows[0]["robust_summary"]} == {"fgsm", "pgd"}
    rob = read_robustness(V2).to_pandas()
    assert set(rob.trial_name) == {"natural", "pgd_at"} and set(rob.recipe) == {"natural", "pgd_at"}
    nat = dict(zip(t.column("trial_id").to_pylist(), t.column("natural_acc").to_pylist()))
    assert (rob.natural_acc == rob.trial_id.map(nat)).all()
    ex = read_examples(V2)
    assert ex.schema.field("eps").type == pa.float64()
    assert sorted(set(ex.column("eps").to_pylist())) == [8 / 255, 0.05, 0.1]  # file names say 0.0313725
    d = example_dataset(V2)
    assert d.to_table(columns=["eps"], filter=ds.field("attack") == "pgd").column("eps").to_pylist()[0] == 8 / 255


def test_version_2_sweep_goes_through_the_analysis(v2):
    from advsweep.analysis.audit import run_audit
    from advsweep.analysis.frontier import write_frontiers
    from advsweep.analysis.report import build_report
    from advsweep.analysis.tables import load_sweep

    sweep = load_sweep(v2)
    assert sweep.trials["label"].tolist() == ["natural", "pgd_at"]
    assert sorted(sweep.cells) == [("fgsm", 0.05), ("fgsm", 0.1), ("pgd", 8 / 255)]
    files = write_frontiers(v2)
    front = pd.read_csv(v2 / "frontier" / "front.csv")
    assert set(front.trial_name) == {"natural", "pgd_at"} and set(front.recipe) == {"natural", "pgd_at"}
    assert set(front.natural_acc) == {0.6, 0.425}  # what the version 2 trials table says
    assert any(f.suffix == ".png" for f in files)
    assert set(run_audit(sweep).verdicts["label"]) == {"natural", "pgd_at"}
    report = build_report(v2, resamples=50)
    assert "pgd_at" in report.path.read_text()


def test_attacks_are_not_added_to_a_version_2_sweep(v2):
    from advsweep.evaluation.units import AttackConfig
    from advsweep.sweep.evaluate import check_evaluation

    with pytest.raises(SpecError, match="schema version 2"):
        check_evaluation(v2, trial_rows(v2), [AttackConfig("pgd2", "pgd", (0.1,))])


def test_a_version_2_sweep_is_not_resumed(v2):
    from advsweep.spec import load_spec
    from advsweep.sweep.driver import run_sweep

    before = sorted(p.stat().st_mtime_ns for p in v2.rglob("*"))
    with pytest.raises(SpecError, match="not resumed by schema version 3"):
        run_sweep(load_spec(v2 / "spec.yaml"), v2, resume=True)
    assert sorted(p.stat().st_mtime_ns for p in v2.rglob("*")) == before
