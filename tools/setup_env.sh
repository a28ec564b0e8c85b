#!/usr/bin/env bash
# Sets up a virtual environment with FlashCore and everything its tests need, from scratch.
#   FLASHCORE_VENV   where (default .venv)
#   FLASHCORE_TORCH  the torch requirement installed first (default torch==2.13.0, the CPU
#                    build on these machines; SGLang then brings the torch it pins)
#   FLASHCORE_EXTRAS extras to install (default test,bench,sglang)
#   FLASHCORE_SGLANG the SGLang requirement installed before the package (default: none, so the
#                    sglang extra brings the newest release in its range; e.g. sglang==0.5.17)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${FLASHCORE_VENV:-.venv}"
python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip)
"${pip[@]}" install -q --upgrade pip
"${pip[@]}" install -q "${FLASHCORE_TORCH:-torch==2.13.0}"
if [ -n "${FLASHCORE_SGLANG:-}" ]; then
    "${pip[@]}" install -q "$FLASHCORE_SGLANG"  # the sglang extra keeps it: it is in range
fi
"${pip[@]}" install -q -e ".[${FLASHCORE_EXTRAS:-test,bench,sglang}]"
"$venv/bin/python" -c "import torch, sglang_flashcore; from importlib.metadata import version; print('flashcore', sglang_flashcore.__version__, 'torch', torch.__version__, 'sglang', version('sglang'))"
