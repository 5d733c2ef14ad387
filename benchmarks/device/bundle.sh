#!/usr/bin/env bash
# Packs into .device/ (git-ignored) what benchmarks/device/gpu_check.sh needs on a GPU machine lent through the
# workplace's device tool. That machine has Python 3.12 with torch (CUDA), numpy, scipy, pyarrow, pandas, tqdm,
# requests, aiohttp, click, msgpack, protobuf, pyyaml and psutil, but not ray, pydantic, jsonschema or torchattacks,
# and it cannot download anything; what travels with the working tree is limited to 64 MiB.
#
# Ray's wheel alone is 79 MB, so it travels as a trimmed tree: its Java jars, RLlib, Serve, the LLM library and the
# dashboard's web client are dropped (the engine uses Ray core only, without a dashboard) and its three native
# binaries are stripped of symbols, then packed with xz. Versions are those of this checkout's .venv (the tested
# ones). Fashion-MNIST's four files travel as they are, and the reference AutoAttack's sources (from the local mirror).
#
#   bash benchmarks/device/bundle.sh            # for the device machine (CPython 3.12)
#   PY_VERSION=3.11 bash benchmarks/device/bundle.sh   # the same bundle for this machine's Python, to try it here
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
PY_VERSION=${PY_VERSION:-3.12}
PIP=${PIP:-.venv/bin/pip}
DATA=${DATA:-/usr/share/datasets/fashion-mnist}
out=.device
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

version() { "$PIP" show "$1" 2>/dev/null | sed -n 's/^Version: //p'; }
download() {  # name==version ... → $tmp/wheels, binary wheels for CPython $PY_VERSION on x86-64 Linux only
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$tmp/wheels" "$@"
}

# What the engine imports beyond the device image (ray core's own needs: jsonschema and its three helpers).
pins=()
for name in pydantic pydantic-core annotated-types typing-inspection jsonschema jsonschema-specifications \
            referencing rpds-py torchattacks; do
    v=$(version "$name")
    [ -n "$v" ] || { echo "bundle.sh: $name is not installed in $PIP's environment (run make install first)" >&2; exit 2; }
    pins+=("$name==$v")
done
ray_version=$(version ray)
[ -n "$ray_version" ] || { echo "bundle.sh: ray is not installed in $PIP's environment" >&2; exit 2; }
download "${pins[@]}" "ray==$ray_version"

mkdir -p "$tmp/ray"
(cd "$tmp/ray" && python3 -m zipfile -e "$tmp"/wheels/ray-*.whl .)
rm "$tmp"/wheels/ray-*.whl
rm -rf "$tmp"/ray/ray/{jars,rllib,serve,llm,dashboard/client}
for f in ray/core/src/ray/gcs/gcs_server ray/core/src/ray/raylet/raylet ray/_raylet.so; do
    strip --strip-unneeded "$tmp/ray/$f"
done
chmod +x "$tmp"/ray/ray/core/src/ray/gcs/gcs_server "$tmp"/ray/ray/core/src/ray/raylet/raylet

rm -rf "$out"
mkdir -p "$out/data/fashion-mnist"
mv "$tmp/wheels" "$out/wheels"
tar -C "$tmp/ray" -cf - . | xz -6 -T0 > "$out/ray.tar.xz"
for f in train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz; do
    cp "$DATA/$f" "$out/data/fashion-mnist/"
done
# The reference AutoAttack (fra31/auto-attack, MIT) for benchmarks/autoattack_reference.py --reference.
.venv/bin/python - "$out/auto-attack" <<'PY'
import shutil, sys
from pathlib import Path
sys.path.insert(0, "benchmarks")
from autoattack_reference import reference_dir
src, commit = reference_dir(None)
shutil.copytree(src, sys.argv[1])
(Path(sys.argv[1]) / "COMMIT").write_text(commit + "\n")
PY

tree_bytes=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
bundle_bytes=$(du -sb "$out" | cut -f1)
total=$((tree_bytes + bundle_bytes))
printf 'bundle %s: %.1f MiB (+ tracked files %.1f MiB = %.1f MiB of the 64 MiB a device call carries)\n' \
    "$out" "$(echo "$bundle_bytes / 1048576" | bc -l)" "$(echo "$tree_bytes / 1048576" | bc -l)" \
    "$(echo "$total / 1048576" | bc -l)"
if [ "$total" -gt $((64 * 1048576)) ]; then
    echo "bundle.sh: over the 64 MiB a device call carries" >&2
    exit 1
fi
