"""advsweep: Ray-distributed hyperparameter and adversarial-attack sweeps.

Data flow: sweeps/*.yaml → advsweep.spec → advsweep.sweep (Ray Tune) → advsweep.evaluation (attacks on shards)
→ advsweep.storage (Parquet + MLflow) → advsweep.analysis (frontiers, plots).
"""
__version__ = "0.1.0"

