"""The evaluation stage of a sweep (also `advsweep eval`): engine → examples → robustness → trials table → MLflow."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from advsweep.evaluation.aggregate import robustness_table
from advsweep.evaluation.checkpoints import load_model
from advsweep.evaluation.engine import TrialRef, evaluate, pending_units
from advsweep.evaluation.units import AttackConfig, shard_bounds
from advsweep.registry import SpecError
from advsweep.storage import location as L
from advsweep.storage import schema as S
from advsweep.storage.parquet import read_examples, read_skipped, sweep_schema_version, trials_table, write_atomic
from advsweep.storage.parquet import trial_rows as read_trial_rows
from advsweep.storage.mlflow_records import attack_metrics, attack_params, trial_note
from advsweep.storage.tracking import log_attack_results
from advsweep.sweep.progress import EvalProgress


def attack_configs(attacks: list[Any]) -> list[AttackConfig]:
    """From validated spec/suite AttackSpecs."""
    return [AttackConfig(a.label, a.name, tuple(a.eps), a.options, a.source_trial,
                         tuple(a.trials) if getattr(a, "trials", None) else None) for a in attacks]


def source_checkpoints(trial_rows: list[dict[str, Any]], attacks: list[AttackConfig]) -> dict[str, str]:
    """Attack label → checkpoint of its source trial (given by trial id or by index in the spec's trial list)."""
    out = {}
    for i, a in enumerate(attacks):
        if a.source_trial is None:
            continue
        match = [r for r in trial_rows if a.source_trial in (r["trial_id"], r.get("trial_index"))]
        if not match or match[0]["status"] != "completed" or not match[0].get("checkpoint"):
            raise SpecError(f"attacks[{i}].source_trial", f"no completed trial {a.source_trial!r} in this sweep")
        out[a.label] = match[0]["checkpoint"]
    return out


def check_labels(out_dir: Path, attacks: list[AttackConfig]) -> None:
    """A label already in the sweep must mean the same attack and options, or its rows would mix two attacks."""
    existing = read_examples(out_dir, columns=["attack", "attack_name", "attack_params"])
    if existing.num_rows == 0:
        return
    seen = {(r["attack"]): (r["attack_name"], r["attack_params"]) for r in existing.group_by(
        ["attack", "attack_name", "attack_params"]).aggregate([]).to_pylist()}
    for i, a in enumerate(attacks):
        if a.label in seen and seen[a.label] != (a.name, a.params_json()):
            raise SpecError(f"attacks[{i}].label", f"{a.label!r} is already used in this sweep by "
                                                   f"{seen[a.label][0]} {seen[a.label][1]}; choose another label")


def check_evaluation(out_dir: Path, trial_rows: list[dict[str, Any]],
                     attacks: list[AttackConfig]) -> dict[tuple[str, str], str]:
    """Fail fast on a missing or corrupt checkpoint or a reused attack label. Returns the (trial id, attack label)
    pairs whose attack does not apply to the trial's model, with the reason (they are skipped, not fatal)."""
    version = sweep_schema_version(out_dir)
    if version != S.SCHEMA_VERSION:
        raise SpecError(str(out_dir), f"written by advsweep schema version {version}; attacks can be added only to "
                                      f"sweeps of version {S.SCHEMA_VERSION} (analysis still reads it)")
    skip = {}
    for r in trial_rows:
        if r["status"] == "completed":
            if not r.get("checkpoint"):
                raise SpecError(f"trial {r['trial_id']}", "has no checkpoint")
            skip.update(not_applicable(r["trial_id"], r.get("trial_index"), r["checkpoint"], attacks))
    source_checkpoints(trial_rows, attacks)
    check_labels(out_dir, attacks)
    return skip


def not_applicable(trial_id: str, trial_index: int | None, checkpoint: str,
                   attacks: list[AttackConfig]) -> dict[tuple[str, str], str]:
    """(trial id, attack label) → why the attack does not apply to this trial's model (loads the checkpoint)."""
    from advsweep.attacks import ATTACKS

    model = load_model(checkpoint)
    reasons = {(trial_id, a.label): ATTACKS.get(a.name).not_applicable(model, a.options)
               for a in attacks if a.runs_on(trial_id, trial_index)}
    return {k: v for k, v in reasons.items() if v}


def _write_skipped(out_dir: Path, sweep_id: str, attacks: list[AttackConfig], skip: dict[tuple[str, str], str]):
    """Merge this stage's skipped pairs into skipped/ (a pair skipped again replaces its old row)."""
    by_label = {a.label: a for a in attacks}
    old = [r for r in read_skipped(out_dir).to_pylist() if (r["trial_id"], r["attack"]) not in skip]
    new = [{"sweep_id": sweep_id, "trial_id": t, "attack": label, "attack_name": by_label[label].name,
            "norm": by_label[label].norm, "eps": list(by_label[label].eps), "reason": reason}
           for (t, label), reason in sorted(skip.items())]
    if old or new:
        write_atomic(pa.Table.from_pylist(old + new, schema=S.SKIPPED), L.join(out_dir, "skipped", "part-0.parquet"), sweep_id)


def run_evaluation_stage(out_dir: Path, sweep_id: str, trial_rows: list[dict[str, Any]], attacks: list[AttackConfig],
                         data: dict[str, np.ndarray], eval_cfg: dict[str, Any], mlflow_uri: str | None,
                         cpus_per_worker: float = 1, gpus_per_worker: float = 0,
                         num_workers: int | None = None,
                         skip: dict[tuple[str, str], str] | None = None, output: str = "bar",
                         pool=None) -> dict[str, int]:
    """Run the units of `attacks` on the completed trials, then rewrite the aggregate tables. Call
    `check_evaluation` first (before Ray starts) so that bad input fails with one line and nothing written; pass
    the pairs it returned as `skip`. `output`: a progress bar, `quiet` or `verbose` (a line per unit). `pool`: a warm
    `engine.WorkerPool` to run on (the overlapped evaluation's)."""
    done = [r for r in trial_rows if r["status"] == "completed"]
    if skip is None:
        skip = check_evaluation(out_dir, trial_rows, attacks)
    if output != "quiet":
        for (trial_id, label), reason in sorted(skip.items()):
            print(f"[eval] {trial_id} {label}: not applicable ({reason}); skipped", flush=True)

    counts = {"units": 0, "ran": 0, "resubmitted": 0}
    if done and attacks:
        refs = [TrialRef(r["trial_id"], r["checkpoint"], r.get("trial_index")) for r in done]
        progress = EvalProgress(output)
        _, todo = pending_units(out_dir, refs, attacks, len(data["x_test"]), eval_cfg["shard_size"], set(skip))
        sizes = [hi - lo for lo, hi in shard_bounds(len(data["x_test"]), eval_cfg["shard_size"])]
        progress.start(len(todo), sum(sizes[u.shard] for u in todo))
        try:
            counts = evaluate(out_dir, sweep_id, refs, attacks,
                              data["x_test"], data["y_test"], data["test_index"], shard_size=eval_cfg["shard_size"],
                              batch_size=eval_cfg["batch_size"], base_seed=eval_cfg["seed"], num_workers=num_workers,
                              cpus_per_worker=cpus_per_worker, gpus_per_worker=gpus_per_worker,
                              source_checkpoints=source_checkpoints(trial_rows, attacks), progress=progress,
                              skip=set(skip), pool=pool)
        finally:
            progress.close()
    _write_skipped(out_dir, sweep_id, attacks, skip)
    examples = read_examples(out_dir)
    robustness = robustness_table(examples, read_skipped(out_dir), trial_rows)
    eval_seconds = unit_seconds_by_trial(examples)
    write_atomic(robustness, L.join(out_dir, "robustness", "part-0.parquet"), sweep_id)
    rob_rows = [r for r in robustness.to_pylist() if r["status"] == "ok"]
    for row in trial_rows:
        row["eval_time_s"] = eval_seconds.get(row["trial_id"])
        row["robust_summary"] = [{k: r[k] for k in ("attack", "eps", "robust_acc", "ci_low", "ci_high")}
                         for r in rob_rows if r["trial_id"] == row["trial_id"]] if row["status"] == "completed" else []
    write_atomic(trials_table(trial_rows, out_dir), L.join(out_dir, "trials", "part-0.parquet"), sweep_id)
    if mlflow_uri:
        per_trial = attack_metrics(rob_rows)
        log_attack_results(mlflow_uri, [
            (row["mlflow_run_id"], stage_attack_params(row, attacks, skip), per_trial.get(row["trial_id"], {}),
             trial_note(row.get("trial_name") or row["trial_id"], row, per_trial.get(row["trial_id"], {})))
            for row in done if row.get("mlflow_run_id")])
    return counts


def stage_attack_params(row: dict[str, Any], attacks: list[AttackConfig],
                        skip: dict[tuple[str, str], str]) -> dict[str, str]:
    """`attack.<label>.*` params of the attacks this stage ran on a trial."""
    out: dict[str, str] = {}
    for a in attacks:
        if a.runs_on(row["trial_id"], row.get("trial_index")) and (row["trial_id"], a.label) not in skip:
            out.update(attack_params(a.label, a.name, a.options, list(a.eps)))
            if a.source_trial is not None:
                out[f"attack.{a.label}.source_trial"] = str(a.source_trial)
    return out


def unit_seconds_by_trial(examples) -> dict[str, float]:
    """Attack wall time per trial: each unit's time once (it is repeated on every row of the unit)."""
    if examples.num_rows == 0:
        return {}
    units = examples.group_by(["trial_id", "attack", "eps", "shard"]).aggregate([("wall_time_s", "max")])
    per_trial = units.group_by("trial_id").aggregate([("wall_time_s_max", "sum")]).to_pylist()
    return {r["trial_id"]: r["wall_time_s_max_sum"] for r in per_trial}


def trial_rows_from_table(out_dir: Path) -> list[dict[str, Any]]:
    """Rows of an existing trials table in the form `trials_table` writes, paths resolved against `out_dir`."""
    return read_trial_rows(out_dir)


def load_sweep_data(out_dir: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The manifest and the sweep's recorded test subset, re-read from the dataset."""
    from advsweep.data import load_dataset
    from advsweep.spec import load_spec

    from advsweep.storage.manifest import read_manifest

    manifest = read_manifest(out_dir)
    spec = load_sweep_spec(out_dir)
    ds = load_dataset(spec.raw.data.dataset, spec.raw.data.data_dir)
    test_index = L.load_npz(L.join(out_dir, "subsets.npz"))["test_index"]
    return manifest, {"x_test": ds.x_test[test_index], "y_test": ds.y_test[test_index], "test_index": test_index}


def load_sweep_spec(out_dir: Path | str):
    """The spec a sweep was started with (its spec.yaml, local or remote)."""
    from advsweep.spec import load_spec, parse_spec

    if not L.is_remote(out_dir):
        return load_spec(Path(out_dir) / "spec.yaml")
    f = L.join(out_dir, "spec.yaml")
    return parse_spec(L.read_bytes(f).decode(), str(f))
