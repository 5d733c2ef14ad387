"""How advsweep runs on a Ray cluster (job submission, cluster configs). Nothing in the library imports this."""
