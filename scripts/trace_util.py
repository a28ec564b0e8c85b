"""Shared by the trace scripts: a copy of the tree with one kernel patched at exact source lines,
built into its own cache so that the traced kernel never replaces the user's build."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from typing import Sequence, Tuple

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def patch(src: str, insertions: Sequence[Tuple[str, str]], kernel: str, script: str) -> str:
    """``src`` with each (old, new) replaced; stops, naming the line, when ``old`` does not occur
    exactly once (the kernel changed under the script)."""
    for old, new in insertions:
        if src.count(old) != 1:
            raise SystemExit(f"{script}: cuda/{kernel} no longer has exactly one of:\n{old}")
        src = src.replace(old, new)
    return src


def traced_tree(kernel: str, instrument, prefix: str) -> str:
    """Copies ``sglang_flashcore/`` and ``cuda/`` to a scratch folder, runs ``instrument`` over
    ``cuda/<kernel>`` there, points the JIT cache and the import path at the copy and returns it."""
    scratch = tempfile.mkdtemp(prefix=prefix)
    for name in ("sglang_flashcore", "cuda"):
        shutil.copytree(os.path.join(ROOT, name), os.path.join(scratch, name))
    path = os.path.join(scratch, "cuda", kernel)
    with open(path) as f:
        traced = instrument(f.read())
    with open(path, "w") as f:
        f.write(traced)
    os.environ["FLASHCORE_CACHE"] = os.path.join(scratch, "cache")  # its own build
    sys.path.insert(0, scratch)
    return scratch
