"""What the CLI prints: the results table (`show`, and the end of `run` / `eval`), `best`, `export --robustbench`,
`list`, `--version` / `-h`, the evaluation progress, and Tune's trimmed output. Hand-made sweep directories in the
real schema (tests/analysis_synth.py) give exactly known answers; one tiny real sweep checks `run` and `eval` as a
user runs them (output piped: no colour codes, no config dumps)."""
import csv
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from advsweep.analysis.summary import eps_text, load_results, parse_eps
from advsweep.cli import app
from advsweep.evaluation.stats import wilson_interval
from advsweep.evaluation.units import AttackConfig, Unit
from advsweep.registry import SpecError
from advsweep.sweep.progress import EvalProgress

sys.path.insert(0, str(Path(__file__).parent))
from analysis_synth import finish, outcomes, write_cell, write_trials  # noqa: E402

N = 100
runner = CliRunner()
# trial → (natural correct of N, {(attack, ε): robust of N})
TRUTH = {
    "A": (90, {("pgd", 0.1): 30, ("pgd", 0.3): 5, ("fgsm", 0.1): 50}),
    "B": (70, {("pgd", 0.1): 45, ("pgd", 0.3): 20, ("fgsm", 0.1): 55, ("autoattack", 0.1): 40}),
}


def _sweep(root: Path, status: str = "finished") -> Path:
    trials = [{"trial_id": t, "model_name": "mlp", "natural_acc": k / N,
               "natural_ci_low": wilson_interval(k, N)[0], "natural_ci_high": wilson_interval(k, N)[1],
               "n_test": N, "nfe_forward": 0.0, "checkpoint": f"ckpt/{t}",
               "config_json": json.dumps({"model": {"name": "mlp", "hidden": [h]}}),
               "config": {"model.name": "mlp", "model.hidden": json.dumps([h])}}
              for t, k, h in (("A", 90, 16), ("B", 70, 32))]
    trials.append({"trial_id": "C", "model_name": "mlp", "status": "failed", "natural_acc": None,
                   "natural_ci_low": None, "natural_ci_high": None, "config": {"model.name": "mlp",
                                                                               "model.hidden": "[64]"}})
    write_trials(root, trials)
    for t, (_, cells) in TRUTH.items():
        for (attack, eps), k in cells.items():
            label, clean, adv = outcomes(N, N, k)
            write_cell(root, t, attack, eps, label, clean, adv, name=attack)
        # a minimal-distortion attack: its ε = 0 row is the unbounded result and stays out of the table
        label, clean, adv = outcomes(N, N, 0)
        write_cell(root, t, "deepfool", 0.0, label, clean, adv, name="deepfool", norm="none",
                   distance=np.full(N, 0.5, np.float32))
    finish(root)
    (root / "sweep.json").write_text(json.dumps({"sweep_id": "synth", "status": status,
                                                 "data": {"dataset": "fashion-mnist", "n_test": N}}))
    return root


@pytest.fixture
def sweep(tmp_path):
    return _sweep(tmp_path / "sweep")


def _names(sweep):
    t = load_results(sweep).trials
    return dict(zip(t["trial_id"], t["name"]))


def _ok(result, *args):
    assert result.exit_code == 0, (args, result.output, result.stderr)
    return result.stdout


def _fails(args, *needles):
    r = runner.invoke(app, args)
    assert r.exit_code == 2, (args, r.output)
    lines = [ln for ln in r.stderr.strip().splitlines() if ln]
    assert len(lines) == 1 and lines[0].startswith("advsweep: error: "), r.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def _acc(k):
    lo, hi = wilson_interval(k, N)
    return f"{k / N:.3f}±{max(k / N - lo, hi - k / N):.3f}"


def test_show_plain_table_has_every_trial_with_intervals(sweep):
    out = _ok(runner.invoke(app, ["show", str(sweep)]))
    assert "\x1b[" not in out  # not a terminal: plain text
    lines = out.splitlines()
    header = next(ln for ln in lines if ln.startswith("trial"))
    assert header.split() == ["trial", "status", "natural", "autoattack@0.1", "fgsm@0.1", "pgd@0.1", "pgd@0.3",
                              "NFE"]
    assert "deepfool" not in out  # ε = 0 of a minimal-distortion attack is not a robust accuracy
    names = _names(sweep)
    row_a = next(ln for ln in lines if ln.startswith(names["A"] + " "))
    assert row_a.split()[1:] == ["completed", _acc(90), "—", _acc(50), _acc(30), _acc(5), "0"]
    row_b = next(ln for ln in lines if ln.startswith(names["B"] + " "))
    assert row_b.split()[1:] == ["completed", _acc(70), _acc(40), _acc(55), _acc(45), _acc(20), "0"]
    row_c = next(ln for ln in lines if ln.startswith(names["C"] + " "))
    assert row_c.split()[1:] == ["failed", *["—"] * 6]


