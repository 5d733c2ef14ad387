"""`advsweep best`: the trial with the highest robust accuracy at one attack × ε, with its interval, natural accuracy,
checkpoint and the runner-up (whether their intervals overlap)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from advsweep.analysis.summary import Cell, Results, records
from advsweep.registry import SpecError


@dataclass
class Best:
    cell: Cell
    row: dict[str, Any]  # the trial's record (see `records`)
    result: dict[str, Any]  # its robust result at the cell
    runner_up: dict[str, Any] | None
    candidates: int


def best_trial(res: Results, min_natural: float | None = None) -> Best:
    """The completed trial with the highest robust accuracy at the one selected attack × ε (ties: higher natural
    accuracy, then the earlier trial), among those with natural accuracy ≥ `min_natural`."""
    if len(res.cells) != 1:
        raise SpecError("--attack", f"choose one attack and ε (have: {res.available()})")
    cell = res.cells[0]
    cands = []
    for rec in records(res):
        v = next((x for x in rec["robust"] if x["status"] == "ok"), None)
        if rec["status"] != "completed" or v is None or v["robust_acc"] is None:
            continue
        if min_natural is not None and (rec["natural_acc"] is None or rec["natural_acc"] < min_natural):
            continue
        cands.append((rec, v))
    if not cands:
        if min_natural is not None:
            top = max((r["natural_acc"] for r in records(res) if r["natural_acc"] is not None), default=None)
            raise SpecError("--min-natural", f"no trial with a result at {cell.key} reaches natural accuracy "
                                             f"{min_natural:g}" + (f" (highest: {top:.3f})" if top is not None else ""))
        raise SpecError(str(res.sweep_dir), f"no completed trial has a result at {cell.key}")
    cands.sort(key=lambda rv: (-rv[1]["robust_acc"], -(rv[0]["natural_acc"] or 0.0), rv[0]["trial_index"]))
    rec, v = cands[0]
    return Best(cell, rec, v, cands[1][0] | {"result": cands[1][1]} if len(cands) > 1 else None, len(cands))


def best_lines(b: Best) -> list[str]:
    def ci(v: dict[str, Any], acc: str = "robust_acc", lo: str = "ci_low", hi: str = "ci_high") -> str:
        return f"{v[acc]:.3f} [{v[lo]:.3f}, {v[hi]:.3f}]"

    r = b.row
    lines = [f"best at {b.cell.attack} ε={b.cell.eps:g} ({b.candidates} trial(s) compared): {r['name']}",
             f"  robust acc   {ci(b.result)}  (95 % Wilson, n={b.result['n']})",
             f"  natural acc  {ci(r, 'natural_acc', 'natural_ci_low', 'natural_ci_high')}",
             f"  trial        {r['trial_id']} (index {r['trial_index']})",
             f"  checkpoint   {r['checkpoint']}"]
    if b.runner_up is not None:
        u = b.runner_up
        overlap = u["result"]["ci_high"] >= b.result["ci_low"]
        lines.append(f"  runner-up    {u['name']}: {ci(u['result'])}"
                     + ("  (intervals overlap: not clearly better; `advsweep compare` tests it on the same examples)"
                        if overlap else ""))
    return lines
