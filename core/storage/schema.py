"""The one definition of advsweep's Parquet tables. Writers and readers (analysis/) both use it; nobody guesses names.

Layout of a sweep directory:
    sweep.json                       manifest (sweep id, schema version, spec, versions, MLflow ids, status)
    trials/part-0.parquet            one row per trial
    epochs/part-0.parquet            one row per trial × epoch
    examples/trial_id=T/attack=A/eps=E/shard-K.parquet   one row per trial × attack × ε × example (hive; E is
                                     repr(ε), which reads back as the identical float64)
    robustness/part-0.parquet        aggregates per trial × attack × ε (incl. the per-example worst case "ensemble")
    skipped/part-0.parquet           (trial, attack) pairs not run because the attack does not apply to the model
"""
from __future__ import annotations

import pyarrow as pa

# 2: examples.margin; robustness status/reason/success_rate/found_rate/mean_steps; skipped/.
# 3: trials.trial_name/config_name; config columns `config_model_width` (were `config.model.width`); trials.robust
#    → robust_summary (examples.robust stays the per-example bool); robustness carries trial_name, config_name,
#    model_name, recipe, natural_acc ± CI (no join needed); ε is a hive partition of examples (eps=E/shard-K).
# Version 2 sweeps still read: parquet.read_trials/read_robustness/read_examples upgrade them on the fly.
SCHEMA_VERSION = "3"
ENSEMBLE = "ensemble"  # attack label of the per-example worst case over all attacks of one norm and ε

# Hive partition keys of the examples table; stored in directory names, not in the files. DuckDB reads them as
# text unless told: read_parquet('examples/**/*.parquet', hive_types={'eps': 'DOUBLE'}).
EXAMPLE_PARTITIONS = pa.schema([("trial_id", pa.string()), ("attack", pa.string()), ("eps", pa.float64())])
EXAMPLE_PARTITIONS_V2 = pa.schema([("trial_id", pa.string()), ("attack", pa.string())])  # ε was a file column

EXAMPLE_COLUMNS = pa.schema([
    ("sweep_id", pa.string()),
    ("attack_name", pa.string()),      # registry name (the partition `attack` is the configuration's label)
    ("attack_params", pa.string()),    # JSON of the attack's options
    ("norm", pa.string()),             # linf | l2 | none (minimal distortion)
    ("shard", pa.int32()),
    ("example_index", pa.int64()),     # index into the dataset's test split
    ("label", pa.int32()),
    ("clean_pred", pa.int32()),
    ("adv_pred", pa.int32()),
    ("robust", pa.bool_()),            # clean_pred == adv_pred == label
    ("margin", pa.float32()),          # max_{j≠label} z_j − z_label at x_adv, in the engine's batch size (> 0: wrong)
    ("linf", pa.float32()),            # ‖x_adv − x‖∞
    ("l2", pa.float32()),              # ‖x_adv − x‖₂
    ("rms", pa.float32()),             # ‖x_adv − x‖₂ / sqrt(#pixels)
    ("distance", pa.float32()),        # minimal-distortion attacks: distance found (null otherwise)
    ("steps", pa.int32()),             # gradient steps or model queries
    ("grad_norm", pa.float32()),       # mean ℓ1 input-gradient norm seen by the attack (null if gradient-free)
    ("seed", pa.int64()),
    ("wall_time_s", pa.float64()),     # wall time of this (attack, ε, shard) unit (a derived unit's split over its ε)
    ("node_id", pa.string()),          # Ray node the unit ran on (null when run outside Ray)
    ("node_ip", pa.string()),
])
EXAMPLES = pa.unify_schemas([EXAMPLE_COLUMNS, EXAMPLE_PARTITIONS])
EXAMPLE_COLUMNS_V2 = EXAMPLE_COLUMNS.insert(4, pa.field("eps", pa.float64()))  # version 2: ε in the files

