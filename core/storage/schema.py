"""The one definition of advsweep's Parquet tables. Writers and readers (analysis/) both use it; nobody guesses names.

Layout of a sweep directory:
    sweep.json                       manifest (sweep id, schema version, spec, versions, MLflow ids, status)
    trials/part-0.parquet            one row per trial
    epochs/part-0.parquet            one row per trial × epoch
    examples/trial_id=T/attack=A/eps-E-shard-K.parquet    one row per trial × attack × ε × example (hive)
    robustness/part-0.parquet        aggregates per trial × attack × ε (incl. the per-example worst case "ensemble")
    skipped/part-0.parquet           (trial, attack) pairs not run because the attack does not apply to the model
"""
from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = "2"  # 2: examples.margin; robustness status/reason/success_rate/found_rate/mean_steps; skipped/
ENSEMBLE = "ensemble"  # attack label of the per-example worst case over all attacks of one norm and ε

# Hive partition keys of the examples table; stored in directory names, not in the files.
EXAMPLE_PARTITIONS = pa.schema([("trial_id", pa.string()), ("attack", pa.string())])

EXAMPLE_COLUMNS = pa.schema([
    ("sweep_id", pa.string()),
    ("attack_name", pa.string()),      # registry name (the partition `attack` is the configuration's label)
    ("attack_params", pa.string()),    # JSON of the attack's options
    ("norm", pa.string()),             # linf | l2 | none (minimal distortion)
    ("eps", pa.float64()),
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

ROBUSTNESS = pa.schema([
    ("sweep_id", pa.string()),
    ("trial_id", pa.string()),
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
    ("robust", pa.list_(ROBUST_ITEM)),
    *[(f"version_{p}", pa.string()) for p in VERSION_COLUMNS],
])
PATH_COLUMNS = ("checkpoint", "error_log")
# completed: trained its full budget (the only status that is evaluated and reaches a front); early_stopped: a
# scheduler (ASHA) stopped it; interrupted: the sweep stopped (Ctrl-C, driver killed) before it finished, resumable;
# failed: its own code raised (deterministic, not retried) or its worker kept dying; diverged: non-finite loss or
# a loss blow-up (advsweep.sweep.trainable.DIVERGENCE).
TRIAL_STATUSES = ("completed", "early_stopped", "interrupted", "failed", "diverged")
CONFIG_PREFIX = "config."  # then one column per flattened config field, e.g. `config.model.width`

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
