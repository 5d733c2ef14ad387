"""Paired comparisons on hand-made per-example tables: exact McNemar counts and p-values, Wilcoxon on minimal
distances with misclassified (0) and unbroken (inf) examples, and the `advsweep compare` command."""
import sys
from math import comb
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from advsweep.analysis.paired import compare
from advsweep.analysis.tables import load_sweep
from advsweep.registry import SpecError

sys.path.insert(0, str(Path(__file__).parent))
from analysis_synth import finish, write_cell, write_trials  # noqa: E402

N = 40


@pytest.fixture
def sweep_dir(tmp_path):
    write_trials(tmp_path, [{"trial_id": t, "model_name": "m", "config": {"model.width": w}}
                            for t, w in (("A", 8), ("B", 16))])
    label = np.zeros(N, np.int32)
    clean = np.zeros(N, np.int32)
    # Robust for A only on examples 0-7, for B only on 25; both robust on 8-19; neither on the rest.
    adv_a = np.where(np.arange(N) < 20, 0, 1)
    adv_b = np.where((np.arange(N) >= 8) & (np.arange(N) < 20), 0, 1)
    adv_b[25] = 0
    write_cell(tmp_path, "A", "pgd", 0.1, label, clean, adv_a)
    write_cell(tmp_path, "B", "pgd", 0.1, label, clean, adv_b)
    rng = np.random.default_rng(3)
    da = rng.uniform(0.5, 2.0, N).astype(np.float32)
    db = (da - 0.3).astype(np.float32)
    clean_b = clean.copy()
    clean_b[0] = 5  # B misclassifies example 0: distance 0
    da[1] = np.inf  # DeepFool found nothing for A on example 1
    adv_dfa = np.ones(N, np.int32)
    adv_dfa[1] = 0
    write_cell(tmp_path, "A", "deepfool", 0.0, label, clean, adv_dfa, name="deepfool", norm="none", distance=da)
    write_cell(tmp_path, "B", "deepfool", 0.0, label, clean_b, np.ones(N, np.int32), name="deepfool", norm="none",
               distance=np.where(clean_b == label, db, 0).astype(np.float32))
    return finish(tmp_path)


def test_mcnemar_exact_and_wilcoxon_on_minimal_distances(sweep_dir):
    res = compare(load_sweep(sweep_dir), "A", "B", "pgd", 0.1)
    m = res["mcnemar"]
    assert (m["only_a"], m["only_b"], m["n"]) == (8, 1, N)
    assert m["p_value"] == pytest.approx(2 * (comb(9, 0) + comb(9, 1)) / 2 ** 9)
    assert m["diff"] == pytest.approx(7 / N) and m["diff_ci_low"] < 7 / N < m["diff_ci_high"]
    assert m["odds_ratio"] == 8
    [w] = res["wilcoxon"]
    da = np.random.default_rng(3).uniform(0.5, 2.0, N).astype(np.float32)
    db = (da - np.float32(0.3)).astype(np.float64)
    da = da.astype(np.float64)
    db[0] = 0.0     # B misclassifies example 0
    da[1] = 1e9     # A never broken on example 1: the largest positive difference (any value above all others)
    expected = stats.wilcoxon(da - db)
    assert w["p_value"] == pytest.approx(expected.pvalue) and w["statistic"] == pytest.approx(expected.statistic)
    assert w["rank_biserial"] == pytest.approx(1.0)  # A needs a larger perturbation on every example
    assert w["median_a"] > w["median_b"] and w["n"] == N


def test_compare_cli_and_bad_input(sweep_dir):
    from typer.testing import CliRunner

    from advsweep.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["compare", str(sweep_dir), "A", "1", "--attack", "pgd", "--eps", "0.1"])
    assert res.exit_code == 0, res.output
    assert "exact McNemar: robust only for A 8, only for B 1" in res.output and "Wilcoxon signed-rank" in res.output
    res = runner.invoke(app, ["compare", str(sweep_dir), "A", "B", "--attack", "pgd", "--eps", "0.2"])
    assert res.exit_code == 2 and "was not run at eps=0.2" in res.output
    res = runner.invoke(app, ["compare", str(sweep_dir), "A", "B", "--attack", "pgd"])
    assert res.exit_code == 2 and "give --eps" in res.output
    with pytest.raises(SpecError, match="no completed trial"):
        compare(load_sweep(sweep_dir), "A", "Z", "pgd", 0.1)


def test_duckdb_query_from_the_readme_gives_the_same_discordant_counts(sweep_dir):
    import duckdb

    q = f"""
    WITH ex AS (SELECT * FROM read_parquet('{sweep_dir}/examples/**/*.parquet', hive_partitioning = true)
                WHERE attack = 'pgd' AND eps = 0.1),
         a AS (SELECT example_index, robust FROM ex WHERE trial_id = 'A'),
         b AS (SELECT example_index, robust FROM ex WHERE trial_id = 'B')
    SELECT sum((a.robust AND NOT b.robust)::INT) AS only_a, sum((b.robust AND NOT a.robust)::INT) AS only_b
    FROM a JOIN b USING (example_index)"""
    assert duckdb.sql(q).fetchall() == [(8, 1)]


def test_paired_difference_interval_covers_and_never_ends_at_the_estimate():
    from advsweep.analysis.paired import newcombe_paired

    lo, hi = newcombe_paired(60, 0, 95, 145)  # the ODENet-vs-TRADES table: nothing robust for A only
    assert lo < -95 / 300 < hi < 0
    lo, hi = newcombe_paired(150, 0, 0, 150)  # no discordant examples: still a width, centred on 0
    assert lo < 0 < hi and lo == pytest.approx(-hi)
    # Coverage under a known paired model (Monte Carlo, fixed seed): close to the nominal 95 %.
    rng = np.random.default_rng(0)
    probs = np.array([0.45, 0.08, 0.04, 0.43])  # both, only A, only B, neither: true difference 0.04
    hits = 0
    for _ in range(600):
        lo, hi = newcombe_paired(*rng.multinomial(200, probs))
        hits += lo <= 0.04 <= hi
    assert 0.92 <= hits / 600 <= 0.985
