"""The gradient-masking audit and the HTML report on a real small sweep (tests/analysis_sweep.py: MLPs trained on
real Fashion-MNIST, attacked by the real attacks through the engine's unit code, tables in the real schema, a real
MLflow sqlite store for the trial runs): known verdicts, Parquet read back by DuckDB, verdicts on the MLflow runs,
a self-contained report checked structurally and in headless Chromium."""
import base64
import json
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import duckdb
import pytest
from typer.testing import CliRunner

from advsweep.analysis.audit import run_audit
from advsweep.analysis.tables import load_sweep
from advsweep.cli import app
from advsweep.storage.tracking import embedded_uri

sys.path.insert(0, str(Path(__file__).parent))
from analysis_sweep import build_sweep  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real_sweep(tmp_path_factory, fashion_available):
    root = tmp_path_factory.mktemp("audit")
    uri = embedded_uri(root / "sweep")  # the sweep's own store: sweep.json names it relatively, as a run's does
    return build_sweep(root / "sweep", fashion_available, mlflow_uri=uri), uri


def test_audit_verdicts_have_known_answers(real_sweep):
    audit = run_audit(load_sweep(real_sweep[0]))
    v = audit.verdicts.set_index("label")
    checks = audit.checks.set_index(["label", "check"])["status"]
    assert v.loc["resnet·natural", "verdict"] == "ok", v.loc["resnet·natural"].to_dict()
    assert v.loc["resnet·pgd_at", "verdict"] == "ok", v.loc["resnet·pgd_at"].to_dict()
    assert v.loc["mlp·quantised", "verdict"] == "masked"
    for check in ("zero_gradients", "blackbox_stronger", "minimal_success"):
        assert checks[("mlp·quantised", check)] == "fail", check
    assert checks[("mlp·collapsed", "collapsed")] == "fail"
    assert v.loc["mlp·collapsed", "verdict"] != "ok"
    assert checks[("resnet·natural", "gradient_agreement")] == "not_applicable"  # no ODE blocks
    ev = audit.checks.set_index(["label", "check"]).loc[("mlp·quantised", "blackbox_stronger"), "evidence"]
    assert "broken only by square" in ev  # the numbers behind the verdict


def test_audit_without_black_box_or_large_eps_is_insufficient(tmp_path, real_sweep):
    src = real_sweep[0]
    shutil.copytree(src, tmp_path / "s", ignore=shutil.ignore_patterns("attack=square", "attack=deepfool", "audit"))
    for d in (tmp_path / "s" / "examples").rglob("eps=0.5"):
        shutil.rmtree(d)
    audit = run_audit(load_sweep(tmp_path / "s"))
    v = audit.verdicts.set_index("label")
    assert v.loc["resnet·natural", "verdict"] == "insufficient evidence"
    assert "sweeps/suites/masking_audit.yaml" in v.loc["resnet·natural", "summary"]
    assert v.loc["mlp·quantised", "verdict"] == "masked"  # zero gradients alone suffice


def test_audit_cli_writes_parquet_and_mlflow_runs(real_sweep):
    from mlflow.tracking import MlflowClient

    sweep_dir, uri = real_sweep
    res = CliRunner().invoke(app, ["audit", str(sweep_dir)])
    assert res.exit_code == 0, res.output
    assert "mlp·quantised: masked" in res.output
    verdicts = duckdb.sql(f"SELECT label, verdict FROM read_parquet('{sweep_dir}/audit/verdicts.parquet') "
                          f"ORDER BY trial_index").fetchall()
    assert verdicts[0] == ("resnet·natural", "ok") and verdicts[2] == ("mlp·quantised", "masked")
    n_checks = duckdb.sql(f"SELECT count(*) FROM read_parquet('{sweep_dir}/audit/checks.parquet')").fetchall()[0][0]
    assert n_checks == 4 * 10
    client = MlflowClient(uri)
    trials = duckdb.sql(f"SELECT trial_id, mlflow_run_id FROM read_parquet('{sweep_dir}/trials/*.parquet')").fetchall()
    by_id = dict(duckdb.sql(f"SELECT trial_id, verdict FROM read_parquet('{sweep_dir}/audit/verdicts.parquet')")
                 .fetchall())
    assert len(by_id) == 4
    for trial_id, run_id in trials:
        run = client.get_run(run_id)
        assert run.data.tags["audit.verdict"] == by_id[trial_id]
        record = json.loads(Path(client.download_artifacts(run_id, "audit/audit.json")).read_text())
        assert record["verdict"] == by_id[trial_id] and len(record["checks"]) == 10
    assert client.get_run(trials[2][1]).data.metrics["audit.zero_gradients"] == 1.0


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.urls, self.tables, self.rows, self._table = [], [], {}, 0, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a.get("src", ""))
        for k in ("src", "href"):
            if a.get(k) and not a[k].startswith("data:"):
                self.urls.append(a[k])
        if tag == "table":
            self._table = (a.get("class") or "").split()[-1]
            self.tables[self._table] = 0
        if tag == "tr" and self._table:
            self.tables[self._table] += 1


