"""The results table of a sweep, from its Parquet tables alone: one row per trial with its readable name, status,
natural accuracy and robust accuracy per attack × ε (each with its Wilson 95 % interval) and NFE.

Used by `advsweep run` / `eval` (printed at the end), `show`, `best` and `export --robustbench`. Rendered as a rich
table on a terminal, as plain aligned text otherwise, or as CSV / JSON. Robust columns are the `ok` rows of the
robustness table; a minimal-distortion attack's ε = 0 rows (its unbounded result: accuracy 0 by construction
wherever it found everything) are left out, its rows at ε > 0 (distance ≤ ε) are shown. The per-example worst case
(`ensemble`) is shown only when asked for with `--attack ensemble`.
"""
from __future__ import annotations

import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from advsweep.analysis.tables import trial_label
from advsweep.registry import SpecError, fraction_float
from advsweep.storage import schema as S
from advsweep.storage.location import checkpoint_root, resolve
from advsweep.storage.parquet import read_robustness, read_trials

FORMATS = ("table", "csv", "json")
FIXED_SORTS = {"trial": "trial_index", "name": "name", "status": "status", "natural": "natural_acc",
               "nfe": "nfe_forward"}
AUTOATTACK_NAMES = ("autoattack",)  # attacks whose result RobustBench reports as `autoattack_acc`


def parse_eps(text: str | float) -> float:
    """An ε from the command line: a decimal (`0.031`) or a fraction (`8/255`)."""
    try:
        return float(fraction_float(text.strip() if isinstance(text, str) else text))
    except ValueError as exc:  # the same forms and message as an ε in a spec
        raise SpecError("--eps", str(exc)) from None


def eps_text(eps: float) -> str:
    """ε as written in RobustBench: a short decimal (`0.1`), else a fraction of 255 (`8/255`) where it is one."""
    short = f"{eps:.4g}"
    if math.isclose(float(short), eps, rel_tol=1e-12, abs_tol=0):
        return short
    k = eps * 255
    if abs(k - round(k)) < 1e-6:
        return f"{int(round(k))}/255"
    return f"{eps:.6g}"


def cell_key(attack: str, eps: float) -> str:
    return f"{attack}@{eps:g}"


@dataclass(frozen=True)
class Cell:
    attack: str
    eps: float
    attack_name: str
    norm: str

    @property
    def key(self) -> str:
        return cell_key(self.attack, self.eps)

    @property
    def metric(self) -> str:  # the flat column name in CSV, as the MLflow metric is named
        return f"robust_acc/{self.attack}/eps_{self.eps:g}"


@dataclass
class Results:
    sweep_dir: Path
    sweep_id: str
    manifest: dict[str, Any]
    trials: pd.DataFrame  # one row per trial: name, trial_id, trial_index, status, natural_*, nfe_forward, checkpoint
    cells: list[Cell]
    robust: dict[tuple[str, str], dict[str, Any]]  # (trial_id, cell key) → its robustness row (ok / not_applicable)
    notes: list[str] = field(default_factory=list)

    def value(self, trial_id: str, key: str) -> dict[str, Any] | None:
        return self.robust.get((trial_id, key))

    def available(self) -> str:
        return ", ".join(c.key for c in self.cells) or "none"


def _manifest(sweep_dir: Path) -> dict[str, Any]:
    f = sweep_dir / "sweep.json"
    try:
        return json.loads(f.read_text()) if f.is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}


