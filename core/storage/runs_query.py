"""`advsweep runs`: trial runs from a tracking store, selected with MLflow's own filter syntax, as a table, CSV or JSON.

    advsweep runs --experiment quickstart-20261122-… --filter "metrics.`robust_acc/pgd/eps_0.1` > 0.3 and tags.solver = 'dopri5'"

Columns: trial name, status, the params that differ among the listed runs, natural accuracy and every robust
accuracy, each with its 95 % interval. Bad input (filter syntax, unknown experiment, unreachable server, a sqlite
store that does not exist) raises SpecError: one line, exit 2.
"""
from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from advsweep.registry import SpecError
from advsweep.storage.tracking import probe, use_short_retries

FORMATS = ("table", "csv", "json")
ROBUST = re.compile(r"^robust_acc/(.+)/eps_([0-9.eE+-]+)$")
HIDDEN_PARAMS = ("attack.", "version.")  # the same for every trial of a sweep, or bookkeeping
HIDDEN_KEYS = ("seed", "params")
TAGS = ("model", "recipe", "solver", "dataset", "config_id", "config_name", "ray_trial_id", "sweep_id")


@dataclass
class RunRow:
    run_id: str
    experiment: str
    trial_name: str
    status: str
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]


def check_store(uri: str) -> None:
    if uri.startswith("sqlite:"):
        path = uri.split("sqlite:///", 1)[-1] if uri.startswith("sqlite:///") else ""
        if path and not Path(path).is_file():
            raise SpecError("--mlflow-uri", f"no sqlite store at {path}")
        return
    why = probe(uri)
    if why:
        raise SpecError("--mlflow-uri", f"tracking server {uri} is not reachable ({why})")


def _one_line(exc: Exception) -> str:
    msg = getattr(exc, "message", None) or str(exc)
    return " ".join(msg.split())[:300]


def experiments(client, name: str | None) -> list[Any]:
    """The experiment named `name` (also accepted: a sweep id, an experiment id), or every advsweep experiment."""
    if name:
        for candidate in (name, f"advsweep/{name}"):
            exp = client.get_experiment_by_name(candidate)
            if exp is not None:
                return [exp]
        if name.isdigit():
            try:
                return [client.get_experiment(name)]
            except Exception:
                pass
        known = [e.name for e in client.search_experiments(filter_string="name LIKE 'advsweep/%'", max_results=5)]
        hint = f"; e.g. {', '.join(known)}" if known else "; it has no advsweep experiments"
        raise SpecError("--experiment", f"no experiment {name!r} in this tracking store{hint}")
    exps = client.search_experiments(filter_string="name LIKE 'advsweep/%'", max_results=1000)
    if not exps:
        raise SpecError("--mlflow-uri", "this tracking store has no advsweep experiments")
    return exps


