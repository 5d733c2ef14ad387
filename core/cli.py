"""`advsweep` command line: a thin layer over functions the tests call directly.

Bad input (a SpecError) prints one line naming the field or file and exits 2, before anything is written;
unexpected failures keep their traceback.
"""
from __future__ import annotations

import sys
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Optional

import typer

from advsweep.registry import SpecError

app = typer.Typer(add_completion=True, no_args_is_help=True, pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="Ray-distributed hyperparameter and adversarial-attack sweeps.")


def _fail(exc: SpecError) -> None:
    typer.echo(f"advsweep: error: {exc}", err=True)
    raise typer.Exit(2)


def _version(value: bool) -> None:
    if value:
        from advsweep import __version__

        typer.echo(f"advsweep {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="print the version and exit")) -> None:
    """Ray-distributed hyperparameter and adversarial-attack sweeps."""


# Options that `run`, `resume` and `eval` share, with one meaning each.
ADDRESS_HELP = "existing Ray cluster, e.g. HOST:6379 (default: $RAY_ADDRESS, else a private local Ray)"
_WORKERS = typer.Option(None, "--workers", min=1, help="evaluation actors (default: one per free worker slot)")
_NO_PLOTS = typer.Option(False, "--no-plots", help="do not draw the frontier plots at the end")
_QUIET = typer.Option(False, "--quiet", "-q", help="no progress output: only the final results table")
_VERBOSE = typer.Option(False, "--verbose", "-v", help="one line per evaluation unit instead of a progress bar")


def _local_sweep(sweep: str | Path) -> Path:
    """A sweep to read: its directory, or for a URI (s3://…) a local mirror of its tables and metadata (not its
    checkpoints), brought up to date first; files the command writes by default go into that mirror."""
    from advsweep.storage import location

    root = location.root(sweep)
    if not location.is_remote(root):
        return root
    try:
        if not location.exists(location.join(root, "sweep.json")):
            raise SpecError(str(sweep), "not a sweep (no sweep.json there)")
        local = location.mirror(root)
    except OSError as exc:  # unknown bucket, no credentials
        raise SpecError(str(sweep), f"cannot read it ({location.reason(exc)})") from None
    typer.echo(f"{sweep}: reading its local mirror {local}", err=True)
    return local


def _output(quiet: bool, verbose: bool) -> str:
    if quiet and verbose:
        _fail(SpecError("--quiet", "--quiet and --verbose exclude each other"))
    return "quiet" if quiet else "verbose" if verbose else "bar"


def _print_results(res, title: str | None = None, fmt: str = "table", sort: str | None = None) -> None:
    from advsweep.analysis.summary import render

    text = render(res, fmt, sort, title=title)
    if text is not None:
        typer.echo(text)


@app.command()
def validate(spec: Path = typer.Argument(..., help="sweep spec (YAML)")) -> None:
    """Validate a spec and list the trials it expands to."""
    from advsweep.spec import load_spec

    try:
        s = load_spec(spec)
    except SpecError as exc:
        _fail(exc)
    if s.searched:
        from advsweep.spec import describe_space

        srch = s.raw.search
        typer.echo(f"{s.name}: {srch.algorithm} samples {srch.num_samples} trials (maximising "
                   f"{', '.join(srch.objectives)}), {len(s.raw.attacks)} attack configurations")
        for line in describe_space(s.raw):
            typer.echo(line)
        return
    typer.echo(f"{s.name}: {len(s.trials)} trials, {len(s.raw.attacks)} attack configurations")
    for t in s.trials:
        typer.echo(f"  [{t.index:03d}] {t.model} recipe={t.training.recipe} epochs={t.training.epochs} "
                   f"seed={t.seed} config={t.config_id}")


MLFLOW_FALLBACK_HELP = "if the tracking server does not answer: `local` logs to the sweep's own sqlite store"


@app.command()
def run(
    spec: Path = typer.Argument(..., help="sweep spec (YAML)"),
    out: Optional[str] = typer.Option(None, "--out", help="new, empty output directory or URI (s3://bucket/prefix, "
                                      "gs://…; default runs/<name>-<time>)"),
    address: Optional[str] = typer.Option(None, "--address", help=ADDRESS_HELP),
    mlflow_uri: Optional[str] = typer.Option(None, "--mlflow-uri", envvar="MLFLOW_TRACKING_URI",
                                             help="MLflow tracking server (default: sqlite store in the output dir)"),
    mlflow_fallback: Optional[str] = typer.Option(None, "--mlflow-fallback", help=MLFLOW_FALLBACK_HELP),
    resume: bool = typer.Option(False, "--resume", help="continue the sweep already in --out where it stopped"),
    workers: Optional[int] = _WORKERS,
    no_plots: bool = _NO_PLOTS,
    quiet: bool = _QUIET,
    verbose: bool = _VERBOSE,
) -> None:
    """Run a sweep: train every trial on Ray Tune, attack it, write Parquet + MLflow, plot the frontiers; print the
    results table and where the files are."""
    from advsweep.spec import load_spec

    output = _output(quiet, verbose)
    try:
        s = load_spec(spec)
        if resume and out is None:
            raise SpecError("--out", "--resume needs the sweep directory to continue")
        from advsweep.storage.location import root

        out_dir = root(out or Path("runs") / f"{s.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
    except SpecError as exc:
        _fail(exc)
    _run(s, out_dir, address, mlflow_uri, mlflow_fallback, resume, spec, output=output, workers=workers,
         plots=not no_plots)


@app.command()
def resume(
    sweep_dir: str = typer.Argument(..., help="a sweep's output directory or URI (interrupted, killed or crashed)"),
    address: Optional[str] = typer.Option(None, "--address", help=ADDRESS_HELP),
    mlflow_uri: Optional[str] = typer.Option(None, "--mlflow-uri", help="tracking server (default: the sweep's own)"),
    mlflow_fallback: Optional[str] = typer.Option(None, "--mlflow-fallback", help=MLFLOW_FALLBACK_HELP),
    workers: Optional[int] = _WORKERS,
    no_plots: bool = _NO_PLOTS,
    quiet: bool = _QUIET,
    verbose: bool = _VERBOSE,
) -> None:
    """Continue a sweep where it stopped: finished trials and evaluation units are kept, the rest continues."""
    from advsweep.storage.location import join, root
    from advsweep.storage.manifest import read_manifest
    from advsweep.sweep.evaluate import load_sweep_spec

    output = _output(quiet, verbose)
    try:
        sweep = root(sweep_dir)
        read_manifest(sweep)
        s = load_sweep_spec(sweep)
    except SpecError as exc:
        _fail(exc)
    _run(s, sweep, address, mlflow_uri, mlflow_fallback, True, join(sweep, "spec.yaml"), output=output,
         workers=workers, plots=not no_plots)


def _run(s, out_dir: Path | str, address, mlflow_uri, mlflow_fallback, resume: bool, spec_path, *, output: str = "bar",
         workers: Optional[int] = None, plots: bool = True) -> None:
    from advsweep.sweep.driver import run_sweep
    from advsweep.sweep.tune_output import plain_worker_logs

    if mlflow_fallback not in (None, "local"):
        _fail(SpecError("--mlflow-fallback", f"{mlflow_fallback!r}: the only fallback is 'local'"))
    plain_worker_logs()
    try:
        result = run_sweep(s, out_dir, address=address, mlflow_uri=mlflow_uri, spec_path=spec_path, resume=resume,
                           mlflow_fallback=mlflow_fallback, output=output, workers=workers, make_plots=plots)
    except SpecError as exc:
        _fail(exc)
    o, loc = result.out_dir, result.location or str(result.out_dir)
    typer.echo("")
    states = ", ".join(f"{v} {k}" for k, v in result.by_status.items())
    if result.status == "interrupted":
        typer.echo(f"sweep {result.sweep_id}: {result.n_completed}/{result.n_trials} trials completed ({states})")
        typer.echo(f"  interrupted: continue with  advsweep resume {loc}")
        raise typer.Exit(130)
    from advsweep.analysis.summary import load_results

    _print_results(load_results(o), title=f"sweep {result.sweep_id}: {result.n_completed}/{result.n_trials} trials "
                                          f"completed ({states})")
    typer.echo("")
    from advsweep.storage.location import join, root

    if loc != str(o):
        typer.echo(f"  Stored    {loc}  (checkpoints under {join(loc, 'ray')})")
        typer.echo(f"  Mirror    {o}  (tables, plots; `advsweep show {loc}` refreshes it)")
    tables = ("trials", "examples", "robustness", "epochs")
    typer.echo("  Parquet   " + "  ".join(str(join(root(loc), t)) for t in tables))
    typer.echo(f"  MLflow    {result.mlflow_uri}  (experiment advsweep/{result.sweep_id})")
    if result.mlflow_uri.startswith("sqlite:"):
        typer.echo(f"            UI: mlflow ui --backend-store-uri {result.mlflow_uri} --host 127.0.0.1 --port 5000")
    if result.experiment_id:  # the model-training view: MLflow 3's UI opens its GenAI view otherwise
        from advsweep.storage.mlflow_records import ui_url

        server = result.mlflow_uri if result.mlflow_uri.startswith("http") else "http://127.0.0.1:5000"
        typer.echo(f"            {ui_url(server, result.experiment_id)}")
    if result.mlflow_failures:
        typer.echo(f"            {result.mlflow_failures} tracking calls of the driver failed; complete the runs with"
                   f"  advsweep mlflow-sync {o} --mlflow-uri {result.mlflow_uri}")
    if plots:
        typer.echo(f"  Frontiers {o / 'frontier'}")
    typer.echo(f"  Query     duckdb -c \"SELECT * FROM read_parquet('{o}/robustness/*.parquet')\"")
    typer.echo(f"  Results   advsweep show {loc}   (--format csv|json; advsweep best {loc} --attack A --eps E)")
    if result.n_completed < result.n_trials:
        raise typer.Exit(1)


@app.command("mlflow-sync")
def mlflow_sync(
    sweep_dir: Path = typer.Argument(..., help="a sweep's output directory"),
    mlflow_uri: Optional[str] = typer.Option(None, "--mlflow-uri", envvar="MLFLOW_TRACKING_URI",
                                             help="tracking server (default: the one the sweep logged to)"),
) -> None:
    """Replay a sweep's Parquet tables into the tracking server (after an outage), without duplicating runs."""
    from advsweep.storage.manifest import read_manifest
    from advsweep.storage.mlflow_sync import sync
    from advsweep.storage.tracking import runtime_uri

    try:
        uri = mlflow_uri or runtime_uri(read_manifest(sweep_dir).get("mlflow_uri"), sweep_dir.resolve())
        counts = sync(sweep_dir, uri)
    except SpecError as exc:
        _fail(exc)
    typer.echo(f"{sweep_dir}: {counts['runs_created']} runs created, {counts['metrics']} metric values and "
               f"{counts['artifacts']} artifacts added in {uri}")


@app.command()
def runs(
    ctx: typer.Context,
    sweep_dir: Optional[Path] = typer.Argument(None, help="a sweep directory: its tracking store and experiment"),
    experiment: Optional[str] = typer.Option(None, "--experiment", help="experiment name or sweep id (default: all)"),
    filter_string: Optional[str] = typer.Option(None, "--filter", help="MLflow filter, e.g. \"metrics.`robust_acc/"
                                                "pgd/eps_0.1` > 0.3 and tags.solver = 'dopri5'\""),
    fmt: str = typer.Option("table", "--format", help="table | csv | json"),
    mlflow_uri: Optional[str] = typer.Option(None, "--mlflow-uri", envvar="MLFLOW_TRACKING_URI",
                                             help="tracking server or store (default: the sweep directory's)"),
) -> None:
    """List trial runs from the tracking server with MLflow's filter syntax: names, key params, accuracies ± CI."""
    import click

    from advsweep.storage.runs_query import FORMATS, query_runs, render, store_of_sweep

    try:
        if fmt not in FORMATS:
            raise SpecError("--format", f"{fmt!r}: one of {', '.join(FORMATS)}")
        if sweep_dir is not None:  # its own store, unless --mlflow-uri is given (MLFLOW_TRACKING_URI is not)
            uri, sweep_id = store_of_sweep(sweep_dir)
            explicit = ctx.get_parameter_source("mlflow_uri") == click.core.ParameterSource.COMMANDLINE
            mlflow_uri, experiment = (mlflow_uri if explicit else uri), experiment or sweep_id
        if not mlflow_uri:
            raise SpecError("--mlflow-uri", "no tracking store: pass a sweep directory, --mlflow-uri or "
                                            "MLFLOW_TRACKING_URI")
        typer.echo(render(query_runs(mlflow_uri, experiment, filter_string), fmt))
    except SpecError as exc:
        _fail(exc)


@app.command()
def frontier(
    sweep_dir: str = typer.Argument(..., help="a sweep's output directory or URI"),
    out: Optional[Path] = typer.Option(None, "--out", help="where to write (default <sweep_dir>/frontier)"),
) -> None:
    """Pareto fronts of (natural, robust) accuracy per attack × ε: a PNG each, plus front.csv/front.parquet."""
    from advsweep.analysis.frontier import compute_fronts, load_points, write_frontiers

    from advsweep.storage.manifest import require_results

    try:
        sweep_dir = _local_sweep(sweep_dir)
        require_results(sweep_dir)
        files = write_frontiers(sweep_dir, out)
        table = compute_fronts(load_points(sweep_dir))
    except SpecError as exc:
        _fail(exc)
    front = table[table["on_front"]]
    for (attack, eps), g in front.groupby(["attack", "eps"], sort=True):
        members = ", ".join(f"{r.trial_name} ({r.natural_acc:.3f}/{r.robust_acc:.3f})"
                            for r in g.sort_values("natural_acc").itertuples())
        typer.echo(f"{attack} eps={eps:g}: {members}")
    for f in files:
        typer.echo(f"wrote {f}")


@app.command("eval")
def eval_(
    sweep_dir: str = typer.Argument(..., help="a finished sweep's output directory or URI"),
    suite: Path = typer.Option(..., "--suite", help="attack suite (YAML: attacks, eval, resources)"),
    address: Optional[str] = typer.Option(None, "--address", help=ADDRESS_HELP),
    mlflow_uri: Optional[str] = typer.Option(None, "--mlflow-uri",
                                             help="tracking server (default: the one the sweep logged to)"),
    trials: Optional[str] = typer.Option(None, "--trials", help="only these trials: names, ids or indices, "
                                                                "comma-separated (default: every completed trial)"),
    workers: Optional[int] = _WORKERS,
    no_plots: bool = _NO_PLOTS,
    quiet: bool = _QUIET,
    verbose: bool = _VERBOSE,
) -> None:
    """Add attacks to an existing sweep's trials without retraining (finished units are skipped); print the results
    table of the attacks run."""
    from advsweep.analysis.summary import load_results
    from advsweep.spec import load_suite
    from advsweep.storage.tracking import CLIENT_ENV
    from advsweep.sweep.cluster_checks import check_cluster_resources
    from advsweep.sweep.driver import init_ray
    from advsweep.sweep.evaluate import attack_configs, check_evaluation, load_sweep_data, run_evaluation_stage, trial_rows_from_table
    from advsweep.sweep.tune_output import plain_worker_logs

    from advsweep.storage import location

    output = _output(quiet, verbose)
    try:
        from advsweep.storage.manifest import require_results
        from advsweep.storage.tracking import runtime_uri

        s = load_suite(suite)
        sweep_dir = location.root(sweep_dir)  # a directory, or a URI: workers write shards there from every node
        require_results(sweep_dir)
        manifest, data = load_sweep_data(sweep_dir)
        rows = trial_rows_from_table(sweep_dir)
        attacks = attack_configs(s.attacks)
        chosen = _chosen_trials(sweep_dir, trials)
        if chosen is not None:  # every other trial keeps its rows; the attacks run on the chosen ones only
            attacks = [replace(a, trials=tuple(t for t in chosen if a.trials is None or t in a.trials
                                               or _index_of(rows, t) in a.trials)) for a in attacks]
        skip = check_evaluation(sweep_dir, rows, attacks)
        plain_worker_logs()
        init_ray(address, dict(CLIENT_ENV))
        check_cluster_resources(s.resources)
        counts = run_evaluation_stage(sweep_dir, manifest["sweep_id"], rows, attacks, data,
                                      s.eval.model_dump(), mlflow_uri or runtime_uri(manifest.get("mlflow_uri"),
                                                                                     sweep_dir),
                                      s.resources.cpu,
                                      s.resources.gpu, workers, skip=skip, output=output)
        local = location.mirror(sweep_dir)
        files = []
        if not no_plots and any(r["status"] == "completed" for r in rows):
            from advsweep.analysis.frontier import write_frontiers

            files = write_frontiers(local)
            location.push(local, sweep_dir, "frontier")
        # minimal-distortion attacks (ε = 0 only) have distances, not accuracies: `advsweep curves` shows them
        bounded = [a.label for a in attacks if any(e > 0 for e in a.eps)]
        res = load_results(local, attacks=bounded or None)
    except SpecError as exc:
        _fail(exc)
    if chosen is not None:
        res.trials = res.trials[res.trials["trial_id"].isin(chosen)]
    typer.echo("")
    _print_results(res, title=f"{counts['ran']} of {counts['units']} units run ({counts['resubmitted']} resubmitted)")
    typer.echo("")
    typer.echo(f"  Parquet   {location.join(sweep_dir, 'examples')}  {location.join(sweep_dir, 'robustness')}")
    if files:
        typer.echo(f"  Frontiers {location.join(sweep_dir, 'frontier')}")
    typer.echo(f"  Results   advsweep show {sweep_dir}")


def _index_of(rows: list[dict], trial_id: str):
    return next((r.get("trial_index") for r in rows if r["trial_id"] == trial_id), None)


def _chosen_trials(sweep_dir: Path | str, trials: Optional[str]) -> Optional[list[str]]:
    """Trial ids named by `--trials` (names, ids or indices); None for every trial. Unknown names fail (exit 2)."""
    if trials is None:
        return None
    from advsweep.analysis.summary import load_results

    table = load_results(_local_sweep(sweep_dir)).trials
    done = table[table["status"] == "completed"]
    chosen = []
    for ref in [t.strip() for t in trials.split(",") if t.strip()]:
        hit = done[(done["name"] == ref) | (done["trial_id"] == ref) | (done["trial_index"].astype(str) == ref)]
        if hit.empty:
            have = ", ".join(f"{n} ({i})" for n, i in zip(done["name"], done["trial_id"]))
            raise SpecError("--trials", f"no completed trial {ref!r} in {sweep_dir} (have: {have})")
        chosen += [t for t in hit["trial_id"] if t not in chosen]
    if not chosen:
        raise SpecError("--trials", "names no trial")
    return chosen


@app.command()
def curves(
    sweep_dir: str = typer.Argument(..., help="a sweep's output directory or URI"),
    out: Optional[Path] = typer.Option(None, "--out", help="where to write (default <sweep_dir>/curves)"),
) -> None:
    """Accuracy-vs-ε curves (ℓ2, ℓ∞, RMS) and minimal-distortion statistics from minimal-perturbation attacks."""
    from advsweep.analysis.curves import write_curves

    from advsweep.storage.manifest import require_results

    try:
        sweep_dir = _local_sweep(sweep_dir)
        require_results(sweep_dir)
        files = write_curves(sweep_dir, out)
    except SpecError as exc:
        _fail(exc)
    for f in files:
        typer.echo(f"wrote {f}")


@app.command()
def compare(
    sweep_dir: str = typer.Argument(..., help="a sweep's output directory or URI"),
    a: str = typer.Argument(..., help="trial A (trial id, trial index or name)"),
    b: str = typer.Argument(..., help="trial B"),
    attack: str = typer.Option(..., "--attack", help="attack label, e.g. pgd"),
    eps: Optional[float] = typer.Option(None, "--eps", help="ε of an ε-bounded attack"),
) -> None:
    """Paired tests of two trials on the same examples: exact McNemar on robust accuracy, Wilcoxon signed-rank on
    per-example minimal distances, with effect sizes."""
    from advsweep.analysis.paired import compare as run_compare
    from advsweep.analysis.paired import format_comparison
    from advsweep.analysis.tables import load_sweep

    try:
        sweep = load_sweep(_local_sweep(sweep_dir))
        result = run_compare(sweep, a, b, attack, eps)
    except SpecError as exc:
        _fail(exc)
    for note in sweep.notes:
        typer.echo(f"note: {note}")
    for line in format_comparison(result):
        typer.echo(line)


@app.command()
def audit(
    sweep_dir: str = typer.Argument(..., help="a sweep's output directory or URI"),
    out: Optional[Path] = typer.Option(None, "--out", help="where to write (default <sweep_dir>/audit)"),
    mlflow: bool = typer.Option(True, "--mlflow/--no-mlflow", help="also log each verdict on its trial's MLflow run"),
) -> None:
    """Gradient-masking audit per trial: every check with its numbers, and a verdict (ok, suspect, masked,
    insufficient evidence)."""
    from advsweep.analysis.audit import run_audit, write_audit
    from advsweep.analysis.tables import load_sweep

    try:
        sweep = load_sweep(_local_sweep(sweep_dir))
        result = run_audit(sweep)
        files = write_audit(sweep, result, out, mlflow=mlflow)
    except SpecError as exc:
        _fail(exc)
    for note in sweep.notes:
        typer.echo(f"note: {note}")
    for v in result.verdicts.itertuples():
        extra = f" ({v.failed_checks})" if v.failed_checks else f" ({v.summary})" if v.summary else ""
        typer.echo(f"[{v.trial_index:03d}] {v.label}: {v.verdict}{extra}")
    for f in files:
        typer.echo(f"wrote {f}")


@app.command()
def report(
    sweep_dir: str = typer.Argument(..., help="a sweep's output directory or URI"),
    out: Optional[Path] = typer.Option(None, "--out", help="where to write (default <sweep_dir>/report)"),
    resamples: int = typer.Option(1000, "--resamples", min=0, help="bootstrap resamples of the test examples"),
    seed: int = typer.Option(0, "--seed", help="bootstrap seed"),
) -> None:
    """One self-contained HTML report (fitted frontiers with bootstrap bands, curves, trials, audit, spec,
    versions), computed from the Parquet tables alone."""
    from tqdm import tqdm

    from advsweep.analysis.report import PHASES, build_report

    try:
        sweep_dir = _local_sweep(sweep_dir)
    except SpecError as exc:
        _fail(exc)
    with tqdm(total=len(PHASES), desc="report", unit="phase", leave=False, delay=1.0) as bar:
        def step(stage: str) -> None:
            bar.set_postfix_str(stage)
            bar.update(1)

        try:
            result = build_report(sweep_dir, out, resamples=resamples, seed=seed, progress=step)
        except SpecError as exc:
            bar.close()
            _fail(exc)
    for note in result.notes:
        typer.echo(f"note: {note}")
    for v in result.audit.verdicts.itertuples():
        typer.echo(f"[{v.trial_index:03d}] {v.label}: {v.verdict}")
    typer.echo(f"wrote {result.path} ({result.timings['total']:.1f} s)")


# ---- query commands: results from a sweep's Parquet tables ----
_FORMAT = typer.Option("table", "--format", help="table (rich on a terminal, aligned text otherwise), csv or json")


def _finished_results(sweep_dir: Path | str, attack: Optional[str], eps: Optional[str], ensemble: bool = False):
    from advsweep.analysis.summary import load_results, parse_eps
    from advsweep.storage.manifest import require_results

    sweep_dir = _local_sweep(sweep_dir)
    require_results(sweep_dir)
    attacks = [a.strip() for a in attack.split(",") if a.strip()] if attack else None
    return load_results(sweep_dir, attacks, parse_eps(eps) if eps is not None else None, ensemble)


@app.command()
def show(
    sweep_dir: str = typer.Argument(..., help="a sweep's output directory or URI"),
    attack: Optional[str] = typer.Option(None, "--attack", help="only these attack labels (comma-separated; "
                                                               "`ensemble`: the per-example worst case)"),
    eps: Optional[str] = typer.Option(None, "--eps", help="only this ε (0.1 or 8/255)"),
    sort: Optional[str] = typer.Option(None, "--sort", help="trial (default), name, status, natural, nfe, or a "
                                                            "robust column such as pgd@0.1"),
    fmt: str = _FORMAT,
) -> None:
    """The results table of a sweep: one row per trial with natural and robust accuracy (± 95 % interval) per
    attack × ε, and NFE."""
    from advsweep.analysis.summary import FORMATS, render

    try:
        if fmt not in FORMATS:
            raise SpecError("--format", f"{fmt!r}: choose from {', '.join(FORMATS)}")
        res = _finished_results(sweep_dir, attack, eps)
        text = render(res, fmt, sort, title=f"sweep {res.sweep_id}")
    except SpecError as exc:
        _fail(exc)
    if text is not None:
        typer.echo(text)


@app.command()
def best(
    sweep_dir: str = typer.Argument(..., help="a sweep's output directory or URI"),
    attack: str = typer.Option(..., "--attack", help="attack label, e.g. pgd"),
    eps: str = typer.Option(..., "--eps", help="ε (0.1 or 8/255)"),
    min_natural: Optional[float] = typer.Option(None, "--min-natural", min=0.0, max=1.0,
                                                help="only trials with at least this natural accuracy"),
    fmt: str = typer.Option("table", "--format", help="table or json"),
) -> None:
    """The trial with the highest robust accuracy at one attack × ε: its interval, natural accuracy, name and
    checkpoint, and the runner-up."""
    import json

    from advsweep.analysis.best import best_lines, best_trial

    try:
        if fmt not in ("table", "json"):
            raise SpecError("--format", f"{fmt!r}: choose from table, json")
        if "," in attack:
            raise SpecError("--attack", "one attack label")
        b = best_trial(_finished_results(sweep_dir, attack, eps), min_natural)
    except SpecError as exc:
        _fail(exc)
    if fmt == "json":
        typer.echo(json.dumps({"attack": b.cell.attack, "eps": b.cell.eps, "candidates": b.candidates,
                               "best": {**b.row, "result": b.result}, "runner_up": b.runner_up}, indent=2))
        return
    for line in best_lines(b):
        typer.echo(line)


@app.command()
def export(
    sweep_dir: str = typer.Argument(..., help="a sweep's output directory or URI"),
    robustbench: bool = typer.Option(False, "--robustbench", help="RobustBench model-info JSON per trial and "
                                                                   "threat model"),
    out: Optional[Path] = typer.Option(None, "--out", help="where to write (default <sweep_dir>/robustbench)"),
    eps: Optional[str] = typer.Option(None, "--eps", help="the ε to report (default: AutoAttack's, else the "
                                                          "largest evaluated)"),
) -> None:
    """Export a sweep's results in another tool's format (`--robustbench`)."""
    from advsweep.analysis.robustbench import export_robustbench
    from advsweep.analysis.summary import parse_eps
    from advsweep.storage.manifest import require_results

    try:
        if not robustbench:
            raise SpecError("export", "choose a format: --robustbench")
        sweep_dir = _local_sweep(sweep_dir)
        require_results(sweep_dir)
        files = export_robustbench(sweep_dir, out, parse_eps(eps) if eps is not None else None)
    except SpecError as exc:
        _fail(exc)
    for f in files:
        typer.echo(f"wrote {f}")


@app.command("list")
def list_(what: str = typer.Argument(..., help="models, attacks, recipes or penalties")) -> None:
    """Registered models, attacks, recipes or penalties with their options (type = default), as a spec may set
    them."""
    from advsweep.registry_docs import KINDS, describe

    try:
        if what not in KINDS:
            raise SpecError("list", f"{what!r}: choose from {', '.join(KINDS)}")
        lines = describe(what)
    except SpecError as exc:
        _fail(exc)
    for line in lines:
        typer.echo(line)


# ---- cluster: thin commands over advsweep.cluster (the only place the CLI imports it) ----
_JOBS_ADDRESS = typer.Option(None, "--address", envvar="RAY_API_SERVER_ADDRESS",
                             help="the head's dashboard / Jobs API, e.g. http://HEAD:8265")


@app.command()
def submit(
    spec: Path = typer.Argument(..., help="sweep spec (YAML)"),
    address: Optional[str] = _JOBS_ADDRESS,
    out: str = typer.Option(..., "--out", help="URI every node writes (s3://bucket/prefix, gs://…) or an absolute "
                                               "path mounted at the same place on every node"),
    mlflow_uri: Optional[str] = typer.Option(None, "--mlflow-uri", help="tracking server every node reaches "
                                             "(`advsweep mlflow-server`); default: sqlite in the output dir"),
    python: str = typer.Option("python", "--python", help="interpreter with advsweep installed on the head"),
) -> None:
    """Submit a sweep to a Ray cluster as a Ray Job (after a preflight check on the cluster)."""
    from advsweep.cluster.jobs import submit as submit_job

    try:
        sid = submit_job(spec, address, out, mlflow_uri=mlflow_uri, python=python, echo=typer.echo)
    except SpecError as exc:
        _fail(exc)
    typer.echo(f"submitted job {sid}")
    typer.echo(f"  advsweep status {sid}   advsweep logs {sid} --follow   advsweep stop {sid}")


@app.command()
def status(job: Optional[str] = typer.Argument(None, help="job id (default: every advsweep job)"),
           address: Optional[str] = _JOBS_ADDRESS) -> None:
    """Status of a submitted sweep, or of every advsweep job on the cluster."""
    from advsweep.cluster.jobs import status as job_status

    try:
        states = job_status(address, job)
    except SpecError as exc:
        _fail(exc)
    for st in states:
        typer.echo(st.line())


@app.command()
def logs(job: str = typer.Argument(..., help="job id"), address: Optional[str] = _JOBS_ADDRESS,
         follow: bool = typer.Option(False, "--follow", "-f", help="keep printing until the job ends")) -> None:
    """A submitted sweep's driver log."""
    from advsweep.cluster.jobs import logs as job_logs

    try:
        for chunk in job_logs(address, job, follow):
            typer.echo(chunk, nl=False)
    except SpecError as exc:
        _fail(exc)


@app.command()
def stop(job: str = typer.Argument(..., help="job id"), address: Optional[str] = _JOBS_ADDRESS) -> None:
    """Stop a submitted sweep (its trials and evaluation workers end with it)."""
    from advsweep.cluster.jobs import stop as stop_job

    try:
        st = stop_job(address, job)
    except SpecError as exc:
        _fail(exc)
    typer.echo(f"{job}: was {st.status}; " + ("stop requested" if st.status not in ("SUCCEEDED", "FAILED", "STOPPED")
                                               else "nothing to stop"))


@app.command("mlflow-server")
def mlflow_server(
    root: Path = typer.Option(Path("mlflow-server"), "--root", help="directory of the sqlite store and artifacts"),
    host: str = typer.Option("127.0.0.1", "--host", help="bind address (0.0.0.0 exposes it: MLflow has no auth)"),
    port: int = typer.Option(5000, "--port"),
    backend_store_uri: Optional[str] = typer.Option(None, "--backend-store-uri",
                                                    help="sqlite:////ABS/mlflow.db (default in --root) or postgresql://…"),
    artifacts: Optional[str] = typer.Option(None, "--artifacts-destination",
                                            help="artifact root (default <root>/mlartifacts; s3://… works too)"),
    workers: int = typer.Option(2, "--workers", min=1),
) -> None:
    """Start an MLflow tracking server (serving artifacts) and print the URI to pass to run/submit."""
    from advsweep.cluster import mlflow_server as ms

    try:
        p = ms.plan(root, host=host, port=port, backend_store_uri=backend_store_uri, artifacts_destination=artifacts,
                    workers=workers)
    except SpecError as exc:
        _fail(exc)
    proc = ms.start(p, root)
    typer.echo(f"MLflow tracking server at {p.uri}  (store {p.backend_store_uri}, artifacts {p.artifacts_destination})")
    typer.echo(f"  advsweep submit SPEC --mlflow-uri {p.uri} …   or   advsweep run SPEC --mlflow-uri {p.uri}")
    if host not in ms.LOOPBACK:
        typer.echo(f"  warning: listening on {host}: anyone who reaches this port can read and write runs", err=True)
    try:
        proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        ms.stop(proc)


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