ROBUSTNESS = pa.schema([
    ("sweep_id", pa.string()),
    ("trial_id", pa.string()),
    ("trial_name", pa.string()),       # the trial's row in trials/, copied so a frontier query needs no join
    ("config_name", pa.string()),
    ("model_name", pa.string()),
    ("recipe", pa.string()),           # training.recipe.name
    ("natural_acc", pa.float64()),     # on the trial's whole test subset (clean_acc below: on these examples)
    ("natural_ci_low", pa.float64()),
    ("natural_ci_high", pa.float64()),
    ("attack", pa.string()),
    ("attack_name", pa.string()),
    ("norm", pa.string()),
    ("eps", pa.float64()),
    ("n", pa.int64()),
    ("n_robust", pa.int64()),
    ("robust_acc", pa.float64()),
    ("ci_low", pa.float64()),          # Wilson 95 % interval
    ("ci_high", pa.float64()),
    ("clean_acc", pa.float64()),       # on the same examples
    ("median_l2_success", pa.float64()),   # over successful adversarials (null if none)
    ("median_linf_success", pa.float64()),
    ("mean_grad_norm", pa.float64()),
    ("success_rate", pa.float64()),    # among clean-correct examples: share made adversarial at this ε
    ("found_rate", pa.float64()),      # distance-reporting attacks: among clean-correct, share with any adversarial
    ("mean_steps", pa.float64()),      # gradient evaluations (white-box) or queries (black-box) per example
    ("status", pa.string()),           # ok | not_applicable (then n = 0 and `reason` says why)
    ("reason", pa.string()),
])

RECIPE_KEY = "training.recipe.name"
ROBUSTNESS_TRIAL_COLUMNS = ("trial_name", "config_name", "model_name", "recipe", "natural_acc", "natural_ci_low",
                            "natural_ci_high")


def robustness_trial_columns(trial: dict) -> dict:
    """The robustness table's copies of a trial's columns, from a trial row (the form parquet.trial_rows returns:
    config fields under "config")."""
    return {k: trial.get("config", {}).get(RECIPE_KEY) if k == "recipe" else trial.get(k)
            for k in ROBUSTNESS_TRIAL_COLUMNS}


# (trial, attack) pairs the engine skipped because the attack does not apply to the model (Attack.not_applicable).
SKIPPED = pa.schema([
    ("sweep_id", pa.string()),
    ("trial_id", pa.string()),
    ("attack", pa.string()),
    ("attack_name", pa.string()),
    ("norm", pa.string()),
    ("eps", pa.list_(pa.float64())),
    ("reason", pa.string()),
])

ROBUST_ITEM = pa.struct([
    ("attack", pa.string()), ("eps", pa.float64()), ("robust_acc", pa.float64()),
    ("ci_low", pa.float64()), ("ci_high", pa.float64()),
])

VERSION_COLUMNS = ("torch", "torchdiffeq", "torchattacks", "ray", "mlflow", "pyarrow", "advsweep")

