"""The Tune function trainable: data → model → recipe → per-epoch report + checkpoint → final attack evaluation.

Everything it needs arrives in `ctx` (plain dict) and `data` (numpy arrays through the object store). Inside Tune
only `ray.tune.report/get_checkpoint/get_context` are used (the `ray.train` ones raise in Ray 2.60).
"""
from __future__ import annotations

import json
import logging
import math
import re
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ray import tune

from advsweep.attacks import build_attack
from advsweep.devices import worker_device
from advsweep.evaluation.checkpoints import CHECKPOINT_META, CHECKPOINT_STATE
from advsweep.evaluation.engine import ray_node
from advsweep.evaluation.shard import predict
from advsweep.evaluation.stats import wilson_interval
from advsweep.malloc import keep_freed_memory
from advsweep.models import build_model, count_parameters, nfe, reset_nfe
from advsweep.spec import TrialConfig
from advsweep.storage.mlflow_records import trial_tags
from advsweep.storage.tracking import TrialTracker
from advsweep.training import build_penalty, build_recipe
from advsweep.training.trainer import OptimConfig, Trainer, as_float_images

STANDARD_STATS = ("loss", "train_acc", "lr", "epoch_time_s")
EXTRA_PREFIX = "train/"
# Key of the checkpoint's meta.json holding every epoch's metrics up to it. The sweep's epoch table is built from it
# as well as from Tune's result.json: when a trial's node dies, Tune restarts it and replaces the driver's result.json
# with the last copy synced to storage, which can miss epochs that the restored checkpoint already contains.
EPOCH_HISTORY = "epochs"

# A trial has diverged when (checked after every epoch) its training loss is non-finite, or more than
# BLOWUP_FACTOR × ln(classes) (the cross-entropy of a uniform guess: 230 for 10 classes, a loss no training recipe
# here reaches while learning), or more than BLOWUP_FACTOR × its first epoch's loss; or when (checked at the end) its
# validation accuracy is within CHANCE_MARGIN of chance while its loss is more than 10 × the lowest epoch loss it
# reached. It is then stopped, recorded as `diverged` with the rule that fired, and kept off every front.
BLOWUP_FACTOR = 100.0
CHANCE_MARGIN = 0.05
DIVERGENCE = (f"non-finite loss, loss > {BLOWUP_FACTOR:g} × ln(classes) or > {BLOWUP_FACTOR:g} × first-epoch loss, "
              f"or val accuracy ≤ chance + {CHANCE_MARGIN:g} with loss > 10 × its minimum")


# Ray logs "Checkpoint successfully created at: …" for every epoch's checkpoint; the sweep records them itself.
logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)


def _drop_exit_in_finalisers() -> None:
    """Ray stops a finished trial's actor with SIGTERM; its handler raises SystemExit, and when that lands inside a
    garbage-collection callback Python prints "Exception ignored in: <WeakSet._remove>" with a traceback on the
    driver's terminal. Only that shutdown case is dropped; every other unraisable exception is still printed."""
    previous = sys.unraisablehook
    if getattr(previous, "advsweep", False):  # a reused actor: already installed
        return

    def hook(info):
        if not isinstance(info.exc_value, SystemExit):
            previous(info)

    hook.advsweep = True
    sys.unraisablehook = hook


class Diverged(Exception):
    pass


class TrialFailed(Exception):
    """Raised inside the trainable for a deterministic failure; the trial ends normally (no retry) as failed."""


def one_line(exc: BaseException) -> str:
    """`Type: first line of the message`, without colour codes: the cause a person reads in a table."""
    msg = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip().splitlines()
    return f"{type(exc).__name__}: {msg[0][:300] if msg else ''}".rstrip(": ")


def write_error_log(out_dir: str, trial_id: str, text: str) -> str:
    """The full traceback beside the sweep (errors/<trial>.txt, written atomically); returns its path."""
    from advsweep.storage import location

    f = location.join(location.root(out_dir), "errors", f"{trial_id}.txt")
    location.write_bytes(f, text.encode())
    return str(f)


def divergence(losses: list[float], val_acc: float | None, num_classes: int, final: bool) -> str | None:
    """The DIVERGENCE rule that fires for this loss history, or None."""
    last = losses[-1]
    if not math.isfinite(last):
        return f"training loss became {last}"
    if last > BLOWUP_FACTOR * math.log(num_classes):
        return f"training loss {last:.3g} > {BLOWUP_FACTOR:g} × ln({num_classes}) (a uniform guess scores {math.log(num_classes):.3g})"
    if len(losses) > 1 and last > BLOWUP_FACTOR * losses[0]:
        return f"training loss grew from {losses[0]:.3g} to {last:.3g} (> {BLOWUP_FACTOR:g}×)"
    if final and val_acc is not None and val_acc <= 1 / num_classes + CHANCE_MARGIN and last > 10 * min(losses):
        return f"val accuracy {val_acc:.3f} at chance with loss {last:.3g} > 10 × its minimum {min(losses):.3g}"
    return None


