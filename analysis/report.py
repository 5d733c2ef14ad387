"""One self-contained HTML report of a sweep, from its Parquet tables alone (no MLflow, no Ray): fitted frontiers
with bootstrap bands, accuracy-vs-ε and budget curves, minimal-distortion distributions, a sortable trials table,
the gradient-masking audit with its evidence, the spec, package versions and the data subset.

Figures are embedded as base64 PNG data URIs (SVG copies are written beside the report); the page loads no external
resource. The frontier, hypervolume and audit tables are also written as Parquet next to it.
"""
from __future__ import annotations

import base64
import html
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from advsweep.analysis import plots
from advsweep.analysis.audit import Audit, run_audit, write_audit
from advsweep.analysis.frontier_fit import ALL, Fronts, analyse_fronts
from advsweep.analysis.tables import Sweep, load_sweep
from advsweep.storage.parquet import write_atomic

MAX_FRONT_FIGURES = 24
PHASES = ("load", "frontier_bootstrap", "audit", "figures", "html")


@dataclass
class Report:
    path: Path
    files: list[Path]
    fronts: Fronts
    audit: Audit
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # missing or partial results


def _esc(v) -> str:
    return html.escape("" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v))


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return (f'<figure><img alt="{_esc(alt)}" src="data:image/png;base64,{data}">'
            f'<figcaption>{_esc(alt)}</figcaption></figure>')


