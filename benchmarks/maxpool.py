#!/usr/bin/env python
"""Max pooling where no gradient is recorded: the zoo's `MaxPool2d` (strided maximum) vs torch's `nn.MaxPool2d`.

The same model in two arms, differing only in the pooling module: "zoo" (advsweep.models.layers.MaxPool2d, as
built by `convnet` and `smallcnn`) and "torch" (a copy with nn.MaxPool2d). Models: the ConvNet (16, 32 channels)
trained as in benchmarks/autoattack_reference.py (FGSM-RS adversarial training at ε 0.1, 200 steps), the default
ConvNet (32, 64) and SmallCNN (untrained: speed only). Per thread count, ABBA rounds of:

  forward   no-grad forward of a batch of 64 and of 1,000 Fashion-MNIST test images (predictions, evaluation);
  square    `square` ℓ∞ ε 0.1 (--queries) on 64 images, trained ConvNet (the black-box attack's queries);
  pgd       `pgd` ℓ∞ 20 steps on 64 images, trained ConvNet (gradients recorded: both arms run torch's kernel, a
            control that should read 1.0×);
  autoattack  standard AutoAttack (n_iter 100, 5,000 queries) on 48 images at one thread, trained ConvNet, one
            ABBA round (--no-autoattack to skip; ≈ 4 min).

Ratios = torch arm's time ÷ zoo arm's, per round, median and range. The attacks' adversarial images (and AutoAttack's
per-example robust flags) are compared between the arms bit for bit.

    .venv/bin/python benchmarks/maxpool.py [--rounds 3] [--queries 1000] [--out benchmarks/results/maxpool.json]
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))


def with_torch_pool(model: nn.Module) -> nn.Module:
    from advsweep.models.layers import MaxPool2d

    plain = copy.deepcopy(model)
    for module in plain.modules():
        for name, child in module.named_children():
            if isinstance(child, MaxPool2d):
                setattr(module, name, nn.MaxPool2d(child.kernel_size, child.stride))
    return plain


def timed(fn, reps: int = 1) -> tuple[float, object]:
    t = time.perf_counter()
    for _ in range(reps):
        out = fn()
    return (time.perf_counter() - t) / reps, out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="ABBA rounds (each runs both arms twice)")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--queries", type=int, default=1000, help="Square's query budget")
    ap.add_argument("--no-autoattack", action="store_true")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "maxpool.json"))
    args = ap.parse_args()
    from autoattack_reference import spread, train

    from advsweep.attacks import build_attack
    from advsweep.attacks.autoattack import AutoAttack
    from advsweep.data import load_dataset, stratified_subset
    from advsweep.models import build_model
    from advsweep.training.trainer import as_float_images

    data = load_dataset("fashion-mnist")
    idx = stratified_subset(data.y_test, 1000, 0)
    x_all, y_all = as_float_images(torch.from_numpy(data.x_test[idx])), torch.from_numpy(data.y_test[idx]).long()
    x, y = x_all[:64], y_all[:64]
    torch.set_num_threads(1)
    torch.manual_seed(0)
    trained = train("adversarial", data, 200, 0.1)
    models = {"convnet 16,32 (trained)": trained,
              "convnet 32,64": build_model("convnet", 1, 10, 28).eval(),
              "smallcnn": build_model("smallcnn", 1, 10, 28).eval()}
    arms = {name: {"zoo": m, "torch": with_torch_pool(m)} for name, m in models.items()}
    results = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                           "cpu_count": os.cpu_count(), "torch": torch.__version__, "loadavg_start": os.getloadavg()},
               "args": vars(args), "cases": []}

    def attack_case(label, threads, make, rounds, warm_up=True):
        times, outs = {"zoo": [], "torch": []}, {}
        if warm_up:  # oneDNN primitives for the attack's shapes, both arms
            for arm in times:
                make(arms["convnet 16,32 (trained)"][arm])
        for r in range(rounds):
            order = ["zoo", "torch"] if r % 2 == 0 else ["torch", "zoo"]
            for arm in order + order[::-1]:
                sec, out = timed(lambda: make(arms["convnet 16,32 (trained)"][arm]))
                times[arm].append(sec)
                outs[arm] = out
        same = bool(torch.equal(outs["zoo"], outs["torch"]))
        ratios = [t / z for t, z in zip(times["torch"], times["zoo"])]
        results["cases"].append({"case": label, "threads": threads, "zoo_s": spread(times["zoo"]),
                                 "torch_s": spread(times["torch"]), "ratio": spread(ratios),
                                 "identical_outputs": same})
        print(f"  {label:44s} {threads} thr  zoo {statistics.median(times['zoo']):7.3f} s  torch "
              f"{statistics.median(times['torch']):7.3f} s  {statistics.median(ratios):.2f}× "
              f"({min(ratios):.2f}–{max(ratios):.2f})  identical: {same}", file=sys.stderr, flush=True)

    start = time.perf_counter()
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        for name in models:
            for batch in (64, 1000):
                xb = x_all[:batch]
                times = {"zoo": [], "torch": []}
                with torch.no_grad():
                    for arm in times:
                        arms[name][arm](xb)  # warm-up: oneDNN primitives for this shape
                    reps = max(3, 3000 // batch)
                    for r in range(args.rounds):
                        order = ["zoo", "torch"] if r % 2 == 0 else ["torch", "zoo"]
                        for arm in order + order[::-1]:
                            times[arm].append(timed(lambda: arms[name][arm](xb), reps)[0])
                    same = bool(torch.equal(arms[name]["zoo"](xb), arms[name]["torch"](xb)))
                ratios = [t / z for t, z in zip(times["torch"], times["zoo"])]
                results["cases"].append({"case": "forward", "model": name, "batch": batch, "threads": threads,
                                         "zoo_examples_per_s": batch / statistics.median(times["zoo"]),
                                         "torch_examples_per_s": batch / statistics.median(times["torch"]),
                                         "ratio": spread(ratios), "identical_outputs": same})
                print(f"  forward {name:28s} batch {batch:4d} {threads} thr  zoo "
                      f"{batch / statistics.median(times['zoo']):8.0f} ex/s  torch "
                      f"{batch / statistics.median(times['torch']):8.0f} ex/s  {statistics.median(ratios):.2f}× "
                      f"identical: {same}", file=sys.stderr, flush=True)
        attack_case(f"square ℓ∞ ε 0.1, {args.queries} queries, 64 images", threads,
                    lambda m: build_attack("square", m, 0.1, 0, n_queries=args.queries)(x, y).x_adv, args.rounds)
        attack_case("pgd ℓ∞ ε 0.1, 20 steps, 64 images (control)", threads,
                    lambda m: build_attack("pgd", m, 0.1, 0, steps=20)(x, y).x_adv, args.rounds)
        if threads == 1 and not args.no_autoattack:
            attack_case("standard AutoAttack ε 0.1, 48 images", threads,
                        lambda m: AutoAttack(m, 0.1, 0, n_iter=100, n_queries=5000)(x[:48], y[:48]).x_adv, 1,
                        warm_up=False)
    results["machine"]["loadavg_end"] = os.getloadavg()
    results["total_seconds"] = time.perf_counter() - start
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print("| case | threads | torch ÷ zoo, median (min–max) | identical |\n|---|---:|---:|---|")
    for c in results["cases"]:
        label = f"forward, {c['model']}, batch {c['batch']}" if c["case"] == "forward" else c["case"]
        r = c["ratio"]
        print(f"| {label} | {c['threads']} | {r['median']:.2f}× ({r['min']:.2f}–{r['max']:.2f}) | "
              f"{c['identical_outputs']} |")
    print(f"wrote {args.out} ({results['total_seconds']:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
