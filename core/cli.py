"""`advsweep` command line: a thin layer over functions the tests call directly.

Bad input (a SpecError) prints one line naming the field or file and exits 2, before anything is written;
unexpected failures keep their traceback.
"""
from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path
from typing import Optional

import typer

from advsweep.registry import SpecError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Ray-distributed hyperparameter and adversarial-attack sweeps.")


def _fail(exc: SpecError) -> None:
    typer.echo(f"advsweep: error: {exc}", err=True)
    raise typer.Exit(2)


@app.command()
def validate(spec: Path = typer.Argument(..., help="sweep spec (YAML)")) -> None:
    """Validate a spec and list the trials it expands to."""
    from advsweep.spec import load_spec

    try:
        s = load_spec(spec)
    except SpecError as exc:
        _fail(exc)
    typer.echo(f"{s.name}: {len(s.trials)} trials, {len(s.raw.attacks)} attack configurations")
    for t in s.trials:
        typer.echo(f"  [{t.index:03d}] {t.model} recipe={t.training.recipe} epochs={t.training.epochs}")


@app.command()
def run(
    spec: Path = typer.Argument(..., help="sweep spec (YAML)"),
    out: Optional[Path] = typer.Option(None, "--out", help="new, empty output directory (default runs/<name>-<time>)"),
    address: Optional[str] = typer.Option(None, "--address", help="existing Ray cluster (default: a local one)"),
    mlflow_uri: Optional[str] = typer.Option(None, "--mlflow-uri", envvar="MLFLOW_TRACKING_URI",
                                             help="MLflow tracking server (default: sqlite store in the output dir)"),
) -> None:
    """Run a sweep: train every trial on Ray Tune, attack it, write Parquet + MLflow, plot the frontiers."""
    from advsweep.spec import load_spec
    from advsweep.sweep.driver import run_sweep

    try:
        s = load_spec(spec)
        out_dir = (out or Path("runs") / f"{s.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}").resolve()
        result = run_sweep(s, out_dir, address=address, mlflow_uri=mlflow_uri, spec_path=spec)
    except SpecError as exc:
        _fail(exc)
    o = result.out_dir
    typer.echo("")
    typer.echo(f"sweep {result.sweep_id}: {result.n_completed}/{result.n_trials} trials completed")
    typer.echo(f"  Parquet   {o / 'trials'}  {o / 'examples'}  {o / 'robustness'}  {o / 'epochs'}")
    typer.echo(f"  MLflow    {result.mlflow_uri}  (experiment advsweep/{result.sweep_id})")
    if result.mlflow_uri.startswith("sqlite:"):
        typer.echo(f"            UI: mlflow ui --backend-store-uri {result.mlflow_uri} --host 127.0.0.1 --port 5000")
    typer.echo(f"  Frontiers {o / 'frontier'}")
    typer.echo(f"  Query     duckdb -c \"SELECT * FROM read_parquet('{o}/robustness/*.parquet')\"")
    if result.n_completed < result.n_trials:
        raise typer.Exit(1)


@app.command()
def frontier(
    sweep_dir: Path = typer.Argument(..., help="a sweep's output directory"),
    out: Optional[Path] = typer.Option(None, "--out", help="where to write (default <sweep_dir>/frontier)"),
) -> None:
    """Pareto fronts of (natural, robust) accuracy per attack × ε: a PNG each, plus front.csv/front.parquet."""
    from advsweep.analysis.frontier import compute_fronts, load_points, write_frontiers

    try:
        files = write_frontiers(sweep_dir, out)
        table = compute_fronts(load_points(sweep_dir))
    except SpecError as exc:
        _fail(exc)
    front = table[table["on_front"]]
    for (attack, eps), g in front.groupby(["attack", "eps"], sort=True):
        members = ", ".join(f"{r.trial_id}({r.model_name}: {r.natural_acc:.3f}/{r.robust_acc:.3f})"
                            for r in g.sort_values("natural_acc").itertuples())
        typer.echo(f"{attack} eps={eps:g}: {members}")
    for f in files:
        typer.echo(f"wrote {f}")


@app.command("eval")
def eval_(
    sweep_dir: Path = typer.Argument(..., help="a finished sweep's output directory"),
    suite: Path = typer.Option(..., "--suite", help="attack suite (YAML: attacks, eval, resources)"),
    address: Optional[str] = typer.Option(None, "--address", help="existing Ray cluster (default: a local one)"),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="actors (default: one per worker slot)"),
) -> None:
    """Add attacks to an existing sweep's trials without retraining (finished units are skipped)."""
    from advsweep.spec import load_suite
    from advsweep.storage.tracking import CLIENT_ENV
    from advsweep.sweep.cluster_checks import check_cluster_resources
    from advsweep.sweep.driver import init_ray
    from advsweep.sweep.evaluate import attack_configs, check_evaluation, load_sweep_data, run_evaluation_stage, trial_rows_from_table

    try:
        s = load_suite(suite)
        sweep_dir = sweep_dir.resolve()
        manifest, data = load_sweep_data(sweep_dir)
        rows = trial_rows_from_table(sweep_dir)
        check_evaluation(sweep_dir, rows, attack_configs(s.attacks))
        init_ray(address, dict(CLIENT_ENV))
        check_cluster_resources(s.resources)
        counts = run_evaluation_stage(sweep_dir, manifest["sweep_id"], rows, attack_configs(s.attacks), data,
                                      s.eval.model_dump(), manifest.get("mlflow_uri"), s.resources.cpu,
                                      s.resources.gpu, workers)
    except SpecError as exc:
        _fail(exc)
    typer.echo(f"{counts['ran']} of {counts['units']} units run ({counts['resubmitted']} resubmitted); "
               f"results in {sweep_dir / 'examples'} and {sweep_dir / 'robustness'}")


@app.command()
def curves(
    sweep_dir: Path = typer.Argument(..., help="a sweep's output directory"),
    out: Optional[Path] = typer.Option(None, "--out", help="where to write (default <sweep_dir>/curves)"),
) -> None:
    """Accuracy-vs-ε curves (ℓ2, ℓ∞, RMS) and minimal-distortion statistics from minimal-perturbation attacks."""
    from advsweep.analysis.curves import write_curves

    try:
        files = write_curves(sweep_dir, out)
    except SpecError as exc:
        _fail(exc)
    for f in files:
        typer.echo(f"wrote {f}")


# ---- cluster: thin commands over advsweep.cluster (the only place the CLI imports it) ----
_JOBS_ADDRESS = typer.Option(None, "--address", envvar="RAY_API_SERVER_ADDRESS",
                             help="the head's dashboard / Jobs API, e.g. http://HEAD:8265")


@app.command()
def submit(
    spec: Path = typer.Argument(..., help="sweep spec (YAML)"),
    address: Optional[str] = _JOBS_ADDRESS,
    out: str = typer.Option(..., "--out", help="absolute path mounted at the same place on every node"),
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