def test_show_csv_json_filters_and_sort(sweep):
    rows = list(csv.DictReader(io.StringIO(_ok(runner.invoke(app, ["show", str(sweep), "--format", "csv"])))))
    by_id = {r["trial_id"]: r for r in rows}
    lo, hi = wilson_interval(45, N)
    assert float(by_id["B"]["robust_acc/pgd/eps_0.1"]) == 0.45
    assert float(by_id["B"]["robust_acc/pgd/eps_0.1/ci_low"]) == pytest.approx(lo, rel=1e-12)
    assert float(by_id["B"]["robust_acc/pgd/eps_0.1/ci_high"]) == pytest.approx(hi, rel=1e-12)
    assert by_id["A"]["robust_acc/autoattack/eps_0.1"] == ""  # not run on A
    assert by_id["A"]["checkpoint"] == str((sweep / "ckpt" / "A").resolve())

    doc = json.loads(_ok(runner.invoke(app, ["show", str(sweep), "--format", "json", "--attack", "pgd",
                                             "--eps", "0.3"])))
    a = next(t for t in doc["trials"] if t["trial_id"] == "A")
    assert [(r["attack"], r["eps"], r["robust_acc"]) for r in a["robust"]] == [("pgd", 0.3, 0.05)]
    assert a["natural_acc"] == 0.9 and a["natural_ci_low"] == pytest.approx(wilson_interval(90, N)[0])

    order = [r["trial_id"] for r in csv.DictReader(io.StringIO(_ok(runner.invoke(
        app, ["show", str(sweep), "--format", "csv", "--sort", "pgd@0.1"]))))]
    assert order == ["B", "A", "C"]  # descending, missing last
    order = [r["trial_id"] for r in csv.DictReader(io.StringIO(_ok(runner.invoke(
        app, ["show", str(sweep), "--format", "csv", "--sort", "natural"]))))]
    assert order == ["A", "B", "C"]
    out = _ok(runner.invoke(app, ["show", str(sweep), "--attack", "ensemble"]))
    assert "ensemble@0.1" in out  # the per-example worst case on request


def test_show_bad_input_one_line_exit_2(sweep, tmp_path):
    _fails(["show", str(sweep), "--sort", "pgd@0.2"], "--sort", "pgd@0.1", "natural")
    _fails(["show", str(sweep), "--attack", "cw"], "--attack", "'cw'", "autoattack, deepfool, ensemble, fgsm, pgd")
    _fails(["show", str(sweep), "--attack", "pgd", "--eps", "0.2"], "--eps", "0.1, 0.3")
    _fails(["show", str(sweep), "--eps", "eight"], "--eps")
    _fails(["show", str(sweep), "--format", "xml"], "--format")
    _fails(["show", str(tmp_path / "nowhere")], "nowhere")
    _fails(["show", str(_sweep(tmp_path / "running", status="evaluating"))], "did not finish", "advsweep resume")


def test_best_with_interval_checkpoint_and_natural_floor(sweep):
    out = _ok(runner.invoke(app, ["best", str(sweep), "--attack", "pgd", "--eps", "0.1"]))
    names = _names(sweep)
    lo, hi = wilson_interval(45, N)
    assert f"best at pgd ε=0.1 (2 trial(s) compared): {names['B']}" in out
    assert f"robust acc   0.450 [{lo:.3f}, {hi:.3f}]" in out
    assert str((sweep / "ckpt" / "B").resolve()) in out
    assert "runner-up" in out and names["A"] in out and "intervals overlap" in out  # 0.45 vs 0.30, n=100
    doc = json.loads(_ok(runner.invoke(app, ["best", str(sweep), "--attack", "pgd", "--eps", "0.1",
                                             "--min-natural", "0.8", "--format", "json"])))
    assert doc["best"]["trial_id"] == "A" and doc["runner_up"] is None and doc["candidates"] == 1
    _fails(["best", str(sweep), "--attack", "pgd", "--eps", "0.1", "--min-natural", "0.95"], "--min-natural",
           "0.900")
    _fails(["best", str(sweep), "--attack", "pgd", "--eps", "8/255"], "--eps")