TRIAL_FIXED = pa.schema([
    ("schema_version", pa.string()),
    ("sweep_id", pa.string()),
    ("trial_id", pa.string()),
    ("trial_index", pa.int32()),
    ("trial_name", pa.string()),       # readable, from the config keys that vary (advsweep.naming); + seed=N for replicates
    ("config_name", pa.string()),      # the same less the seed: shared by a configuration's replicates
    ("family", pa.int32()),
    ("seed", pa.int64()),              # training seed (the replicate seed; see the README's seed policy)
    ("config_id", pa.string()),        # hash of the configuration less the seed: shared by its replicates
    ("model_name", pa.string()),
    ("status", pa.string()),           # completed | early_stopped | interrupted | failed | diverged (see TRIAL_STATUSES)
    ("epochs_completed", pa.int32()),
    ("epochs_planned", pa.int32()),
    ("n_test", pa.int64()),
    ("natural_acc", pa.float64()),
    ("natural_ci_low", pa.float64()),
    ("natural_ci_high", pa.float64()),
    ("val_acc", pa.float64()),
    ("val_robust_acc", pa.float64()),
    ("params", pa.int64()),
    ("nfe_forward", pa.float64()),     # per test batch (0 for models without ODE blocks)
    ("nfe_backward", pa.float64()),    # per training batch
    ("train_time_s", pa.float64()),
    ("eval_time_s", pa.float64()),
    ("wall_time_s", pa.float64()),
    ("checkpoint", pa.string()),       # relative to the sweep directory
    ("mlflow_run_id", pa.string()),
    ("error", pa.string()),            # one line: the cause (failed / diverged trials)
    ("error_log", pa.string()),        # the full traceback, a file relative to the sweep directory
    ("node_id", pa.string()),          # Ray node of the trial's last report (a retried trial may have moved)
    ("node_ip", pa.string()),
    ("config_json", pa.string()),
    ("robust_summary", pa.list_(ROBUST_ITEM)),  # robust accuracy ± CI per attack × ε (robustness/ has the rest)
    *[(f"version_{p}", pa.string()) for p in VERSION_COLUMNS],
])
PATH_COLUMNS = ("checkpoint", "error_log")
# completed: trained its full budget (the only status that is evaluated and reaches a front); early_stopped: a
# scheduler (ASHA) stopped it; interrupted: the sweep stopped (Ctrl-C, driver killed) before it finished, resumable;
# failed: its own code raised (deterministic, not retried) or its worker kept dying; diverged: non-finite loss or
# a loss blow-up (advsweep.sweep.trainable.DIVERGENCE).
TRIAL_STATUSES = ("completed", "early_stopped", "interrupted", "failed", "diverged")
# One column per flattened config field: `model.width` → `config_model_width` (DuckDB and pandas read it unquoted);
# the field's metadata keeps the dotted key. Version 2 wrote `config.model.width`.
CONFIG_PREFIX = "config_"
CONFIG_PREFIX_V2 = "config."
CONFIG_KEY = b"config_key"  # field metadata: the dotted config key of a config column
TRIAL_FIELDS_V3 = ("trial_name", "config_name")  # added in version 3 (absent from version 2 tables)
TRIAL_RENAMED_V3 = {"robust": "robust_summary"}  # version 2 name → version 3 name


def config_column(key: str) -> str:
    """Column name of a flattened config key: `training.recipe.name` → `config_training_recipe_name`."""
    return CONFIG_PREFIX + key.replace(".", "_")


def is_config_column(name: str) -> bool:
    """A flattened config column (either version), not one of the fixed `config_id`/`config_name`/`config_json`."""
    return name.startswith(CONFIG_PREFIX_V2) or (name.startswith(CONFIG_PREFIX) and name not in TRIAL_FIXED.names)


def config_key(field: pa.Field) -> str | None:
    """The dotted config key of a config column (from its metadata; version 2: from its name), else None."""
    if not is_config_column(field.name):
        return None
    if field.metadata and CONFIG_KEY in field.metadata:
        return field.metadata[CONFIG_KEY].decode()
    if field.name.startswith(CONFIG_PREFIX_V2):
        return field.name[len(CONFIG_PREFIX_V2):]
    return field.name[len(CONFIG_PREFIX):]  # written by hand without metadata: best effort


def eps_partition(eps: float) -> str:
    """Directory value of ε: repr of the float64, the shortest text that parses back to the identical value."""
    return repr(float(eps))

EPOCHS = pa.schema([
    ("sweep_id", pa.string()),
    ("trial_id", pa.string()),
    ("epoch", pa.int32()),
    ("loss", pa.float64()),
    ("train_acc", pa.float64()),
    ("val_acc", pa.float64()),
    ("val_robust_acc", pa.float64()),
    ("lr", pa.float64()),
    ("epoch_time_s", pa.float64()),
    ("nfe_forward", pa.float64()),
    ("nfe_backward", pa.float64()),
    ("extra", pa.map_(pa.string(), pa.float64())),  # recipe-specific statistics
])


def config_column_type(values: list) -> pa.DataType:
    """Type of one flattened config column from its values across trials (nulls allowed)."""
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return pa.bool_()
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return pa.int64()
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return pa.float64()
    return pa.string()  # strings; lists and mixed values as JSON