def _select_cells(rob: pd.DataFrame, attacks: list[str] | None, eps: float | None, sweep_dir: Path,
                  ensemble: bool = False) -> list[Cell]:
    all_cells = sorted({Cell(r.attack, float(r.eps), r.attack_name, r.norm) for r in rob.itertuples()
                        if not (r.norm == "none" and r.eps == 0)}, key=lambda c: (c.attack_name == S.ENSEMBLE, c.attack,
                                                                                  c.eps))
    labels = sorted(set(rob["attack"].astype(str)))
    if attacks:
        for a in attacks:
            if a not in labels:
                raise SpecError("--attack", f"{a!r} was not run in {sweep_dir} (attacks there: "
                                            f"{', '.join(labels) or 'none'})")
            if not any(c.attack == a for c in all_cells):
                raise SpecError("--attack", f"{a!r} is a minimal-distortion attack run without an ε > 0: it has "
                                            f"distances, not accuracies at an ε (see `advsweep curves`)")
        cells = [c for c in all_cells if c.attack in attacks]
    else:
        cells = [c for c in all_cells if ensemble or c.attack_name != S.ENSEMBLE]
    if eps is not None:
        at = [c for c in cells if np.isclose(c.eps, eps, rtol=1e-9, atol=1e-12)]
        if not at:
            have = ", ".join(f"{e:g}" for e in sorted({c.eps for c in cells}))
            scope = f"attack {', '.join(attacks)}" if attacks else "any attack"
            raise SpecError("--eps", f"{eps:g} was not run for {scope} in {sweep_dir} (ε there: {have or 'none'})")
        cells = at
    return cells


