#!/bin/bash
# On the GPU box (no network): unpack the SGLang site that tools/pack_box_site.py packed into
# .carry/boxsite.tar.xz, install this checkout into it (for the sglang.srt.plugins entry point),
# then run the given command with it on PYTHONPATH. Idempotent on a warm box. When
# .carry/baselines.tar.xz (tools/build_baselines.py: FlashInfer's AOT modules, FlashAttention-3 and
# its sgl_kernel.flash_attn) is carried too, it is unpacked over the site (again when it changes),
# so that the flashinfer and fa3 attention backends run. With FLASHCORE_BOX_WHEEL (a wheel file; use
# another FLASHCORE_BOX_SITE) that wheel is installed instead of the checkout, and the checkout's
# package is kept off sys.path (PYTHONSAFEPATH): tools/box_wheel_check.sh serve.
#   bash tools/box_serving.sh python3 benchmarks/bench_serving.py --check
set -euo pipefail
SITE=${FLASHCORE_BOX_SITE:-/tmp/site}
if [ ! -f "$SITE/.flashcore_ready" ]; then
    mkdir -p "$SITE"
    tar -xJf .carry/boxsite.tar.xz -C "$SITE"
    python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target "$SITE" \
        "${FLASHCORE_BOX_WHEEL:-.}"
    touch "$SITE/.flashcore_ready"
fi
if [ -f .carry/baselines.tar.xz ]; then
    stamp=$(stat -c '%s %Y' .carry/baselines.tar.xz)
    if [ "$(cat "$SITE/.baselines_ready" 2>/dev/null)" != "$stamp" ]; then
        tar -xJf .carry/baselines.tar.xz -C "$SITE"
        echo "$stamp" > "$SITE/.baselines_ready"
    fi
fi
export PYTHONPATH="$SITE" FLASHCORE_CACHE="${FLASHCORE_CACHE:-/tmp/fc}"
if [ -n "${FLASHCORE_BOX_WHEEL:-}" ]; then
    export PYTHONSAFEPATH=1
fi
"$@"
