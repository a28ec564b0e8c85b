#!/bin/bash
# On the GPU box (no network): the ahead-of-time wheel (setup.py, FLASHCORE_BUILD_KERNELS=1) with
# nvcc out of reach (PATH without it, CUDA_HOME at an empty folder) and an empty FLASHCORE_CACHE
# that must stay empty (a JIT build would write there).
#   bash tools/box_wheel_check.sh            install the wheel into a fresh folder; from outside the
#       checkout, load the kernels (the prebuilt module), run a small decode through
#       sglang_flashcore.paged_decode_table on the GPU against the same call on CPU (the float32
#       reference), print flashcore-doctor. About half a minute.
#   bash tools/box_wheel_check.sh serve [ARGS]   SGLang serving from the wheel: tools/box_serving.sh
#       with the wheel in its site (FLASHCORE_BOX_WHEEL) instead of the checkout, running
#       benchmarks/bench_serving.py --backends flashcore_sparse,triton --check --workloads "" ARGS.
# The wheel: $FLASHCORE_WHEEL, default .carry/wheel/sglang_flashcore-*.whl.
set -euo pipefail

ROOT=$PWD
WHEEL=$(realpath "${FLASHCORE_WHEEL:-$(ls "$ROOT"/.carry/wheel/sglang_flashcore-*.whl | head -1)}")
PY=$(command -v python3)
WORK=$(mktemp -d)
CACHE=$WORK/cache
mkdir -p "$CACHE" "$WORK/bin" "$WORK/cuda"
# python3 stays reachable through a wrapper (a symlink would lose its virtual environment);
# the folders that hold nvcc leave PATH
printf '#!/bin/sh\nexec %q "$@"\n' "$PY" > "$WORK/bin/python3"
chmod +x "$WORK/bin/python3"
keep=("$WORK/bin")
IFS=: read -ra dirs <<< "$PATH"
for dir in "${dirs[@]}"; do
    [ -n "$dir" ] && [ ! -x "$dir/nvcc" ] && keep+=("$dir")
done
NO_NVCC_PATH=$(IFS=:; echo "${keep[*]}")
# torch finds /usr/local/cuda by itself when CUDA_HOME is unset; PYTHONSAFEPATH: `python3 -m` in
# the checkout would import its sglang_flashcore instead of the wheel's
hidden() {
    env -u CUDA_PATH PATH="$NO_NVCC_PATH" CUDA_HOME="$WORK/cuda" PYTHONSAFEPATH=1 FLASHCORE_CACHE="$CACHE" "$@"
}
cache_stayed_empty() {
    if [ -n "$(ls -A "$CACHE")" ]; then
        echo "FAIL: FLASHCORE_CACHE is not empty (a JIT build ran):"; ls -la "$CACHE"; return 1
    fi
    echo "FLASHCORE_CACHE stayed empty: no JIT build"
}
start=$(date +%s)
echo "wheel: $WHEEL ($(stat -c %s "$WHEEL") bytes)"
hidden bash -c 'echo "nvcc: $(command -v nvcc || echo "not on PATH"); CUDA_HOME=$CUDA_HOME (empty)"'

if [ "${1:-}" = serve ]; then
    shift
    rc=0
    FLASHCORE_BOX_WHEEL=$WHEEL FLASHCORE_BOX_SITE=${FLASHCORE_BOX_SITE:-/tmp/site_wheel} \
        hidden bash tools/box_serving.sh python3 benchmarks/bench_serving.py \
        --backends flashcore_sparse,triton --check --workloads "" --log-dir "${OUT:-$WORK}" "$@" || rc=1
    cache_stayed_empty || rc=1
    rm -rf "$WORK"
    echo "wheel serving rc=$rc ($(( $(date +%s) - start )) s)"
    exit $rc
fi

SITE=$WORK/site
"$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$WHEEL"
ls "$SITE"/sglang_flashcore/_kernels*.so
cd "$WORK"  # outside the checkout
rc=0
PYTHONPATH="$SITE" hidden python3 - <<'EOF' || rc=1
import torch
import sglang_flashcore as fc
import sglang_flashcore._jit as j

print("package:", fc.__file__)
print("nvcc found by the build:", j.find_nvcc())
m = j.load()
print(j.prebuilt()[1] or "prebuilt", m)
assert j.prebuilt()[0] is m, "the loaded kernels are not the prebuilt module"

# three requests over a 6000-slot pool, two sharing a 512-token prefix; pool row 1 unused
g = torch.Generator().manual_seed(0)
hq, hkv, d, slots = 16, 4, 128, 6000
q = torch.randn(3, hq, d, generator=g).bfloat16()
k = torch.randn(slots, hkv, d, generator=g).bfloat16()
v = torch.randn(slots, hkv, d, generator=g).bfloat16()
perm = torch.randperm(slots, generator=g).int()
table = torch.zeros(4, 2048, dtype=torch.int32)
table[0, :1500] = perm[:1500]
table[2, :512] = perm[:512]
table[2, 512:700] = perm[1500:1688]
table[3, :40] = perm[2000:2040]
rows, seq = torch.tensor([0, 2, 3]), torch.tensor([1500, 700, 40])
ref_o, ref_l = fc.paged_decode_table(q, k, v, table, rows, seq)  # CPU: the float32 reference
out, lse = fc.paged_decode_table(*[t.cuda() for t in (q, k, v, table, rows, seq)])
torch.cuda.synchronize()
torch.testing.assert_close(out.float().cpu(), ref_o.float(), atol=1.2e-2, rtol=1e-2)
torch.testing.assert_close(lse.cpu(), ref_l, atol=2e-3, rtol=1e-4)
err = (out.float().cpu() - ref_o.float()).abs().max().item()
print(f"decode on {torch.cuda.get_device_name()}: matches the CPU reference (max |out - ref| {err:.2e})")
EOF
echo "--- flashcore-doctor"
PYTHONPATH="$SITE" hidden "$SITE/bin/flashcore-doctor" || rc=1
cache_stayed_empty || rc=1
cd "$ROOT"
rm -rf "$WORK"
echo "wheel check rc=$rc ($(( $(date +%s) - start )) s)"
exit $rc