def _table(df: pd.DataFrame, cls: str, fmt: dict | None = None) -> str:
    """An HTML table; every cell carries a sort key (numbers sort as numbers)."""
    fmt = fmt or {}
    head = "".join(f"<th>{_esc(c)}</th>" for c in df.columns)
    rows = []
    for r in df.itertuples(index=False):
        cells = []
        for c, v in zip(df.columns, r):
            key = v if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) else str(v)
            shown = fmt[c](v) if c in fmt else (f"{v:.4g}" if isinstance(v, (float, np.floating)) else v)
            cells.append(f'<td data-v="{_esc(key)}">{_esc(shown) if c not in ("evidence",) else shown}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table class="sortable {cls}"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _ci(acc, lo, hi) -> str:
    return "" if acc is None or np.isnan(acc) else f"{acc:.3f} [{lo:.3f}, {hi:.3f}]"


def trials_overview(sweep: Sweep, fronts: Fronts) -> pd.DataFrame:
    """One row per configuration: name, family, seeds, natural accuracy and every overall robust accuracy with its
    bootstrap interval, and how often it is on the front."""
    pts = fronts.points[fronts.points["scope"] == ALL]
    if pts.empty:
        return pd.DataFrame()
    base = pts.drop_duplicates("config_key")[["config_key", "label", "model_name", "n_seeds", "trial_ids"]]
    first = pts.sort_values(["attack", "eps"]).drop_duplicates("config_key").set_index("config_key")
    base["natural (95 % CI)"] = [_ci(*first.loc[k, ["natural_acc", "natural_ci_low", "natural_ci_high"]])
                                 for k in base["config_key"]]
    for (attack, eps), g in pts.groupby(["attack", "eps"], sort=True):
        g = g.set_index("config_key")
        col = f"{attack} ε={eps:g}"
        base[col] = [_ci(*g.loc[k, ["robust_acc", "ci_low", "ci_high"]]) if k in g.index else ""
                     for k in base["config_key"]]
        if g["n_seeds"].max() > 1:
            base[col + " seed sd"] = [g.loc[k, "seed_sd_robust"] if k in g.index else np.nan
                                      for k in base["config_key"]]
    base["p(front) max"] = [float(pts[pts["config_key"] == k]["p_front"].max()) for k in base["config_key"]]
    return base.drop(columns=["config_key"]).rename(columns={"label": "name", "model_name": "model",
                                                             "n_seeds": "seeds", "trial_ids": "trials"})


SORT_JS = """
document.querySelectorAll('table.sortable th').forEach(function (th) {
  th.addEventListener('click', function () {
    var table = th.closest('table'), body = table.tBodies[0];
    var i = Array.prototype.indexOf.call(th.parentNode.children, th);
    var asc = th.dataset.dir !== 'asc'; th.dataset.dir = asc ? 'asc' : 'desc';
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[i].dataset.v, y = b.cells[i].dataset.v, nx = parseFloat(x), ny = parseFloat(y);
      var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
      return asc ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
"""

CSS = """
body{font-family:sans-serif;margin:1.5em;max-width:1400px;color:#222}
table{border-collapse:collapse;font-size:12px;margin:0.5em 0}
th,td{border:1px solid #ccc;padding:2px 6px;text-align:left;vertical-align:top}
th{background:#eee;cursor:pointer}
figure{display:inline-block;margin:0.5em}
img{max-width:100%}
.verdict-masked{background:#f8c8c8}.verdict-suspect{background:#fbe6b0}.verdict-ok{background:#d3f0d3}
.note{background:#fff3cd;padding:4px 8px;border-left:4px solid #e0a800}
pre{background:#f6f6f6;padding:8px;overflow-x:auto;font-size:12px}
"""


def _versions(sweep: Sweep) -> pd.DataFrame:
    t = sweep.all_trials
    rows = {c[len("version_"):]: sorted({str(v) for v in t[c].dropna()}) for c in t.columns if c.startswith("version_")}
    for k, v in (sweep.manifest.get("versions") or {}).items():
        rows.setdefault(k, [str(v)])
    return pd.DataFrame([{"package": k, "versions": ", ".join(v) or "-"} for k, v in sorted(rows.items())])


def build_report(sweep_dir: str | Path, out_dir: str | Path | None = None, resamples: int = 1000, seed: int = 0,
                 mlflow: bool = False, progress=None) -> Report:
    """Load, analyse, audit and write <out>/report.html (default <sweep_dir>/report). `progress(stage)` is called
    after each of the PHASES."""
    timings = {}
    step = progress or (lambda stage: None)
    t0 = time.perf_counter()
    sweep = load_sweep(sweep_dir)
    timings["load"] = time.perf_counter() - t0
    step("load")
    out = Path(out_dir) if out_dir else sweep.dir / "report"
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    fronts = analyse_fronts(sweep, resamples, seed)
    timings["frontier_bootstrap"] = time.perf_counter() - t
    step("frontier_bootstrap")
    t = time.perf_counter()
    audit = run_audit(sweep)
    files = write_audit(sweep, audit, out / "audit", mlflow=mlflow)
    timings["audit"] = time.perf_counter() - t
    step("audit")
    t = time.perf_counter()
    for name, df in (("front_points", fronts.points), ("front_curves", fronts.curves),
                     ("hypervolume", fronts.hypervolumes)):
        files.append(write_atomic(pa.Table.from_pandas(df, preserve_index=False), out / f"{name}.parquet",
                                  sweep.sweep_id))
    figures: list[tuple[str, Path]] = []
    if len(fronts.points) and len(audit.verdicts):  # mark configurations whose first trial the audit flags
        verdict = dict(zip(audit.verdicts["trial_id"], audit.verdicts["verdict"]))
        fronts.points["audit"] = [verdict.get(ids.split(",")[0], "") for ids in fronts.points["trial_ids"]]

    def add(result, caption):
        if result:
            files.extend(result)
            figures.append((caption, result[0]))

    jobs = []
    pts = fronts.points[fronts.points["scope"] == ALL] if len(fronts.points) else fronts.points
    for i, ((attack, eps), g) in enumerate(pts.groupby(["attack", "eps"], sort=True) if len(pts) else []):
        if i >= MAX_FRONT_FIGURES:
            break
        curve = fronts.curves[(fronts.curves["attack"] == attack) & (fronts.curves["eps"] == eps)
                              & (fronts.curves["scope"] == ALL)]
        hv = fronts.hypervolumes[(fronts.hypervolumes["attack"] == attack) & (fronts.hypervolumes["eps"] == eps)
                                 & (fronts.hypervolumes["scope"] == ALL)]
        jobs.append((f"Frontier {attack} ε={eps:g}", g, curve, hv.iloc[0] if len(hv) else None,
                     fig_dir / f"front_{attack}_eps{eps:g}"))
    pool = _pool(len(jobs))
    pending = [pool.submit(_front_figure, job) for job in jobs] if pool else []
    if len(fronts.points):
        add(plots.plot_overview(fronts, fig_dir / "overview"), "Overview: frontiers per attack (rows) and ε (columns)")
    add(plots.plot_accuracy_vs_eps(sweep, fig_dir / "accuracy_vs_eps"), "Robust accuracy vs ε per trial and attack")
    add(plots.plot_budget(sweep, fig_dir / "accuracy_vs_budget"), "Robust accuracy vs attack budget")
    add(plots.plot_distortions(sweep, fig_dir / "minimal_distortion"), "Minimal-distortion distributions")
    results = [f.result() for f in pending] if pool else [_front_figure(job) for job in jobs]
    if pool:
        pool.shutdown()
    front_figs = []
    for caption, res in results:
        files.extend(res)
        front_figs.append((caption, res[0]))
    timings["figures"] = time.perf_counter() - t
    step("figures")
    t = time.perf_counter()
    page = _page(sweep, fronts, audit, figures, front_figs)
    path = out / "report.html"
    tmp = out / ".report.html.tmp"
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    timings["html"] = time.perf_counter() - t
    step("html")
    timings["total"] = time.perf_counter() - t0
    return Report(path, [path, *files], fronts, audit, timings, sweep.notes)


def _front_figure(job) -> tuple[str, list[Path]]:
    caption, g, curve, hv, stem = job
    return caption, plots.plot_fitted_front(g, curve, hv, stem)


def _pool(n_jobs: int):
    """Frontier figures render in forked worker processes (matplotlib is single-threaded; a figure with 200 points
    and its SVG take about a second); None where fork is unavailable or not worth it."""
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    workers = min(os.cpu_count() or 1, n_jobs)
    if workers < 2 or "fork" not in multiprocessing.get_all_start_methods():
        return None
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))


