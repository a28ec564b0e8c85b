#!/bin/bash
# On the GPU box: JIT build, the dense-kernel GPU tests, the dense grid (both dtypes) and ncu's
# SM throughput at the seed point, packed into $OUT/dense.tgz. AB_BASE=REV adds an A/B of the
# grid against that git revision (tools/ab_revision.py; pack it first where git is, carry .carry).
#   bash tools/box_dense.sh [--quick]     (--quick: bf16 grid only)
set -uo pipefail
FINAL=${OUT:-/tmp/out}
mkdir -p "$FINAL"
OUT=$(mktemp -d)
export FLASHCORE_CACHE=${FLASHCORE_CACHE:-/tmp/fc} PYTHONPATH=$PWD
dtype=both
[ "${1:-}" = "--quick" ] && dtype=bf16
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
start=$(date +%s)
python3 -c "from sglang_flashcore import _jit; _jit.load()" 2>&1 | tail -3
echo "build: $(( $(date +%s) - start )) s"
python3 -m pytest tests/test_gpu_dense.py tests/test_gpu_extend.py tests/test_gpu_extend_plan.py -q -x \
  -p no:cacheprovider > "$OUT/dense_tests.txt" 2>&1
echo "dense tests rc=$?"; tail -3 "$OUT/dense_tests.txt"
python3 benchmarks/bench_dense.py --dtype $dtype --json "$OUT/dense_grid.json" --plot "$OUT/dense_grid.png" \
  > "$OUT/dense_grid.txt" 2>&1
echo "grid rc=$? at $(( $(date +%s) - start )) s"; grep "ours " "$OUT/dense_grid.txt" | cut -c1-220
ncu --clock-control none --kernel-name regex:dense_fwd \
  --metrics sm__throughput.avg.pct_of_peak_sustained_elapsed,gpu__time_duration.sum \
  python3 tools/ncu_dense.py > "$OUT/ncu_dense_seed_point.txt" 2>&1
echo "ncu rc=$?"; grep -E "dense_fwd|duration|throughput" "$OUT/ncu_dense_seed_point.txt"
if [ -n "${AB_BASE:-}" ]; then
  python3 tools/ab_revision.py run --base "$AB_BASE" --runs 2 --script bench_dense.py --json "$OUT/dense_ab.json" \
    --logs "$OUT" -- --dtype $dtype > "$OUT/dense_ab.txt" 2>&1
  echo "ab vs $AB_BASE rc=$?"; grep -E "^base:|this / base" "$OUT/dense_ab.txt"
fi
echo "[done at $(( $(date +%s) - start )) s]"
tar -czf "$FINAL/dense.tgz" -C "$OUT" .
