"""RobustBench-style model-info JSON per trial (`advsweep export DIR --robustbench`).

RobustBench keeps one file per model and threat model, `model_info/<dataset>/<Linf|L2>/<name>.json`, with the fields
`link, name, authors, additional_data, number_forward_passes, dataset, venue, architecture, eps, clean_acc, reported,
autoattack_acc, footnote` (accuracies as percent strings, ε as written in the field, e.g. `8/255`). The same layout
and fields are written here for every completed trial and every threat model (ℓ∞, ℓ2) it was attacked in:

- `eps`: the ε given with `--eps`, else the largest ε at which an `autoattack` ran in that norm, else the largest ε
  evaluated in that norm;
- `autoattack_acc`: the `autoattack` result at that ε, or null where none ran (never another attack's number);
- `reported`: the lowest robust accuracy over the attacks run at that ε (per-example worst case where several ran);
- `clean_acc`: natural accuracy on the sweep's test subset;
- `advsweep`: what RobustBench has no field for: confidence intervals, every attack × ε result, NFE, the trial id,
  checkpoint, number of test examples, and the sweep.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from advsweep.analysis.summary import AUTOATTACK_NAMES, Results, eps_text, load_results, records, safe_name
from advsweep.registry import SpecError
from advsweep.storage import schema as S

THREAT_MODELS = {"linf": "Linf", "l2": "L2"}


def _pct(v: float | None) -> str | None:
    return None if v is None else f"{100 * v:.2f}"


def architecture(model_name: str, config_json: str | None) -> str:
    """`odenet(width=32, solver=dopri5, …)`: the registered model and its options as trained."""
    try:
        model = json.loads(config_json or "{}").get("model") or {}
    except (TypeError, json.JSONDecodeError):
        model = {}
    opts = ", ".join(f"{k}={v}" for k, v in model.items() if k != "name")
    return f"{model_name}({opts})" if opts else model_name


def _report_eps(results: list[dict[str, Any]], eps: float | None) -> float | None:
    eps_all = sorted({r["eps"] for r in results})
    if eps is not None:
        hit = [e for e in eps_all if np.isclose(e, eps, rtol=1e-9, atol=1e-12)]
        return hit[0] if hit else None
    aa = [r["eps"] for r in results if r["attack_name"] in AUTOATTACK_NAMES]
    return max(aa) if aa else (max(eps_all) if eps_all else None)


def model_infos(res: Results, eps: float | None = None) -> list[tuple[Path, dict[str, Any]]]:
    """(relative path, model-info dict) per completed trial and threat model."""
    dataset = str((res.manifest.get("data") or {}).get("dataset") or "unknown")
    meta = res.trials.set_index("trial_id")
    out = []
    for rec in records(res):
        if rec["status"] != "completed":
            continue
        ok = [r for r in rec["robust"] if r["status"] == "ok" and r["robust_acc"] is not None]
        for norm, threat in THREAT_MODELS.items():
            in_norm = [r for r in ok if r["norm"] == norm]
            at = _report_eps(in_norm, eps)
            if at is None:
                continue
            here = [r for r in in_norm if r["eps"] == at]
            attacks = [r for r in here if r["attack_name"] != S.ENSEMBLE]
            worst = min(here, key=lambda r: (r["robust_acc"], r["attack_name"] != S.ENSEMBLE))
            aa = [r for r in attacks if r["attack_name"] in AUTOATTACK_NAMES]
            m = meta.loc[rec["trial_id"]]
            info = {
                "link": "", "name": rec["name"], "authors": "", "additional_data": False,
                "number_forward_passes": 1, "dataset": dataset, "venue": "", "threat_model": threat,
                "architecture": architecture(str(m["model_name"]), m["config_json"]),
                "eps": eps_text(at), "clean_acc": _pct(rec["natural_acc"]),
                "reported": _pct(worst["robust_acc"]),
                "autoattack_acc": _pct(min(r["robust_acc"] for r in aa)) if aa else None,
                "footnote": (f"advsweep sweep {res.sweep_id}; {worst['n']} test examples; reported = lowest robust "
                             f"accuracy over {', '.join(sorted(r['attack'] for r in attacks))} at this ε"),
                "advsweep": {
                    "sweep_id": res.sweep_id, "trial_id": rec["trial_id"], "trial_index": rec["trial_index"],
                    "checkpoint": rec["checkpoint"], "n_test": worst["n"], "eps": at,
                    "clean_acc_ci": [rec["natural_ci_low"], rec["natural_ci_high"]],
                    "reported_by": worst["attack"], "reported_ci": [worst["ci_low"], worst["ci_high"]],
                    "nfe_forward": rec["nfe_forward"],
                    "results": [{k: r[k] for k in ("attack", "attack_name", "eps", "robust_acc", "ci_low",
                                                   "ci_high", "n")} for r in in_norm],
                },
            }
            out.append((Path(dataset) / threat / f"{safe_name(rec['name'])}.json", info))
    return out


def export_robustbench(sweep_dir: str | Path, out: str | Path | None = None, eps: float | None = None) -> list[Path]:
    """Write the model-info files under `out` (default `<sweep_dir>/robustbench`); returns their paths."""
    res = load_results(sweep_dir, eps=eps, ensemble=True)
    infos = model_infos(res, eps)
    if not infos:
        raise SpecError(str(sweep_dir), "no completed trial has an ℓ∞ or ℓ2 attack result to export")
    names = [p for p, _ in infos]
    if len(set(names)) != len(names):  # two trials with the same readable name: keep both, told apart by id
        infos = [(p.with_name(f"{p.stem}_{i['advsweep']['trial_id']}.json"), i) for p, i in infos]
    root = Path(out) if out is not None else Path(sweep_dir) / "robustbench"
    written = []
    for rel, info in infos:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(info, indent=2) + "\n")
        tmp.replace(path)
        written.append(path)
    return written