def _page(sweep: Sweep, fronts: Fronts, audit: Audit, figures, front_figs) -> str:
    m = sweep.manifest
    title = f"advsweep report: {m.get('name', sweep.sweep_id)}"
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_esc(title)}</title>"
             f"<style>{CSS}</style></head><body><h1>{_esc(title)}</h1>"]
    data = m.get("data", {})
    parts.append(f"<p>Sweep <code>{_esc(sweep.sweep_id)}</code>: {len(sweep.all_trials)} trials, "
                 f"{len(sweep.trials)} completed and analysed, {len(sweep.examples)} test examples "
                 f"(dataset {_esc(data.get('dataset', '?'))}), {len(sweep.cells)} attack × ε cells, "
                 f"{fronts.resamples} bootstrap resamples of the test examples.</p>")
    for n in sweep.notes:
        parts.append(f"<p class='note'>Missing or partial: {_esc(n)}</p>")
    parts.append("<h2>Overview</h2>")
    parts += [_img(p, c) for c, p in figures[:1]]
    parts.append("<h2>Gradient-masking audit</h2><p>Verdict per trial (checks and thresholds: "
                 "<code>advsweep.analysis.audit</code>). Click a column to sort.</p>")
    if len(audit.verdicts):
        v = audit.verdicts.drop(columns=["mlflow_run_id"])
        parts.append(_table(v, "audit-verdicts").replace(
            "<td data-v=\"masked\">", "<td class='verdict-masked' data-v=\"masked\">").replace(
            "<td data-v=\"suspect\">", "<td class='verdict-suspect' data-v=\"suspect\">").replace(
            "<td data-v=\"ok\">", "<td class='verdict-ok' data-v=\"ok\">"))
        ev = audit.checks[audit.checks["status"].isin(["pass", "fail"])]
        parts.append("<details><summary>Evidence for every evaluated check</summary>")
        parts.append(_table(ev[["label", "check", "severity", "status", "value", "threshold", "n", "p_value",
                                "evidence"]].assign(evidence=ev["evidence"].map(_esc)), "audit-checks"))
        parts.append("</details>")
    parts.append("<h2>Trials</h2><p>Accuracies with 95 % bootstrap intervals over the test examples (and over "
                 "seeds, for replicated configurations); p(front): highest share of bootstrap resamples in which "
                 "the configuration is on a Pareto front.</p>")
    parts.append(_table(trials_overview(sweep, fronts), "trials"))
    parts.append("<h2>Frontiers</h2>")
    if len(fronts.hypervolumes):
        parts.append(_table(fronts.hypervolumes, "hypervolume"))
    parts += [_img(p, c) for c, p in front_figs]
    parts.append("<h2>Curves</h2>")
    parts += [_img(p, c) for c, p in figures[1:]]
    parts.append("<h2>Spec</h2>")
    spec = sweep.dir / "spec.yaml"
    parts.append(f"<pre>{_esc(spec.read_text() if spec.is_file() else '(no spec.yaml)')}</pre>")
    parts.append("<h2>Data subset</h2>")
    parts.append(f"<pre>{_esc(json.dumps(data, indent=2))}</pre><p>Test example indices: "
                 f"{len(sweep.examples)} from {int(sweep.examples.min())} to {int(sweep.examples.max())} "
                 f"(the full list is in <code>subsets.npz</code> and the examples table).</p>")
    parts.append("<h2>Versions</h2>")
    parts.append(_table(_versions(sweep), "versions"))
    parts.append(f"<script>{SORT_JS}</script></body></html>")
    return "\n".join(parts)