def test_export_robustbench_fields(sweep, tmp_path):
    out = tmp_path / "rb"
    _ok(runner.invoke(app, ["export", str(sweep), "--robustbench", "--out", str(out)]))
    names = _names(sweep)
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.json"))
    assert len(files) == 2 and all(f.startswith("fashion-mnist/Linf/") for f in files)  # C failed: none
    info = {json.loads(p.read_text())["advsweep"]["trial_id"]: json.loads(p.read_text()) for p in out.rglob("*.json")}
    b = info["B"]
    assert b["name"] == names["B"] and b["threat_model"] == "Linf" and b["dataset"] == "fashion-mnist"
    assert b["eps"] == "0.1"  # where AutoAttack ran
    assert b["clean_acc"] == "70.00" and b["autoattack_acc"] == "40.00"
    assert b["architecture"] == "mlp(hidden=[32])" and b["number_forward_passes"] == 1
    # reported: the per-example worst case over fgsm, pgd and autoattack at 0.1 (outcomes nest: the first k robust)
    assert b["reported"] == "40.00"
    a = info["A"]
    assert a["eps"] == "0.3" and a["autoattack_acc"] is None and a["reported"] == "5.00"  # largest ε, no AutoAttack
    assert a["advsweep"]["clean_acc_ci"] == pytest.approx(list(wilson_interval(90, N)))
    _fails(["export", str(sweep)], "--robustbench")
    _fails(["export", str(sweep), "--robustbench", "--eps", "0.2"], "--eps")


def test_eps_fractions():
    assert parse_eps("8/255") == pytest.approx(8 / 255) and parse_eps("0.1") == 0.1
    assert eps_text(8 / 255) == "8/255" and eps_text(0.1) == "0.1" and eps_text(0.5) == "0.5"
    with pytest.raises(SpecError):
        parse_eps("1/0")


def test_list_registries_version_help():
    from advsweep.attacks import ATTACKS
    from advsweep.models import MODELS
    from advsweep.training import RECIPES

    for kind, reg in (("models", MODELS), ("attacks", ATTACKS), ("recipes", RECIPES)):
        out = _ok(runner.invoke(app, ["list", kind]))
        listed = [ln.split()[0] for ln in out.splitlines() if ln and not ln.startswith(" ")]
        assert listed == reg.names()
    models = _ok(runner.invoke(app, ["list", "models"]))
    odenet = models.split("\nodenet")[1]
    assert "    solver: 'adaptive_heun' |" in odenet and "= 'dopri5'" in odenet and "width: int > 0 = 64" in odenet
    assert "pgd [norm linf]" in _ok(runner.invoke(app, ["list", "attacks"]))
    _fails(["list", "datasets"], "models, attacks, recipes")
    assert re.fullmatch(r"advsweep \d+\.\d+\.\d+\n", _ok(runner.invoke(app, ["--version"])))
    assert "Usage: advsweep show" in _ok(runner.invoke(app, ["show", "-h"], prog_name="advsweep"))
    help_run = _ok(runner.invoke(app, ["run", "-h"]))
    help_eval = _ok(runner.invoke(app, ["eval", "-h"]))
    for opt in ("--address", "--mlflow-uri", "--workers", "--no-plots", "--quiet", "--verbose"):
        assert opt in help_run and opt in help_eval, opt
    assert "RAY_ADDRESS" in help_run and "--trials" in help_eval


def test_eval_progress_modes(capsys):
    units = [Unit("t0", AttackConfig("pgd", "pgd", (0.1,)), (0.1,), s) for s in range(3)]
    for mode in ("quiet", "verbose", "bar"):
        p = EvalProgress(mode, terminal=False)
        p.start(len(units), 90)
        for u in units:
            p(u, {"examples": 30, "seconds": 0.1})
        p.close()
        out = capsys.readouterr().out.splitlines()
        if mode == "quiet":
            assert out == []
        elif mode == "verbose":
            assert out[:3] == [f"[eval] t0 pgd eps=0.1 shard={s}: 30 examples in 0.1s" for s in range(3)]
            assert out[3].startswith("[eval] 3 units, 90 examples in ")
        else:  # not a terminal and quicker than the log interval: just the final count
            assert len(out) == 1 and out[0].startswith("[eval] 3 units, 90 examples in ")
    p = EvalProgress("bar", terminal=False)
    p.start(4, 120)
    p(units[0], {"examples": 30, "seconds": 1.0})
    assert p.status() == "[eval] 1/4 units, 30/120 examples"  # no rate before a second unit (start-up time)
    p.first = (p.first[0] - 2.0, p.first[1])  # the first unit finished 2 s ago
    p(units[1], {"examples": 30, "seconds": 1.0})
    assert re.fullmatch(r"\[eval\] 2/4 units, 60/120 examples \(\d+\.\d examples/s, ETA \d+:\d\d\)", p.status())
    err = io.StringIO()
    bar = EvalProgress("bar", stream=err, terminal=True)
    bar.start(3, 90)
    for u in units:
        bar(u, {"examples": 30, "seconds": 0.1})
    bar.close()
    assert "90/90" in err.getvalue() and "units 3/3" in err.getvalue()