def build_trainer(cfg: TrialConfig, meta: dict[str, int], seed: int, device: torch.device) -> Trainer:
    torch.manual_seed(seed)
    model_opts = {k: v for k, v in cfg.model.items() if k != "name"}
    model = build_model(cfg.model["name"], meta["channels"], meta["num_classes"], meta["image_size"], **model_opts)
    model.to(device)
    t = cfg.training
    recipe = build_recipe(t.recipe["name"], **{k: v for k, v in t.recipe.items() if k != "name"})
    penalties = [build_penalty(p["name"], **{k: v for k, v in p.items() if k != "name"}) for p in t.penalties]
    optim = OptimConfig(optimizer=t.optimizer, lr=t.lr, momentum=t.momentum, nesterov=t.nesterov,
                        weight_decay=t.weight_decay, schedule=t.schedule, milestones=list(t.milestones),
                        gamma=t.gamma, warmup_epochs=t.warmup_epochs)
    return Trainer(model, recipe, penalties, optim, t.epochs, t.batch_size, t.augment, seed, device)


def _val_metrics(model, x_val, y_val, monitor, batch_size, device, seed) -> dict[str, float]:
    model.eval()
    reset_nfe(model)
    pred = predict(model, x_val, batch_size, device)
    batches = math.ceil(len(x_val) / batch_size)
    out = {"val_acc": float((pred == y_val).float().mean()), "nfe_forward": nfe(model)["forward"] / batches}
    if monitor:
        n = min(monitor["n"], len(x_val))
        atk = build_attack("pgd", model, monitor["eps"], seed, steps=monitor["steps"])
        correct = 0
        for i in range(0, n, batch_size):
            xb, yb = x_val[i:min(i + batch_size, n)].to(device), y_val[i:min(i + batch_size, n)].to(device)
            adv = atk(xb, yb).x_adv
            with torch.no_grad():
                correct += int((model(adv).argmax(1) == yb).sum())
        out["val_robust_acc"] = correct / n
    return out


def names_of(ctx: dict[str, Any], cfg: TrialConfig) -> tuple[str, str]:
    """(trial name, config name): from the driver's list for expanded sweeps, from the search axes for sampled ones
    (as Spec.name_of)."""
    known = ctx.get("trial_names") or {}
    if cfg.index in known:
        return tuple(known[cfg.index])
    from advsweep.naming import config_name, varying_keys

    name = config_name(cfg.flat(), varying_keys([], ctx.get("name_axes") or []), str(cfg.model["name"]))
    return name, name


