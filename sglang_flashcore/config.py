"""The environment settings a user may set, read in one place.

* ``FLASHCORE_IMPL``: ``auto`` (default: our kernels on Hopper GPUs, the float32 reference on
  CPU tensors), ``reference`` (the float32 reference everywhere, e.g. on a GPU the kernels do
  not support), or ``cuda`` (the same as ``auto``; kept for scripts that name it).
* ``FLASHCORE_CACHE``: where the JIT build of ``cuda/`` is kept (default ``~/.cache/flashcore``).
* ``FLASHCORE_VERBOSE_BUILD=1``: print the compiler commands of the JIT build.

Nothing else in the package reads the environment: variants of a kernel are compared against a
git revision (``tools/ab_revision.py``), never switched at run time.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

IMPL_MODES = ("auto", "reference", "cuda")


def impl_mode() -> str:
    """``FLASHCORE_IMPL``, validated: one of ``IMPL_MODES``."""
    mode = os.environ.get("FLASHCORE_IMPL", "auto").lower()
    if mode not in IMPL_MODES:
        raise ValueError(f"FLASHCORE_IMPL: expected auto, reference or cuda, got {mode!r}")
    return mode


def use_kernels(device: "torch.device") -> bool:
    """Whether tensors on ``device`` run our CUDA kernels (else the float32 reference)."""
    return device.type == "cuda" and impl_mode() != "reference"


def cache_root() -> Path:
    """``FLASHCORE_CACHE``, or ``~/.cache/flashcore``."""
    return Path(os.environ.get("FLASHCORE_CACHE", Path.home() / ".cache" / "flashcore"))


def verbose_build() -> bool:
    """``FLASHCORE_VERBOSE_BUILD=1``."""
    return os.environ.get("FLASHCORE_VERBOSE_BUILD") == "1"