def query_runs(uri: str, experiment: str | None = None, filter_string: str | None = None) -> list[RunRow]:
    """Trial runs (tags.kind = 'trial') of the experiment(s) matching the MLflow filter, by experiment and name."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    use_short_retries()
    check_store(uri)
    client = MlflowClient(tracking_uri=uri)
    exps = {e.experiment_id: e.name for e in experiments(client, experiment)}
    flt = "tags.kind = 'trial'" + (f" and {filter_string.strip()}" if filter_string and filter_string.strip() else "")
    rows, token = [], None
    try:
        while True:
            page = client.search_runs(list(exps), filter_string=flt, max_results=1000, page_token=token)
            rows += page
            token = page.token
            if not token:
                break
    except MlflowException as exc:
        raise SpecError("--filter", _one_line(exc)) from None
    out = [RunRow(r.info.run_id, exps.get(r.info.experiment_id, r.info.experiment_id),
                  r.data.tags.get("trial_name") or r.info.run_name or r.info.run_id, r.info.status,
                  dict(r.data.params), dict(r.data.metrics), {k: r.data.tags[k] for k in TAGS if k in r.data.tags})
           for r in rows]
    return sorted(out, key=lambda r: (r.experiment, r.trial_name, r.run_id))


def key_params(rows: list[RunRow]) -> list[str]:
    """Params whose values differ among the runs (the config keys that make the trials different)."""
    from advsweep.naming import varying_keys

    flats = [{k: v for k, v in r.params.items() if not k.startswith(HIDDEN_PARAMS) and k not in HIDDEN_KEYS}
             for r in rows]
    return varying_keys(flats)


def robust_keys(rows: list[RunRow]) -> list[str]:
    keys = {k for r in rows for k in r.metrics if ROBUST.match(k)}
    return sorted(keys, key=lambda k: (ROBUST.match(k).group(1), float(ROBUST.match(k).group(2))))


def _acc(m: dict[str, float], key: str, lo: str, hi: str) -> str:
    if key not in m:
        return "-"
    if lo in m and hi in m:
        return f"{m[key]:.3f} [{m[lo]:.3f}, {m[hi]:.3f}]"
    return f"{m[key]:.3f}"


def _short(key: str) -> str:
    """Column header of a config param: `solver`, `lr`, `model` (for model.name), `recipe` (training.recipe.name)."""
    if not key.startswith(("model.", "training.")):
        return key
    parts = key.split(".")
    return parts[-2] if parts[-1] == "name" else parts[-1]


def records(rows: list[RunRow]) -> tuple[list[str], list[dict[str, Any]]]:
    """Flat records (CSV/JSON): numbers, intervals as their own columns."""
    params, robust = key_params(rows), robust_keys(rows)
    many = len({r.experiment for r in rows}) > 1
    cols = (["experiment"] if many else []) + ["trial_name", "status", *params, "natural_acc", "natural_ci_low",
                                                "natural_ci_high"]
    for k in robust:
        cols += [k, f"{k}/ci_low", f"{k}/ci_high"]
    cols += ["run_id"]
    out = []
    for r in rows:
        rec = {"experiment": r.experiment, "trial_name": r.trial_name, "status": r.status, "run_id": r.run_id,
               **{p: r.params.get(p) for p in params}}
        for k in ("natural_acc", "natural_ci_low", "natural_ci_high", *[f"{k}{s}" for k in robust
                                                                         for s in ("", "/ci_low", "/ci_high")]):
            rec[k] = r.metrics.get(k)
        out.append({c: rec.get(c) for c in cols})
    return cols, out


def render(rows: list[RunRow], fmt: str) -> str:
    if fmt not in FORMATS:
        raise SpecError("--format", f"{fmt!r}: one of {', '.join(FORMATS)}")
    if fmt == "json":
        _, recs = records(rows)
        for rec, r in zip(recs, rows):
            rec["tags"] = r.tags
        return json.dumps(recs, indent=1, default=str, ensure_ascii=False)
    if fmt == "csv":
        cols, recs = records(rows)
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
        w.writeheader()
        w.writerows(recs)
        return buf.getvalue().rstrip("\n")
    params, robust = key_params(rows), robust_keys(rows)
    many = len({r.experiment for r in rows}) > 1
    head = (["sweep"] if many else []) + ["trial", "status", *[_short(p) for p in params], "natural acc [95 % CI]"]
    head += [f"{ROBUST.match(k).group(1)} ε={ROBUST.match(k).group(2)}" for k in robust]
    body = []
    for r in rows:
        m = r.metrics
        line = ([r.experiment.removeprefix("advsweep/")] if many else []) + [r.trial_name, r.status]
        line += [r.params.get(p, "-") for p in params]
        line.append(_acc(m, "natural_acc", "natural_ci_low", "natural_ci_high"))
        line += [_acc(m, k, f"{k}/ci_low", f"{k}/ci_high") for k in robust]
        body.append(line)
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    fmt_line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    lines = [fmt_line(head), fmt_line(["-" * w for w in widths])] + [fmt_line(b) for b in body]
    lines.append(f"{len(rows)} run{'s' if len(rows) != 1 else ''}")
    return "\n".join(lines)


def store_of_sweep(sweep_dir: str | Path) -> tuple[str, str]:
    """(tracking URI, sweep id) a sweep directory logged to."""
    from advsweep.storage.manifest import read_manifest
    from advsweep.storage.tracking import runtime_uri

    manifest = read_manifest(Path(sweep_dir))
    return runtime_uri(manifest.get("mlflow_uri"), Path(sweep_dir).resolve()), manifest["sweep_id"]
