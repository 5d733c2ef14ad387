"""Spec validation: bad input → one line naming the field or file, exit 2, nothing written."""
import subprocess
import sys
from pathlib import Path

import pytest

from advsweep.registry import SpecError
from advsweep.spec import parse_spec

sys.path.insert(0, str(Path(__file__).parent))
from tiny_spec import TINY_SPEC  # noqa: E402

ADVSWEEP = str(Path(sys.executable).parent / "advsweep")


def test_tiny_spec_expands_grid_and_random_axes():
    spec = parse_spec(TINY_SPEC)
    assert [t.model["name"] for t in spec.trials] == ["resnet", "odenet"]
    grid = parse_spec(TINY_SPEC.replace("solver: euler", "solver: {grid: [euler, rk4, dopri5]}")
                      .replace("lr: 0.05}\nattacks", "lr: {loguniform: [0.01, 0.1]}}\n    samples: 2\nattacks"))
    odes = [t for t in grid.trials if t.model["name"] == "odenet"]
    assert sorted({t.model["solver"] for t in odes}) == ["dopri5", "euler", "rk4"]
    assert len(odes) == 6 and all(0.01 <= t.training.lr <= 0.1 for t in odes)
    again = parse_spec(grid.source)
    assert [t.training.lr for t in again.trials] == [t.training.lr for t in grid.trials]  # seeded draws


@pytest.mark.parametrize("edit, field", [
    (("dataset: fashion-mnist", "dataset: svhn"), "data.dataset"),
    (("name: odenet", "name: odenett"), "trials[1].model"),
    (("solver: euler", "solver: rk45"), "trials[1].model.solver"),
    (("width: 8, blocks: 1", "width: 0, blocks: 1"), "trials[0].model.width"),
    (("n_test: 60", "n_test: -5"), "data.n_test"),
    (("n_train: 256", "n_train: 0"), "data.n_train"),
    (("eps: [0.1], steps: 3", "eps: [1.5], steps: 3"), "attacks[1].eps[0]"),
    (("name: pgd", "name: pgdd"), "attacks[1]"),
    (("steps: 3}", "stepz: 3}"), "attacks[1].stepz"),
    (("seed: 1\n", "seed: 1\nbogus: 3\n"), "bogus"),
    (("batch_size: 64, lr: 0.05}\n  - model: {name: odenet", "batch_size: 64, lr: 0.05, epocs: 3}\n  - model: {name: odenet"),
     "trials[0].training.epocs"),
    (("recipe: {name: natural}, epochs: 2, batch_size: 64, lr: 0.05}\nattacks",
      "recipe: {name: madry}, epochs: 2, batch_size: 64, lr: 0.05}\nattacks"), "trials[1].training.recipe"),
    (("solver: euler", "solver: {grid: []}"), "trials[1].model.solver"),
])
def test_bad_spec_names_field(edit, field):
    with pytest.raises(SpecError) as exc:
        parse_spec(TINY_SPEC.replace(*edit))
    assert str(exc.value).startswith(field), str(exc.value)


def _cli(*args, cwd=None):
    return subprocess.run([ADVSWEEP, *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_cli_bad_spec_exit_2_one_line_nothing_written(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text(TINY_SPEC.replace("solver: euler", "solver: rk45"))
    out = tmp_path / "out"
    r = _cli("run", str(spec), "--out", str(out))
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.strip().splitlines() if ln]
    assert len(lines) == 1 and "trials[1].model.solver" in lines[0], r.stderr
    assert not out.exists()


def test_cli_missing_spec_and_missing_data(tmp_path):
    r = _cli("run", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "nope.yaml" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    spec = tmp_path / "s.yaml"
    spec.write_text(TINY_SPEC.replace("seed: 0}", f"seed: 0, data_dir: {tmp_path / 'empty'}}}"))
    (tmp_path / "empty").mkdir()
    r = _cli("run", str(spec), "--out", str(tmp_path / "o2"))
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o2").exists()


def test_cli_refuses_non_empty_out(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(TINY_SPEC)
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    r = _cli("run", str(spec), "--out", str(out))
    assert r.returncode == 2 and "--out" in r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_cli_validate_lists_trials(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(TINY_SPEC)
    r = _cli("validate", str(spec))
    assert r.returncode == 0 and "2 trials" in r.stdout


@pytest.mark.parametrize("attack, field", [
    ("{name: pgdx, eps: [0.1]}", "attacks[0]"),
    ("{name: pgd, eps: [0.1], stepz: 3}", "attacks[0].stepz"),
    ("{name: pgd, eps: [0.1], steps: 0}", "attacks[0].steps"),
    ("{name: pgd, eps: [1.2]}", "attacks[0].eps[0]"),
    ("{name: pgd, eps: [-0.1]}", "attacks[0].eps[0]"),
    ("{name: difgsm, eps: [0.1], diversity_prob: 1.5}", "attacks[0].diversity_prob"),
    ("{name: transfer, eps: [0.1]}", "attacks[0].source_trial"),
    ("{name: pgd, eps: [0.1], source_trial: 0}", "attacks[0].source_trial"),
    ("{name: pgd, label: 'a/b', eps: [0.1]}", "attacks[0].label"),
])
def test_bad_suite_names_field(tmp_path, attack, field):
    from advsweep.spec import load_suite

    suite = tmp_path / "suite.yaml"
    suite.write_text(f"attacks:\n  - {attack}\n")
    with pytest.raises(SpecError) as exc:
        load_suite(suite)
    assert str(exc.value).startswith(field), str(exc.value)


def test_l2_eps_may_exceed_one(tmp_path):
    from advsweep.spec import load_suite

    suite = tmp_path / "suite.yaml"
    suite.write_text("attacks:\n  - {name: boundary, eps: [2.0], steps: 10}\n")
    assert load_suite(suite).attacks[0].eps == [2.0]


@pytest.mark.parametrize("suite", sorted((Path(__file__).parents[1] / "sweeps" / "suites").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_suites_load(suite):
    from advsweep.spec import load_suite

    attacks = load_suite(suite).attacks
    assert attacks
    if suite.name.startswith("masking_audit"):  # never collide with a sweep's own attack labels (`advsweep eval`)
        assert all(a.label.startswith("audit_") for a in attacks), [a.label for a in attacks]
