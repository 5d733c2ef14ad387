"""A sweep directory's Parquet tables, loaded once for analysis: completed trials with readable labels and replicate
groups, and per (attack, ε) matrices of per-example outcomes over one shared set of test examples.

Per-example rows are the raw material: every accuracy, bootstrap resample, paired test and audit check below is
computed from them, so the same examples are resampled for every trial and every attack. The matrices are built by
scanning the examples table one attack partition at a time (column projection, dictionary-encoded partition keys),
which keeps a sweep of 200 trials × 10,000 examples × 12 attack-ε cells well under a gigabyte.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from advsweep.registry import SpecError
from advsweep.storage import schema as S
from advsweep.storage.parquet import example_dataset, read_robustness, read_trials

SEED_KEYS = ("seed",)  # config keys ending in these are replicate seeds, not what a sweep varies
_NEEDED = ["trial_id", "eps", "example_index", "label", "clean_pred", "adv_pred", "robust", "distance", "l2",
           "steps", "grad_norm"]
ZERO_GRAD = 1e-12  # ℓ1 input-gradient norms at or below this are "no gradient" (float32 underflow territory)


def trial_label(trials: pd.DataFrame) -> pd.Series:
    """A short readable name per trial: the `config_name` column (replicates share it), else `trial_name`, else
    (tables written by hand) the values of the config keys that vary across the sweep's trials (seeds excluded,
    names first), e.g. `odenet·dopri5·width=16`. Falls back to the model name; labels that would collide get their
    trial index."""
    for col in ("config_name", "trial_name"):
        if col in trials and len(trials) and trials[col].notna().all():
            return trials[col].astype(str)
    # Varying = ≥ 2 distinct values where set (a field only some models have is not a difference by itself);
    # names (model.name, recipe.name) first.
    cols = [c for c in trials.columns if S.is_config_column(c) and not c.endswith(SEED_KEYS)
            and trials[c].dropna().astype(str).nunique() > 1]
    cols.sort(key=lambda c: not c.endswith(("_name", ".name")))

    def one(row) -> str:
        parts = []
        for c in cols:
            v = row[c]
            if v is None or (isinstance(v, float) and np.isnan(v)):
                continue
            key = c[len(S.CONFIG_PREFIX_V2):].rsplit(".", 1)[-1] if c.startswith(S.CONFIG_PREFIX_V2) \
                else c[len(S.CONFIG_PREFIX):].rsplit("_", 1)[-1]
            parts.append(str(v) if isinstance(v, str) else f"{key}={v:g}" if isinstance(v, float) else f"{key}={v}")
        return "·".join(parts) or str(row["model_name"])

    labels = trials.apply(one, axis=1) if len(trials) else pd.Series([], dtype=str)
    groups = trials["config_id"] if "config_id" in trials else trials["trial_id"]
    clash = labels.groupby(labels).transform(lambda s: groups[s.index].nunique() > 1) if len(trials) else labels
    return pd.Series(np.where(clash.astype(bool), labels + " #" + trials["trial_index"].astype(str), labels),
                     index=trials.index)


@dataclass
class Cell:
    """Per-example outcomes of one attack configuration at one ε (or the per-example worst case, `ensemble`).
    Matrices are [trials × examples] over `Sweep.examples`; `present` marks the examples this trial was attacked on."""
    attack: str
    attack_name: str
    norm: str
    eps: float
    params: dict
    present: np.ndarray
    robust: np.ndarray      # clean_pred == adv_pred == label
    clean: np.ndarray       # clean_pred == label
    found: np.ndarray       # correctly classified and an adversarial was found
    distance: np.ndarray | None = None   # minimal-distortion attacks: 0 if misclassified, inf if none found
    mean_steps: np.ndarray | None = None  # per trial, over its examples
    zero_grad_share: np.ndarray | None = None  # per trial: share of examples whose mean input gradient is ~0
    mean_grad: np.ndarray | None = None
    top_pred_share: np.ndarray | None = None  # per trial: share of its most frequent clean prediction
    derived_from: str | None = None  # ε > 0 rows of a minimal-distortion attack (thresholds of its distances)

    @property
    def key(self) -> tuple[str, float]:
        return (self.attack, self.eps)

    def has(self) -> np.ndarray:
        """Per trial: attacked on at least one example."""
        return self.present.any(1)

    def accuracy(self, which: str = "robust") -> np.ndarray:
        m = getattr(self, which) & self.present
        n = self.present.sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(n > 0, m.sum(1) / np.maximum(n, 1), np.nan)

    def success_rate(self) -> np.ndarray:
        """Per trial: share of correctly classified examples for which the attack found an adversarial."""
        ok = (self.clean & self.present).sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(ok > 0, (self.found & self.present).sum(1) / np.maximum(ok, 1), np.nan)


@dataclass
class Sweep:
    dir: Path
    sweep_id: str
    manifest: dict
    trials: pd.DataFrame            # completed trials, in a fixed order (the rows of every Cell matrix)
    all_trials: pd.DataFrame        # every trial with its status
    robustness: pd.DataFrame
    examples: np.ndarray            # example_index values of the matrix columns
    cells: dict[tuple[str, float], Cell]
    notes: list[str] = field(default_factory=list)  # what is missing or partial, shown wherever results are shown

    def cell(self, attack: str, eps: float) -> Cell:
        for (a, e), c in self.cells.items():
            if a == attack and np.isclose(e, eps, rtol=1e-9, atol=1e-12):
                return c
        have = ", ".join(f"{a}@{e:g}" for a, e in sorted(self.cells))
        if not any(a == attack for a, _ in self.cells):
            raise SpecError("--attack", f"attack {attack!r} was not run in {self.dir} (have: {have})")
        raise SpecError("--eps", f"attack {attack!r} was not run at eps={eps:g} in {self.dir} (have: {have})")

    def trial_position(self, ref: str) -> int:
        """A trial by id, index or label."""
        t = self.trials.reset_index(drop=True)
        for col in ("trial_id", "trial_index", "trial_name", "label"):
            hit = t.index[t[col].astype(str) == str(ref)] if col in t else []
            if len(hit) == 1:
                return int(hit[0])
        raise SpecError(str(ref), f"no completed trial with that id, index or name in {self.dir} "
                                  f"(have: {', '.join(t['trial_id'].astype(str))})")


def _manifest(sweep_dir: Path) -> dict:
    f = sweep_dir / "sweep.json"
    return json.loads(f.read_text()) if f.is_file() else {}


def _attack_meta(dataset: ds.Dataset, attack: str) -> tuple[str, str, dict]:
    head = dataset.head(1, columns=["attack_name", "norm", "attack_params"], filter=ds.field("attack") == attack)
    params = head.column("attack_params")[0].as_py()
    return head.column("attack_name")[0].as_py(), head.column("norm")[0].as_py(), json.loads(params or "{}")


def load_sweep(sweep_dir: str | Path) -> Sweep:
    """Load a sweep directory for analysis; bad or empty directories raise SpecError naming what is missing."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise SpecError(str(sweep_dir), "no such directory")
    if not any((sweep_dir / "trials").glob("*.parquet")):
        raise SpecError(str(sweep_dir), "not a sweep directory (no trials/ table); run `advsweep run` first")
    all_trials = read_trials(sweep_dir).to_pandas()
    all_trials["label"] = trial_label(all_trials)
    done = all_trials[all_trials["status"] == "completed"].sort_values("trial_index").reset_index(drop=True)
    notes = []
    state = (json.loads((sweep_dir / "sweep.json").read_text()).get("status")
             if (sweep_dir / "sweep.json").is_file() else None)
    if state not in (None, "finished"):
        notes.append(f"the sweep did not finish (state: {state}); what is there is analysed — finish it with "
                     f"`advsweep resume {sweep_dir}`")
    others = all_trials[all_trials["status"] != "completed"]
    if len(others):
        counts = others["status"].value_counts().sort_index()
        notes.append(f"{len(others)} of {len(all_trials)} trials not completed and left out "
                     f"({', '.join(f'{k}: {v}' for k, v in counts.items())})")
    if done.empty:
        raise SpecError(str(sweep_dir / "trials"), "no completed trials to analyse")
    # replicates share a config_id; a trial without one (older sweeps, hand-written tables) is its own config
    cid = done["config_id"] if "config_id" in done else pd.Series([None] * len(done), index=done.index)
    done["config_key"] = [str(c) if c is not None and c == c else str(t) for c, t in zip(cid, done["trial_id"])]
    dataset = example_dataset(sweep_dir)
    if dataset is None or not dataset.files:
        raise SpecError(str(sweep_dir / "examples"), "no attack results; run `advsweep run` or `advsweep eval`")
    rob = read_robustness(sweep_dir).to_pandas()
    attacks = sorted({p.split("=", 1)[1] for f in dataset.files for p in Path(f).parts if p.startswith("attack=")})
    position = {t: i for i, t in enumerate(done["trial_id"].astype(str))}
    cells: dict[tuple[str, float], Cell] = {}
    for attack in attacks:  # one attack partition at a time: its rows become matrices before the next is read
        name, norm, params = _attack_meta(dataset, attack)
        needed = [c for c in _NEEDED if norm == "none" or c not in ("distance", "l2")]
        table = dataset.to_table(filter=ds.field("attack") == attack, columns=needed)
        tid = table.column("trial_id")
        tid = tid.combine_chunks() if isinstance(tid, pa.ChunkedArray) else tid
        if not pa.types.is_dictionary(tid.type):
            tid = pc.dictionary_encode(tid)
        lookup = np.array([position.get(str(v), -1) for v in tid.dictionary.to_pylist()], dtype=np.int64)
        rows = lookup[tid.indices.to_numpy(zero_copy_only=False)] if len(lookup) else np.empty(0, np.int64)
        keep = rows >= 0
        cols = {c: table.column(c).to_numpy() for c in needed[1:]}
        del table, tid
        eps_all = cols["eps"]
        for eps in np.unique(eps_all[keep]):
            m = keep & (eps_all == eps)
            d = {c: v[m] for c, v in cols.items()}
            d.update(row=rows[m], attack_name=name, norm=norm, params=params)
            examples = np.unique(d["example_index"])
            cell = _cell((attack, float(eps)), d, len(done), examples)
            if norm == "none" and eps > 0:  # the engine's thresholds of the ε = 0 (as found) rows
                cell.derived_from = attack
            cells[(attack, float(eps))] = (cell, examples)
            del d
        del cols
    if not cells:
        raise SpecError(str(sweep_dir / "examples"), "no attack results for any completed trial")
    examples = np.unique(np.concatenate([e for _, e in cells.values()]))
    cells = {k: _widen(c, e, examples) for k, (c, e) in cells.items()}
    notes += _coverage_notes(cells, done)
    cells.update(_ensembles(cells))
    sweep_id = str(done["sweep_id"].iloc[0])
    return Sweep(sweep_dir, sweep_id, _manifest(sweep_dir), done, all_trials, rob, examples, cells, notes)


