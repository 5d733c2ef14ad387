"""Parquet writers (atomic: hidden temp file + rename) and readers bound to the schema module."""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from advsweep.storage import schema as S


def _metadata(sweep_id: str) -> dict[bytes, bytes]:
    return {b"advsweep_schema_version": S.SCHEMA_VERSION.encode(), b"sweep_id": sweep_id.encode()}


def write_atomic(table: pa.Table, path: str | Path, sweep_id: str) -> Path:
    """Write `table` to `path` via a hidden temp name in the same directory, then rename (readers never see halves)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".tmp-{uuid.uuid4().hex}.parquet"
    try:
        pq.write_table(table.replace_schema_metadata(_metadata(sweep_id)), tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def example_file(out_dir: str | Path, trial_id: str, attack: str, eps: float, shard: int) -> Path:
    return Path(out_dir) / "examples" / f"trial_id={trial_id}" / f"attack={attack}" / f"eps-{eps:.6g}-shard-{shard:05d}.parquet"


def examples_table(rows: dict[str, Iterable[Any]]) -> pa.Table:
    """Columns of the examples table except the hive partition keys; a column left out is null (added later)."""
    n = len(rows["example_index"])
    return pa.table({f.name: pa.array(rows[f.name] if f.name in rows else [None] * n, type=f.type)
                     for f in S.EXAMPLE_COLUMNS}, schema=S.EXAMPLE_COLUMNS)


def _dataset(out_dir: str | Path, name: str, schema: pa.Schema, partitioning=None) -> ds.Dataset | None:
    base = Path(out_dir) / name
    if not base.exists():
        return None
    return ds.dataset(base, format="parquet", schema=schema, partitioning=partitioning)


def read_examples(out_dir: str | Path, filter=None, columns: list[str] | None = None) -> pa.Table:
    d = _dataset(out_dir, "examples", S.EXAMPLES, ds.partitioning(S.EXAMPLE_PARTITIONS, flavor="hive"))
    if d is None:
        return S.EXAMPLES.empty_table()
    return d.to_table(filter=filter, columns=columns)


def read_robustness(out_dir: str | Path) -> pa.Table:
    d = _dataset(out_dir, "robustness", S.ROBUSTNESS)
    return d.to_table() if d is not None else S.ROBUSTNESS.empty_table()


def read_skipped(out_dir: str | Path) -> pa.Table:
    d = _dataset(out_dir, "skipped", S.SKIPPED)
    return d.to_table() if d is not None else S.SKIPPED.empty_table()


def read_epochs(out_dir: str | Path) -> pa.Table:
    d = _dataset(out_dir, "epochs", S.EPOCHS)
    return d.to_table() if d is not None else S.EPOCHS.empty_table()


def read_trials(out_dir: str | Path) -> pa.Table:
    """The trials table with its config columns (whose types were fixed by the writer and are read from the file)."""
    files = sorted((Path(out_dir) / "trials").glob("*.parquet"))
    if not files:
        return S.TRIAL_FIXED.empty_table()
    schema = pq.read_schema(files[0])
    for f in S.TRIAL_FIXED:
        if f.name in ("node_id", "node_ip") and f.name not in schema.names:
            continue  # written before these columns existed
        if schema.field(f.name).type != f.type:
            raise ValueError(f"{files[0]}: column {f.name} is {schema.field(f.name).type}, expected {f.type}")
    return ds.dataset(files, format="parquet", schema=schema).to_table()


def relative_to(root: str | Path, path: str | None) -> str | None:
    """A path as stored in a sweep: relative to the sweep root when inside it, so a copied sweep still resolves."""
    if not path:
        return path
    p = Path(path)
    try:
        return str(p.resolve().relative_to(Path(root).resolve())) if p.is_absolute() else str(p)
    except ValueError:
        return str(p)


def trials_table(rows: list[dict[str, Any]], root: str | Path | None = None) -> pa.Table:
    """Fixed columns from the schema plus one typed column per flattened config field. With `root` (the sweep
    directory), paths (checkpoint, error log) are stored relative to it."""
    if root is not None:
        rows = [{**r, **{k: relative_to(root, r.get(k)) for k in S.PATH_COLUMNS}} for r in rows]
    config_keys = sorted({k for r in rows for k in r.get("config", {})})
    fields = list(S.TRIAL_FIXED)
    cols: dict[str, pa.Array] = {f.name: pa.array([r.get(f.name) for r in rows], type=f.type) for f in fields}
    for key in config_keys:
        values = [r.get("config", {}).get(key) for r in rows]
        typ = S.config_column_type(values)
        if typ == pa.string():
            values = [v if v is None or isinstance(v, str) else json.dumps(v) for v in values]
        name = S.CONFIG_PREFIX + key
        fields.append(pa.field(name, typ))
        cols[name] = pa.array(values, type=typ)
    return pa.table(cols, schema=pa.schema(fields))


def trial_rows(out_dir: str | Path) -> list[dict[str, Any]]:
    """Rows of a sweep's trials table in the form `trials_table` writes (config columns back under "config"), with
    stored relative paths resolved against `out_dir`."""
    rows = []
    for r in read_trials(out_dir).to_pylist():
        config = {k[len(S.CONFIG_PREFIX):]: r.pop(k) for k in list(r) if k.startswith(S.CONFIG_PREFIX)}
        r["config"] = {k: v for k, v in config.items() if v is not None}
        for k in S.PATH_COLUMNS:
            if r.get(k) and not Path(r[k]).is_absolute():
                r[k] = str(Path(out_dir).resolve() / r[k])
        rows.append(r)
    return rows


def example_dataset(out_dir: str | Path) -> ds.Dataset | None:
    """The examples table as a dataset whose partition keys (trial_id, attack) are dictionary-encoded: large sweeps
    are scanned without one Python-visible string per row."""
    base = Path(out_dir) / "examples"
    if not base.exists():
        return None
    part = ds.HivePartitioning.discover(infer_dictionary=True)
    d = ds.dataset(base, format="parquet", partitioning=part)
    keys = [d.schema.field(f.name) for f in S.EXAMPLE_PARTITIONS if f.name in d.schema.names]
    return ds.dataset(base, format="parquet", partitioning=part, schema=pa.schema([*S.EXAMPLE_COLUMNS, *keys]))