def load_results(sweep_dir: str | Path, attacks: list[str] | None = None, eps: float | None = None,
                 ensemble: bool = False) -> Results:
    """The results table of a sweep directory. Raises SpecError (one line) for a missing directory or trials table,
    or an attack / ε not in the sweep (naming what is there). `ensemble`: also the per-example worst case columns
    when no attack is named."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise SpecError(str(sweep_dir), "no such directory")
    if not any((sweep_dir / "trials").glob("*.parquet")):
        raise SpecError(str(sweep_dir), "not a sweep directory with results (no trials/ table); run `advsweep run`")
    manifest = _manifest(sweep_dir)
    trials = read_trials(sweep_dir).to_pandas()
    trials = trials.sort_values("trial_index", kind="stable").reset_index(drop=True)
    table = pd.DataFrame({
        "name": trial_label(trials).to_numpy(),
        "trial_id": trials["trial_id"].astype(str),
        "trial_index": trials["trial_index"],
        "status": trials["status"].astype(str),
        "natural_acc": trials["natural_acc"], "natural_ci_low": trials["natural_ci_low"],
        "natural_ci_high": trials["natural_ci_high"],
        "nfe_forward": trials["nfe_forward"] if "nfe_forward" in trials else np.nan,
        "n_test": trials["n_test"] if "n_test" in trials else np.nan,
        "model_name": trials["model_name"].astype(str),
        "checkpoint": [resolve(checkpoint_root(sweep_dir), c) if isinstance(c, str) and c else None
                       for c in trials["checkpoint"]],
        "config_json": trials["config_json"] if "config_json" in trials else None,
        "error": trials["error"] if "error" in trials else None,
    })
    rob = read_robustness(sweep_dir).to_pandas()
    rob = rob[rob["trial_id"].astype(str).isin(set(table["trial_id"]))]
    cells = _select_cells(rob, attacks, eps, sweep_dir, ensemble)
    keys = {c.key for c in cells}
    robust = {}
    for r in rob.to_dict("records"):
        key = cell_key(r["attack"], float(r["eps"]))
        if key in keys:
            robust[(str(r["trial_id"]), key)] = r
    notes = []
    state = manifest.get("status")
    if state not in (None, "finished"):
        notes.append(f"the sweep did not finish (state: {state}); continue it with `advsweep resume {sweep_dir}`")
    return Results(sweep_dir, str(manifest.get("sweep_id") or (trials["sweep_id"].iloc[0] if len(trials) else "")),
                   manifest, table, cells, robust, notes)


# ---- sorting ----
def sort_choices(res: Results) -> list[str]:
    return [*FIXED_SORTS, *(c.key for c in res.cells)] + (["robust"] if len(res.cells) == 1 else [])


def sorted_rows(res: Results, sort: str | None) -> pd.DataFrame:
    """Trials in spec order, or by a column: names and status ascending, accuracies and NFE descending (missing
    values last)."""
    t = res.trials.copy()
    if sort is None or sort == "trial":
        return t
    if sort == "robust" and len(res.cells) == 1:
        sort = res.cells[0].key
    if sort in FIXED_SORTS:
        col = FIXED_SORTS[sort]
        values = t[col]
    elif sort in {c.key for c in res.cells}:
        values = pd.Series([(res.value(tid, sort) or {}).get("robust_acc") if (res.value(tid, sort) or {}).get(
            "status") == "ok" else None for tid in t["trial_id"]], index=t.index, dtype=float)
    else:
        raise SpecError("--sort", f"unknown column {sort!r} (choose from: {', '.join(sort_choices(res))})")
    ascending = sort in ("name", "status")
    order = values.sort_values(ascending=ascending, na_position="last", kind="stable").index
    return t.loc[order]


# ---- formatting ----
def _num(v: Any) -> float | None:
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def acc_ci(acc: Any, lo: Any, hi: Any) -> str:
    """`0.812±0.034`: the accuracy and the larger half of its Wilson 95 % interval (the interval is asymmetric;
    CSV and JSON carry its exact bounds)."""
    a, lo, hi = _num(acc), _num(lo), _num(hi)
    if a is None:
        return "—"
    if lo is None or hi is None:
        return f"{a:.3f}"
    return f"{a:.3f}±{max(a - lo, hi - a):.3f}"


def _nfe(v: Any) -> str:
    f = _num(v)
    return "—" if f is None else f"{f:.4g}"


def display_rows(res: Results, sort: str | None = None) -> tuple[list[str], list[list[str]]]:
    header = ["trial", "status", "natural", *(c.key for c in res.cells), "NFE"]
    rows = []
    for r in sorted_rows(res, sort).itertuples():
        cells = []
        for c in res.cells:
            v = res.value(r.trial_id, c.key)
            if v is None:
                cells.append("—")
            elif v.get("status") != "ok":
                cells.append("n/a")
            else:
                cells.append(acc_ci(v["robust_acc"], v["ci_low"], v["ci_high"]))
        done = r.status == "completed"
        rows.append([r.name, r.status, acc_ci(r.natural_acc, r.natural_ci_low, r.natural_ci_high) if done else "—",
                     *cells, _nfe(r.nfe_forward) if done else "—"])
    return header, rows


def footer(res: Results) -> list[str]:
    n = sorted({int(v) for v in res.trials["n_test"].dropna()}) if "n_test" in res.trials else []
    lines = [f"± : larger half of the 95 % Wilson interval{f' over {n[0]} test examples' if len(n) == 1 else ''}"
             f" (exact bounds: --format csv or json)",
             "NFE: ODE function evaluations per test batch"]
    if any(v is not None and v.get("status") != "ok" for r in res.trials.itertuples() for c in res.cells
           for v in [res.value(r.trial_id, c.key)]):
        lines.insert(1, "n/a: the attack does not apply to the model")
    for r in res.trials.itertuples():  # why a trial has no numbers
        if r.status != "completed" and isinstance(r.error, str) and r.error:
            lines.append(f"{r.name} ({r.status}): {r.error}")
    return lines + [f"note: {m}" for m in res.notes]


def plain_table(header: list[str], rows: list[list[str]]) -> str:
    """Columns aligned with spaces (text left, numbers right), for logs and pipes."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    left = {0, 1}

    def line(cells: list[str]) -> str:
        padded = (c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
        return "  ".join(padded).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def rich_table(header: list[str], rows: list[list[str]], title: str | None = None):
    from rich import box
    from rich.table import Table

    t = Table(title=title, title_justify="left", header_style="bold", box=box.SIMPLE_HEAD, show_edge=False,
              pad_edge=False)
    name_width = min(40, max([len(header[0]), *(len(r[0]) for r in rows)]))
    for i, h in enumerate(header):  # a narrow terminal folds cells rather than cutting them off
        t.add_column(h, justify="left" if i < 2 else "right", min_width=name_width if i == 0 else None,
                     overflow="fold")
    for r in rows:
        t.add_row(*r, style="dim" if r[1] != "completed" else None)
    return t


def records(res: Results, sort: str | None = None) -> list[dict[str, Any]]:
    """One JSON-ready record per trial, robust results nested per attack × ε with their interval bounds."""
    out = []
    for r in sorted_rows(res, sort).itertuples():
        robust = []
        for c in res.cells:
            v = res.value(r.trial_id, c.key)
            if v is None:
                continue
            robust.append({"attack": c.attack, "attack_name": c.attack_name, "norm": c.norm, "eps": c.eps,
                           "status": v.get("status"), "robust_acc": _num(v.get("robust_acc")),
                           "ci_low": _num(v.get("ci_low")), "ci_high": _num(v.get("ci_high")),
                           "n": int(v["n"]) if _num(v.get("n")) is not None else None,
                           **({"reason": v.get("reason")} if v.get("status") != "ok" else {})})
        out.append({"name": r.name, "trial_id": r.trial_id, "trial_index": int(r.trial_index), "status": r.status,
                    "natural_acc": _num(r.natural_acc), "natural_ci_low": _num(r.natural_ci_low),
                    "natural_ci_high": _num(r.natural_ci_high), "robust": robust,
                    "nfe_forward": _num(r.nfe_forward), "checkpoint": r.checkpoint or None})
    return out


def csv_text(res: Results, sort: str | None = None) -> str:
    """Flat columns; robust accuracy columns are named as the MLflow metrics (`robust_acc/pgd/eps_0.1`)."""
    rows = []
    for rec in records(res, sort):
        row = {k: rec[k] for k in ("name", "trial_id", "trial_index", "status", "natural_acc", "natural_ci_low",
                                   "natural_ci_high")}
        by_key = {cell_key(v["attack"], v["eps"]): v for v in rec["robust"]}
        for c in res.cells:
            v = by_key.get(c.key, {})
            ok = v.get("status") == "ok"
            row[c.metric] = v.get("robust_acc") if ok else None
            row[f"{c.metric}/ci_low"] = v.get("ci_low") if ok else None
            row[f"{c.metric}/ci_high"] = v.get("ci_high") if ok else None
        row["nfe_forward"] = rec["nfe_forward"]
        row["checkpoint"] = rec["checkpoint"]
        rows.append(row)
    buf = io.StringIO()
    pd.DataFrame(rows, columns=None if rows else ["name"]).to_csv(buf, index=False, lineterminator="\n")
    return buf.getvalue()


def render(res: Results, fmt: str = "table", sort: str | None = None, *, terminal: bool | None = None,
           title: str | None = None) -> str | None:
    """The table as text (csv, json, plain table), or None after printing a rich table to a terminal."""
    if fmt not in FORMATS:
        raise SpecError("--format", f"{fmt!r}: choose from {', '.join(FORMATS)}")
    if fmt == "json":
        return json.dumps({"sweep_id": res.sweep_id, "sweep_dir": str(res.sweep_dir.resolve()),
                           "trials": records(res, sort), "notes": res.notes}, indent=2)
    if fmt == "csv":
        return csv_text(res, sort).rstrip("\n")
    header, rows = display_rows(res, sort)
    if terminal is None:
        import sys

        terminal = sys.stdout.isatty()
    if terminal:
        from rich.console import Console

        console = Console()
        console.print(rich_table(header, rows, title))
        for line in footer(res):
            console.print(line, style="dim", highlight=False, markup=False)
        return None
    return "\n".join([*([title] if title else []), plain_table(header, rows), *footer(res)])


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", name).strip("_") or "trial"