def _cell(key, d, n_trials, examples) -> Cell:
    attack, eps = key
    n = len(examples)
    col = np.searchsorted(examples, d["example_index"])
    shape = (n_trials, n)

    def scatter(values, dtype, fill):
        m = np.full(shape, fill, dtype=dtype)
        m[d["row"], col] = values
        return m

    clean_ok = d["clean_pred"] == d["label"]
    found = clean_ok & (d["adv_pred"] != d["label"])
    present = scatter(True, bool, False)
    distance = None
    if d["norm"] == "none":
        dist = np.where(np.isfinite(d["distance"]), d["distance"], d["l2"]).astype(np.float32)
        dist = np.where(~clean_ok, 0.0, np.where(found, dist, np.inf)).astype(np.float32)
        distance = scatter(dist, np.float32, np.nan)
    counts = np.bincount(d["row"], minlength=n_trials)
    with np.errstate(invalid="ignore", divide="ignore"):
        steps = np.bincount(d["row"], weights=d["steps"].astype(np.float64), minlength=n_trials) / counts
        g = d["grad_norm"].astype(np.float64)
        has_g = np.isfinite(g)
        ng = np.bincount(d["row"], weights=has_g, minlength=n_trials)
        zero = np.bincount(d["row"], weights=has_g & (np.nan_to_num(g, nan=1.0) <= ZERO_GRAD), minlength=n_trials)
        mean_g = np.bincount(d["row"], weights=np.where(has_g, g, 0.0), minlength=n_trials) / ng
        zero_share = np.where(ng > 0, zero / np.maximum(ng, 1), np.nan)
    k = int(d["clean_pred"].max()) + 1 if len(d["clean_pred"]) else 1
    preds = np.bincount(d["row"] * k + d["clean_pred"], minlength=n_trials * k).reshape(n_trials, k)
    with np.errstate(invalid="ignore", divide="ignore"):
        top = np.where(counts > 0, preds.max(1) / np.maximum(counts, 1), np.nan)
    return Cell(attack, d["attack_name"], d["norm"], eps, d["params"], present,
                scatter(d["robust"], bool, False), scatter(clean_ok, bool, False), scatter(found, bool, False),
                distance, steps, zero_share, np.where(ng > 0, mean_g, np.nan), top)


