"""Evaluation overlapped with training (issue 9): a trial is attacked while later trials still train."""
import json

import pytest

from sweep_proc import run

pytestmark = pytest.mark.slow

SPEC = """
name: overlap
seed: 1
data: {dataset: fashion-mnist, n_train: 256, n_val: 64, n_test: 48, seed: 0}
trials:
  - model: {name: resnet, width: 8, blocks: 1}
    training: {recipe: {name: natural}, epochs: {grid: [1, 3, 6]}, batch_size: 64, lr: 0.05}
attacks:
  - {name: fgsm, eps: [0.1]}
  - {name: pgd, eps: [0.1], steps: 5}
monitor: {eps: 0.1, steps: 1, n: 32}
eval: {batch_size: 16, shard_size: 16, seed: 0, overlap: true}
"""


def test_first_trial_is_attacked_while_the_last_trains(tmp_path, fashion_available):
    spec = tmp_path / "overlap.yaml"
    spec.write_text(SPEC)
    out = tmp_path / "sweep"
    r = run("run", str(spec), "--out", str(out))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    manifest = json.loads((out / "sweep.json").read_text())
    assert manifest["overlap"]["units"] >= 1 and manifest["overlap"]["trials"], manifest["overlap"]
    assert "evaluation overlapped with training" in r.stdout
    # observable on disk: an example file was written before the longest trial's last checkpoint
    first_unit = min(p.stat().st_mtime for p in (out / "examples").rglob("*.parquet"))
    last_ckpt = max(p.stat().st_mtime for p in (out / "ray").glob("*/*/checkpoint_*/state.pt"))
    assert first_unit < last_ckpt
    from advsweep.storage.parquet import read_examples

    ex = read_examples(out, columns=["trial_id", "attack", "eps", "example_index"]).to_pandas()
    per = ex.groupby(["trial_id", "attack", "eps", "example_index"], observed=True).size()
    assert (per == 1).all() and len(per) == 3 * 2 * 48