@pytest.fixture(scope="module")
def report_dir(real_sweep, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    res = CliRunner().invoke(app, ["report", str(real_sweep[0]), "--out", str(out), "--resamples", "200"])
    assert res.exit_code == 0, res.output
    assert "wrote" in res.output and "quantised: masked" in res.output
    return out


def test_report_is_self_contained_html(report_dir):
    out = report_dir
    page = _Page()
    page.feed((out / "report.html").read_text(encoding="utf-8"))
    assert page.urls == []  # nothing external: no src/href other than data URIs
    assert len(page.images) >= 8
    for src in page.images:
        head, data = src.split(",", 1)
        assert head == "data:image/png;base64"
        assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"
    assert page.tables["trials"] == 1 + 4 and page.tables["audit-verdicts"] == 1 + 4
    assert page.tables["versions"] >= 1 and page.tables["hypervolume"] >= 2
    svgs = list((out / "figures").glob("*.svg"))
    assert svgs and all(s.read_text()[:200].lstrip().startswith("<?xml") and "<svg" in s.read_text()[:2000]
                        for s in svgs)
    assert "Overview" in (out / "report.html").read_text()


def test_report_renders_in_headless_chromium(report_dir, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        pytest.skip("no chromium binary (apt-get install chromium) for the rendering check")
    url = (report_dir / "report.html").as_uri()
    base = [chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=15000"]
    dom = subprocess.run(base + ["--enable-logging=stderr", "--v=0", "--dump-dom", url], capture_output=True,
                         text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "Uncaught" not in dom.stderr, dom.stderr[-2000:]
    assert dom.stdout.count("<img") >= 8 and 'class="sortable trials"' in dom.stdout
    shot = tmp_path / "report.png"
    subprocess.run(base + [f"--screenshot={shot}", "--window-size=1400,1000", url], capture_output=True,
                   timeout=120, check=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def test_steps_converged_flags_only_budget_gains_that_move_the_worst_case():
    """Square gaining with more queries on examples PGD already breaks is no sign of overestimated robustness;
    PGD gaining with more steps on examples nothing else breaks is."""
    import numpy as np

    from advsweep.analysis.audit import _steps
    from advsweep.analysis.tables import Cell

    n = 200
    rng = np.random.default_rng(0)
    pgd10 = rng.random(n) < 0.5                      # robust under PGD-10
    pgd50 = pgd10.copy()
    sq300 = pgd10 | (rng.random(n) < 0.4)            # weaker than PGD
    sq1000 = sq300.copy()
    sq1000[np.flatnonzero(sq300 & ~pgd10)[:40]] = False  # 40 more broken, all already broken by PGD

    def cell(label, name, params, robust):
        one = np.ones((1, n), bool)
        return Cell(label, name, "linf", 0.1, params, one, robust[None, :].copy(), one, ~robust[None, :])

    cells = [cell("pgd10", "pgd", {"steps": 10}, pgd10), cell("pgd50", "pgd", {"steps": 50}, pgd50),
             cell("sq300", "square", {"n_queries": 300}, sq300), cell("sq1000", "square", {"n_queries": 1000}, sq1000)]
    row = _steps(cells, 0)
    assert row["status"] == "pass", row["evidence"]
    assert "square linf ε=0.1: budget 300 → 1000" in row["evidence"]
    pgd50[np.flatnonzero(pgd10)[:30]] = False        # more PGD steps break 30 examples no other attack breaks
    cells[1] = cell("pgd50", "pgd", {"steps": 50}, pgd50)
    row = _steps(cells, 0)
    assert row["status"] == "fail" and row["value"] >= 0.1, row["evidence"]