def test_tune_status_columns_are_what_varies():
    from advsweep.spec import parse_spec
    from advsweep.sweep.tune_output import StatusReporter, parameter_columns

    spec = parse_spec(TINY)
    assert parameter_columns(spec) == {"trial/model/hidden": "hidden"}
    mlp, rest = TINY.split("attacks:")
    two = parse_spec(mlp + "  - model: {name: odenet, width: 8, solver: {grid: [rk4, euler]}, step_size: 0.5}\n"
                           "    training: {recipe: {name: natural}, epochs: 1, batch_size: 50, lr: 0.05}\n"
                           "attacks:" + rest)
    cols = parameter_columns(two)
    assert cols["trial/model/name"] == "name" and cols["trial/model/solver"] == "solver"
    assert "trial/training/lr" not in cols  # the same in every trial
    assert StatusReporter(cols)._parameter_columns == cols


# ---- a tiny real sweep, output piped as into a log ----
TINY = """
name: tiny-output
seed: 0
data: {dataset: fashion-mnist, n_train: 300, n_val: 50, n_test: 60, seed: 0}
trials:
  - model: {name: mlp, hidden: {grid: [[16], [32]]}}
    training: {recipe: {name: natural}, epochs: 1, batch_size: 50, lr: 0.05}
attacks:
  - {name: fgsm, eps: [0.1]}
eval: {batch_size: 30, shard_size: 30, seed: 0}
"""
ADVSWEEP = str(Path(sys.executable).parent / "advsweep")
ANSI = re.compile(r"\x1b\[")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, fashion_available):
    root = tmp_path_factory.mktemp("out")
    spec = root / "tiny.yaml"
    spec.write_text(TINY)
    out = root / "sweep"
    r = subprocess.run([ADVSWEEP, "run", str(spec), "--out", str(out), "--no-plots"], capture_output=True, text=True,
                       timeout=600, env={**__import__("os").environ, "RAY_ADDRESS": ""})
    return out, r


@pytest.mark.slow
def test_run_output_is_trimmed_and_ends_with_the_results_table(tiny_run):
    out, r = tiny_run
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    text = r.stdout + r.stderr
    assert not ANSI.search(text), [ln for ln in text.splitlines() if ANSI.search(ln)][:3]
    for noise in ("started with configuration", "Checkpoint successfully created", "tensorboard", "TensorBoard",
                  "Trial status:", "result\n", "Wrote the latest version"):
        assert noise not in text, noise
    assert "== Status ==" in r.stdout  # Tune's status table is kept
    assert "hidden" in r.stdout.split("== Status ==")[-1]  # with the varying key as its column
    tail = r.stdout[r.stdout.index("sweep tiny-output"):]
    names = _names(out)
    for name in names.values():
        assert re.search(rf"^{re.escape(name)} +completed +\d\.\d{{3}}±\d\.\d{{3}} +\d\.\d{{3}}±", tail, re.M), tail
    assert "fgsm@0.1" in tail and tail.index("fgsm@0.1") < tail.index("Parquet")
    assert "Frontiers" not in tail  # --no-plots
    assert not (out / "frontier").exists()
    assert len(text.splitlines()) < 90, len(text.splitlines())  # 182 before (Tune's default output)


@pytest.mark.slow
def test_eval_on_chosen_trials_ends_with_its_table(tiny_run, tmp_path):
    out, r = tiny_run
    assert r.returncode == 0
    names = _names(out)
    suite = tmp_path / "suite.yaml"
    # a minimal-distortion attack beside it (distances, no accuracy at an ε): the table shows the ε-bounded one
    suite.write_text("attacks:\n  - {name: pgd, eps: [0.05], steps: 2}\n  - {name: deepfool, eps: [0.0], steps: 3}\n"
                     "eval: {batch_size: 30, shard_size: 30, seed: 0}\n")
    bad = subprocess.run([ADVSWEEP, "eval", str(out), "--suite", str(suite), "--trials", "nope"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "--trials" in bad.stderr
    first = sorted(names)[0]
    e = subprocess.run([ADVSWEEP, "eval", str(out), "--suite", str(suite), "--trials", names[first], "--quiet",
                        "--no-plots"], capture_output=True, text=True, timeout=600,
                       env={**__import__("os").environ, "RAY_ADDRESS": ""})
    assert e.returncode == 0, e.stdout[-3000:] + e.stderr[-3000:]
    assert "[eval]" not in e.stdout  # quiet: no progress lines
    header = next(ln for ln in e.stdout.splitlines() if ln.startswith("trial"))
    assert header.split() == ["trial", "status", "natural", "pgd@0.05", "NFE"]
    assert re.search(rf"^{re.escape(names[first])} +completed +\S+ +\d\.\d{{3}}±", e.stdout, re.M), e.stdout
    other = [t for t in names if t != first][0]
    assert names[other] not in e.stdout.split(header)[1]  # only the chosen trial
    res = load_results(out, attacks=["pgd"])
    assert res.value(first, "pgd@0.05") is not None and res.value(other, "pgd@0.05") is None