def train_trial(config: dict[str, Any], ctx: dict[str, Any], data: dict[str, np.ndarray]) -> None:
    _drop_exit_in_finalisers()
    cfg = TrialConfig.model_validate(config["trial"])
    tctx = tune.get_context()
    trial_id = tctx.get_trial_id()
    torch.set_num_threads(max(1, int(ctx["cpu"])))
    keep_freed_memory()  # a Ray worker otherwise page-faults every freed tensor in again (see advsweep.malloc)
    seed = cfg.seed  # the replicate seed only: trials differ in seed only when they are replicates
    meta = {k: int(data[k]) for k in ("channels", "num_classes", "image_size")}
    tracker, trainer, base, last = None, None, {"trial_id": trial_id}, {}
    try:
        device = worker_device(ctx["gpu"], "a trial")
        trainer = build_trainer(cfg, meta, seed, device)
        model = trainer.model

        history: list[dict[str, float]] = []  # this model's epoch metrics, carried in every checkpoint
        ckpt = tune.get_checkpoint()
        if ckpt:  # retry or restore: continue from the last reported epoch
            with ckpt.as_directory() as d:
                trainer.load(Path(d) / CHECKPOINT_STATE)
                history = json.loads((Path(d) / CHECKPOINT_META).read_text()).get(EPOCH_HISTORY, [])

        n_params = count_parameters(model)
        run_name, config_name = names_of(ctx, cfg)
        tracker = TrialTracker(ctx["mlflow_uri"], ctx["experiment_id"], ctx["parent_run_id"], ctx["sweep_id"], trial_id,
                               run_name, {**cfg.flat(), "seed": seed, "params": n_params},
                               trial_tags(cfg, run_name, config_name, ctx.get("dataset")))
        # Object-store arrays are read-only: copy once into tensors this process owns.
        x_train, y_train = torch.tensor(data["x_train"]), torch.tensor(data["y_train"]).long()
        x_val = as_float_images(torch.tensor(data["x_val"]))
        y_val = torch.tensor(data["y_val"]).long()
        eval_bs = ctx["eval"]["batch_size"]
        epochs = cfg.training.epochs
        base = {"trial_id": trial_id, "mlflow_run_id": tracker.run_id or "", "params": n_params, **ray_node()}
        losses = trainer.loss_history
        while trainer.epoch < epochs:
            reset_nfe(model)
            try:
                raw_stats = trainer.train_epoch(x_train, y_train)
            except FloatingPointError as exc:
                raise Diverged(str(exc)) from None
            stats = {(k if k in STANDARD_STATS else EXTRA_PREFIX + k): v for k, v in raw_stats.items()}
            steps = math.ceil(len(x_train) / cfg.training.batch_size)
            stats["nfe_backward"] = nfe(model)["backward"] / steps
            stats.update(_val_metrics(model, x_val, y_val, ctx["monitor"], eval_bs, device, seed))
            epoch = trainer.epoch
            losses.append(float(stats["loss"]))
            why = divergence(losses, stats.get("val_acc"), meta["num_classes"], final=epoch == epochs)
            if why:
                raise Diverged(why)
            tracker.log_metrics(stats, step=epoch)
            metrics = {**stats, **base, "epoch": epoch, "completed": False}
            last = metrics
            history.append({"epoch": epoch, **{k: float(v) for k, v in stats.items() if v is not None}})
            with tempfile.TemporaryDirectory() as d:
                torch.save(trainer.state_dict(), Path(d) / CHECKPOINT_STATE)
                (Path(d) / CHECKPOINT_META).write_text(json.dumps({
                    "trial_id": trial_id, "mlflow_run_id": tracker.run_id, "epoch": epoch, "model": cfg.model,
                    "node_id": base.get("node_id"),  # where this checkpoint was written (a retry may move the trial)
                    "channels": meta["channels"], "num_classes": meta["num_classes"], "image_size": meta["image_size"],
                    EPOCH_HISTORY: history,
                }))
                if epoch == epochs:  # the last epoch reports together with the final evaluation (ASHA stops at max_t)
                    metrics.update(_final_evaluation(model, cfg, ctx, data, tracker, device, Path(d)))
                    metrics["train_time_s"] = trainer.train_time
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
    except Exception as exc:  # this trial's own code raised: deterministic, so it is recorded, not retried
        status = "diverged" if isinstance(exc, Diverged) else "failed"
        cause = str(exc) if isinstance(exc, Diverged) else one_line(exc)
        log = write_error_log(ctx["out_dir"], trial_id, traceback.format_exc())
        if tracker is not None:
            tracker.set_tag("failure", f"{status}: {cause}"[:500])
            tracker.end("FAILED")
        # The scheduler's metric must be in every result; a failed trial reports its last values (or 0).
        tune.report({**base, "epoch": trainer.epoch if trainer else 0, "completed": False, "final_status": status,
                     "error": cause, "error_log": log, "val_acc": last.get("val_acc", 0.0),
                     "val_robust_acc": last.get("val_robust_acc", 0.0), "loss": last.get("loss", float("nan"))})
        return
    tracker.end("FINISHED")  # attack results are logged to this run by the evaluation stage


def _final_evaluation(model, cfg, ctx, data, tracker, device, ckpt_dir: Path) -> dict[str, Any]:
    """Natural test accuracy (with its interval) and test-time NFE; attacks run afterwards on the evaluation engine."""
    start = time.perf_counter()
    x_test = as_float_images(torch.tensor(data["x_test"]))
    y_test = torch.tensor(data["y_test"]).long()
    bs = ctx["eval"]["batch_size"]
    model.eval()
    reset_nfe(model)
    pred = predict(model, x_test, bs, device)
    k = int((pred == y_test).sum())
    lo, hi = wilson_interval(k, len(y_test))
    final = {"natural_acc": k / len(y_test), "natural_ci_low": lo, "natural_ci_high": hi, "n_test": len(y_test),
             "test_nfe_forward": nfe(model)["forward"] / max(1, math.ceil(len(x_test) / bs)),
             "test_time_s": time.perf_counter() - start}
    tracker.log_metrics(final, step=cfg.training.epochs)
    tracker.log_artifact(ckpt_dir / CHECKPOINT_STATE, "checkpoint")
    tracker.log_artifact(ckpt_dir / CHECKPOINT_META, "checkpoint")
    final["completed"] = True
    return final
