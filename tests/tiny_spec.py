"""A tiny real spec shared by the end-to-end tests."""
TINY_SPEC = """
name: tiny
seed: 1
data: {dataset: fashion-mnist, n_train: 256, n_val: 64, n_test: 60, seed: 0}
trials:
  - model: {name: resnet, width: 8, blocks: 1}
    training: {recipe: {name: natural}, epochs: 2, batch_size: 64, lr: 0.05}
  - model: {name: odenet, width: 8, solver: euler, step_size: 0.5}
    training: {recipe: {name: natural}, epochs: 2, batch_size: 64, lr: 0.05}
attacks:
  - {name: fgsm, eps: [0.05, 0.1]}
  - {name: pgd, eps: [0.1], steps: 3}
monitor: {eps: 0.1, steps: 2, n: 32}
eval: {batch_size: 30, shard_size: 30, seed: 0}
"""
