#!/usr/bin/env bash
# The GPU checks of one device-tool call, prepared so that a session lent a GPU spends its device time once:
#
#   here:   bash benchmarks/device/bundle.sh        (once; builds .device/, ≈ 60 of the 64 MiB a call carries)
#   device: run(command="bash benchmarks/device/gpu_check.sh", carry=[".device"], timeout_s=600)
#
# It installs the bundle under /tmp, runs the CUDA tests (tests/test_cuda.py: every attack, a trial's resume and the
# engine on the GPU, flags against the CPU's), then three benchmarks with their own time limits: engine_speed.py
# --device cuda for PGD-20 at three job sizes, autoattack_reference.py --device cuda (standard AutoAttack vs the
# reference on 1,000 images), and engine_speed.py for standard AutoAttack and Square (5,000 queries) at one shard
# and mid size; each writes its JSON as it goes, so a part cut short still returns what it measured. Results land in $OUT
# (the device tool brings back at most 8 files: here gpu_check.log, test_cuda.log, bench.log and three JSON files);
# copy the JSON files to benchmarks/results/ and report them in the README.
#
# ADVSWEEP_GPU_CHECK_BUDGET (seconds, default 540) bounds the whole script; GPU_CHECK_DEVICE=cpu runs the same steps
# on a CPU at toy sizes (to try the bundle and this script on a machine without a GPU).
set -uo pipefail
t0=$SECONDS
budget=${ADVSWEEP_GPU_CHECK_BUDGET:-540}
device=${GPU_CHECK_DEVICE:-cuda}
OUT=${OUT:-/tmp/advsweep-gpu-check}
mkdir -p "$OUT"
site=/tmp/advsweep-site
PY=${PYTHON:-python3}
left() { echo $((budget - (SECONDS - t0))); }
log() { echo "[gpu_check $((SECONDS - t0))s] $*" | tee -a "$OUT/gpu_check.log" "$OUT/bench.log"; }

[ -f .device/ray.tar.xz ] || { echo "gpu_check.sh: .device/ is missing: run benchmarks/device/bundle.sh and carry .device" >&2; exit 2; }
rm -rf "$site" && mkdir -p "$site"
tar -C "$site" -xJf .device/ray.tar.xz || exit 1
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .device/wheels/*.whl || exit 1
"$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --target "$site" . >/dev/null || exit 1
export PYTHONPATH=$site ADVSWEEP_DATA_DIR=$PWD/.device/data PYTHONUNBUFFERED=1 RAY_AUTH_MODE=disabled
log "installed in $((SECONDS - t0)) s"

{ nvidia-smi 2>&1; "$PY" -c 'import torch, ray, sys; print(sys.version); print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available()); print("ray", ray.__version__)'; nproc; free -g; } 2>&1 | tee -a "$OUT/gpu_check.log" | tail -6

if [ "$device" = cuda ]; then
    log "CUDA tests"
    timeout $(( $(left) < 150 ? $(left) : 150 )) "$PY" -m pytest -q -ra -p no:cacheprovider tests/test_cuda.py \
        > "$OUT/test_cuda.log" 2>&1
    log "CUDA tests: exit $? ($(tail -1 "$OUT/test_cuda.log"))"
    pgd=(--device cuda); rest=(--device cuda --sizes one-shard,mid --rounds 1)
    aa_ref=(--device cuda --n 1000 --models adversarial,natural)
else
    pgd=(--device cpu --mid-n 64 --trials 2 --train-steps 20 --rounds 1)
    rest=("${pgd[@]}" --sizes one-shard --aa-iter 2 --aa-queries 20 --square-queries 20)
    aa_ref=(--device cpu --quick --n 16 --models adversarial --train-steps 20)
fi

# Three time-boxed parts; each result file is rewritten after every measurement, so a part cut short keeps what it
# measured. PGD-20 gets a third of what is left, standard AutoAttack vs the reference half of the rest, and the
# engine's AutoAttack and Square runs the remainder.
part=$(( $(left) / 3 ))
log "engine_speed PGD-20 (limit ${part} s)"
timeout -k 10 "$part" "$PY" benchmarks/engine_speed.py "${pgd[@]}" --attacks pgd20 \
    --out "$OUT/engine_speed_${device}_pgd.json" >> "$OUT/bench.log" 2>&1
log "engine_speed PGD-20: exit $?"
part=$(( $(left) / 2 ))
log "AutoAttack vs the reference (limit ${part} s)"
timeout -k 10 "$part" "$PY" benchmarks/autoattack_reference.py "${aa_ref[@]}" --reference .device/auto-attack \
    --out "$OUT/autoattack_reference_${device}.json" >> "$OUT/bench.log" 2>&1
log "AutoAttack vs the reference: exit $?"
part=$(( $(left) - 15 ))
log "engine_speed AutoAttack, Square (limit ${part} s)"
timeout -k 10 "$part" "$PY" benchmarks/engine_speed.py "${rest[@]}" --attacks square,autoattack \
    --out "$OUT/engine_speed_${device}_aa_square.json" >> "$OUT/bench.log" 2>&1
log "engine_speed AutoAttack, Square: exit $?"
grep -h '"ratio_reference_time_over_ours"' "$OUT/bench.log" | cut -c1-400
for f in "$OUT"/engine_speed_*.json; do
    [ -f "$f" ] && "$PY" benchmarks/engine_speed.py --report "$f" 2>/dev/null | tail -15
done
log "done in $((SECONDS - t0)) s"
