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

from advsweep.storage import location as L
from advsweep.storage import schema as S


def _metadata(sweep_id: str) -> dict[bytes, bytes]:
    return {b"advsweep_schema_version": S.SCHEMA_VERSION.encode(), b"sweep_id": sweep_id.encode()}


def write_atomic(table: pa.Table, path: str | Path, sweep_id: str) -> str | Path:
    """Write `table` to `path` via a hidden temp name in the same directory, then rename (readers never see halves).
    A remote `path` (s3://…) is written as one object, which an object store makes visible all at once."""
    if L.is_remote(path):
        fs, key = L.fs_path(path)
        pq.write_table(table.replace_schema_metadata(_metadata(sweep_id)), key, filesystem=fs)
        return path
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".tmp-{uuid.uuid4().hex}.parquet"
    try:
        pq.write_table(table.replace_schema_metadata(_metadata(sweep_id)), tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def example_file(out_dir: str | Path, trial_id: str, attack: str, eps: float, shard: int) -> str | Path:
    return L.join(out_dir if L.is_remote(out_dir) else Path(out_dir), "examples", f"trial_id={trial_id}",
                  f"attack={attack}", f"eps={S.eps_partition(eps)}", f"shard-{shard:05d}.parquet")


def examples_v2(out_dir: str | Path) -> bool:
    """True for an examples table in the version 2 layout (ε a file column, files `eps-E-shard-K.parquet`)."""
    if L.is_remote(out_dir):
        return any(f.count("/") == 2 and f.rsplit("/", 1)[1].startswith("eps-")
                   for f in L.list_files(L.join(out_dir, "examples")))
    base = Path(out_dir) / "examples"
    return next(base.glob("trial_id=*/attack=*/eps-*.parquet"), None) is not None


def sweep_schema_version(out_dir: str | Path) -> str:
    """The schema version a sweep directory was written with (its manifest; else its trials table's metadata)."""
    manifest = L.join(out_dir, "sweep.json")
    if L.exists(manifest):
        version = json.loads(L.read_bytes(manifest)).get("schema_version")
        if version:
            return str(version)
    files = _trial_files(out_dir)
    fs, _ = L.fs_path(out_dir)
    meta = pq.read_schema(files[0], filesystem=fs).metadata or {} if files else {}
    return meta.get(b"advsweep_schema_version", S.SCHEMA_VERSION.encode()).decode()


def examples_table(rows: dict[str, Iterable[Any]]) -> pa.Table:
    """Columns of the examples table except the hive partition keys; a column left out is null (added later)."""
    n = len(rows["example_index"])
    return pa.table({f.name: pa.array(rows[f.name] if f.name in rows else [None] * n, type=f.type)
                     for f in S.EXAMPLE_COLUMNS}, schema=S.EXAMPLE_COLUMNS)


def _dataset(out_dir: str | Path, name: str, schema: pa.Schema, partitioning=None) -> ds.Dataset | None:
    base = L.join(out_dir, name)
    if not L.exists(base):
        return None
    fs, path = L.fs_path(base)
    return ds.dataset(path, filesystem=fs, format="parquet", schema=schema, partitioning=partitioning)


def _trial_files(out_dir: str | Path) -> list[str]:
    """The trials table's files, as paths inside the sweep's filesystem (L.fs_path)."""
    base = L.join(out_dir, "trials")
    _, path = L.fs_path(base)
    return [f"{path}/{f}" for f in L.list_files(base) if f.endswith(".parquet") and "/" not in f
            and not f.startswith(".")]


def read_examples(out_dir: str | Path, filter=None, columns: list[str] | None = None) -> pa.Table:
    """The examples table (either layout) with the columns of S.EXAMPLES, ε a float64 in both."""
    if examples_v2(out_dir):
        d = _dataset(out_dir, "examples", pa.unify_schemas([S.EXAMPLE_COLUMNS_V2, S.EXAMPLE_PARTITIONS_V2]),
                     ds.partitioning(S.EXAMPLE_PARTITIONS_V2, flavor="hive"))
        return d.to_table(filter=filter, columns=columns or S.EXAMPLES.names)
    d = _dataset(out_dir, "examples", S.EXAMPLES, ds.partitioning(S.EXAMPLE_PARTITIONS, flavor="hive"))
    if d is None:
        return S.EXAMPLES.empty_table()
    return d.to_table(filter=filter, columns=columns)


def read_robustness(out_dir: str | Path) -> pa.Table:
    """The robustness table; a version 2 table gets the trial columns (name, model, recipe, natural accuracy) from
    the trials table."""
    d = _dataset(out_dir, "robustness", S.ROBUSTNESS)
    if d is None:
        return S.ROBUSTNESS.empty_table()
    table = d.to_table()
    if table.num_rows and table.column("trial_name").null_count == table.num_rows:  # version 2
        table = with_trial_columns(table, trial_rows(out_dir))
    return table


def with_trial_columns(robustness: pa.Table, trials: list[dict[str, Any]]) -> pa.Table:
    """Fill the robustness table's copies of trial columns from trial rows (the form `trial_rows` returns)."""
    by_id = {r["trial_id"]: S.robustness_trial_columns(r) for r in trials}
    ids = robustness.column("trial_id").to_pylist()
    for name in S.ROBUSTNESS_TRIAL_COLUMNS:
        col = pa.array([by_id[t][name] if t in by_id else None for t in ids], S.ROBUSTNESS.field(name).type)
        robustness = robustness.set_column(robustness.schema.get_field_index(name), name, col)
    return robustness


def read_skipped(out_dir: str | Path) -> pa.Table:
    d = _dataset(out_dir, "skipped", S.SKIPPED)
    return d.to_table() if d is not None else S.SKIPPED.empty_table()


def read_epochs(out_dir: str | Path) -> pa.Table:
    d = _dataset(out_dir, "epochs", S.EPOCHS)
    return d.to_table() if d is not None else S.EPOCHS.empty_table()


def read_trials(out_dir: str | Path) -> pa.Table:
    """The trials table with its config columns (whose types were fixed by the writer and are read from the file).
    A version 2 table is upgraded: config columns renamed, `robust` → `robust_summary`, names computed."""
    files = _trial_files(out_dir)
    if not files:
        return S.TRIAL_FIXED.empty_table()
    fs, _ = L.fs_path(out_dir)
    schema = pq.read_schema(files[0], filesystem=fs)
    table = ds.dataset(files, filesystem=fs, format="parquet", schema=schema).to_table()
    if any(f.name.startswith(S.CONFIG_PREFIX_V2) for f in schema) or "robust" in schema.names:
        table = _upgrade_trials_v2(table)
    for f in S.TRIAL_FIXED:
        if f.name in ("node_id", "node_ip") and f.name not in table.schema.names:
            continue  # written before these columns existed
        if table.schema.field(f.name).type != f.type:
            raise ValueError(f"{files[0]}: column {f.name} is {table.schema.field(f.name).type}, expected {f.type}")
    return table


def _upgrade_trials_v2(table: pa.Table) -> pa.Table:
    """A version 2 trials table in the version 3 form (names computed from the config columns, as a sweep does)."""
    from advsweep.naming import trial_names

    fields = []
    for f in table.schema:
        key = S.config_key(f)
        if key is not None:
            f = pa.field(S.config_column(key), f.type, metadata={S.CONFIG_KEY: key.encode()})
        fields.append(f.with_name(S.TRIAL_RENAMED_V3.get(f.name, f.name)))
    table = pa.Table.from_arrays(table.columns, schema=pa.schema(fields, metadata=table.schema.metadata))
    rows = table.to_pylist()
    flats = [{S.config_key(f): r[f.name] for f in table.schema if S.config_key(f) is not None
              and r[f.name] is not None} for r in rows]
    trial, config = trial_names(flats, [r.get("seed") for r in rows],
                                [r.get("config_id") or r["trial_id"] for r in rows])
    at = table.schema.get_field_index("trial_index") + 1
    table = table.add_column(at, pa.field("config_name", pa.string()), pa.array(config, pa.string()))
    return table.add_column(at, pa.field("trial_name", pa.string()), pa.array(trial, pa.string()))


def trials_table(rows: list[dict[str, Any]], root: str | Path | None = None) -> pa.Table:
    """Fixed columns from the schema plus one typed column per flattened config field. With `root` (the sweep
    directory), paths (checkpoint, error log) are stored relative to it."""
    if root is not None:
        rows = [{**r, **{k: L.relative_to(root, r.get(k)) for k in S.PATH_COLUMNS}} for r in rows]
    config_keys = sorted({k for r in rows for k in r.get("config", {})})
    fields = list(S.TRIAL_FIXED)
    cols: dict[str, pa.Array] = {f.name: pa.array([r.get(f.name) for r in rows], type=f.type) for f in fields}
    for key in config_keys:
        values = [r.get("config", {}).get(key) for r in rows]
        typ = S.config_column_type(values)
        if typ == pa.string():
            values = [v if v is None or isinstance(v, str) else json.dumps(v) for v in values]
        name = S.config_column(key)
        if name in cols:
            raise ValueError(f"config keys {key!r} and another both map to the column {name}")
        fields.append(pa.field(name, typ, metadata={S.CONFIG_KEY: key.encode()}))
        cols[name] = pa.array(values, type=typ)
    return pa.table(cols, schema=pa.schema(fields))


def trial_rows(out_dir: str | Path) -> list[dict[str, Any]]:
    """Rows of a sweep's trials table in the form `trials_table` writes (config columns back under "config"), with
    stored relative paths resolved against `out_dir`."""
    rows = []
    table = read_trials(out_dir)
    roots = {k: L.checkpoint_root(out_dir) if k == "checkpoint" else out_dir for k in S.PATH_COLUMNS}
    keys = {f.name: S.config_key(f) for f in table.schema if S.config_key(f) is not None}
    for r in table.to_pylist():
        config = {keys[k]: r.pop(k) for k in list(r) if k in keys}
        r["config"] = {k: v for k, v in config.items() if v is not None}
        for k in S.PATH_COLUMNS:
            r[k] = L.resolve(roots[k], r.get(k))
        rows.append(r)
    return rows


def example_dataset(out_dir: str | Path) -> ds.Dataset | None:
    """The examples table (either layout) as a dataset whose string partition keys (trial_id, attack) are
    dictionary-encoded: large sweeps are scanned without one Python-visible string per row. ε is a float64."""
    base = Path(out_dir) / "examples"
    if not base.exists():
        return None
    v2 = examples_v2(out_dir)
    keys = S.EXAMPLE_PARTITIONS_V2 if v2 else S.EXAMPLE_PARTITIONS
    values = {"trial_id": {p.name.split("=", 1)[1] for p in base.glob("trial_id=*")},
              "attack": {p.name.split("=", 1)[1] for p in base.glob("trial_id=*/attack=*")}}
    dict_keys = pa.schema([pa.field(f.name, pa.dictionary(pa.int32(), f.type)) if f.name in values else f
                           for f in keys])
    part = ds.HivePartitioning(dict_keys, dictionaries={k: pa.array(sorted(v), pa.string()) for k, v in values.items()})
    columns = S.EXAMPLE_COLUMNS_V2 if v2 else S.EXAMPLE_COLUMNS
    return ds.dataset(base, format="parquet", partitioning=part, schema=pa.schema([*columns, *dict_keys]))
