"""`python -m advsweep.cluster.preflight SPEC OUT`: the checks `advsweep submit` runs on the cluster itself, as a short
Ray Job, before it submits the sweep: the spec's per-trial/per-worker resources fit the largest node, and every node
writes to the output location. Exit 2 with one `advsweep: error:` line on failure; nothing is left behind."""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from advsweep.registry import SpecError

    argv = sys.argv[1:] if argv is None else argv
    spec_file, out = argv
    try:
        import ray

        from advsweep.cluster.storage import check_new_output, check_output_shared
        from advsweep.spec import load_spec
        from advsweep.sweep.cluster_checks import check_cluster_resources

        spec = load_spec(spec_file)
        check_new_output(out)
        ray.init(log_to_driver=False)  # RAY_ADDRESS is set inside a job: this joins the cluster
        check_cluster_resources(spec.raw.resources)
        n = check_output_shared(out)
    except SpecError as exc:
        print(f"advsweep: error: {exc}", file=sys.stderr, flush=True)
        return 2
    print(f"preflight ok: {n} nodes write to {out}; resources fit", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