def _widen(cell: Cell, local: np.ndarray, examples: np.ndarray) -> Cell:
    """Re-index a cell's matrices from its own example set onto the sweep's (absent columns: not present)."""
    if len(local) == len(examples):
        return cell
    col = np.searchsorted(examples, local)
    for name in ("present", "robust", "clean", "found", "distance"):
        m = getattr(cell, name)
        if m is None:
            continue
        wide = np.full((m.shape[0], len(examples)), np.nan if m.dtype.kind == "f" else False, dtype=m.dtype)
        wide[:, col] = m
        setattr(cell, name, wide)
    return cell


def _coverage_notes(cells: dict, trials: pd.DataFrame) -> list[str]:
    notes = []
    for (attack, eps), c in sorted(cells.items()):
        missing = trials.loc[~c.has(), "label"].tolist()
        if missing:
            notes.append(f"{attack} at eps={eps:g} missing for {len(missing)} trial(s): {', '.join(missing[:5])}"
                         + (" …" if len(missing) > 5 else ""))
        n = c.present.sum(1)
        partial = (n > 0) & (n < n.max())
        if partial.any():
            notes.append(f"{attack} at eps={eps:g} partial for {int(partial.sum())} trial(s) "
                         f"({int(n[partial].min())}–{int(n[partial].max())} of {int(n.max())} examples)")
    return notes


def _ensembles(cells: dict) -> dict:
    """Per (norm, ε) shared by ≥ 2 attack configurations: an example is robust only if it survived every attack."""
    groups: dict[tuple[str, float], list[Cell]] = {}
    for c in cells.values():
        if c.norm != "none" and c.attack != S.ENSEMBLE:
            groups.setdefault((c.norm, c.eps), []).append(c)
    out = {}
    multi_norm = len({n for n, _ in groups}) > 1
    for (norm, eps), cs in groups.items():
        if len(cs) < 2:
            continue
        present = np.logical_and.reduce([c.present for c in cs])
        robust = np.logical_and.reduce([c.robust for c in cs]) & present
        label = f"{S.ENSEMBLE}_{norm}" if multi_norm else S.ENSEMBLE
        out[(label, eps)] = Cell(label, S.ENSEMBLE, norm, eps, {"attacks": sorted(c.attack for c in cs)}, present,
                                 robust, cs[0].clean & present, cs[0].clean & present & ~robust)
    return out
