"""Mutation check of the GPU suite: break a critical kernel on purpose, rebuild, and require the
tests to fail. A mutation the suite lets through is a hole in the tests, not in the kernel.

Each mutation is one source edit (the text it replaces must appear exactly once, so an edit that
no longer applies is reported rather than silently skipped), built into its own JIT cache from a
copy of the tree, and run against the GPU test files that should catch it:

    python tools/mutation_check.py [--only NAME ...] [--json out.json]     # on the GPU machine

Exits 1 when a mutation survives or no longer applies. Each build takes about 40 s and each test
run 20-60 s (H100/H200), so the whole list fits one 10-minute device call.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str  # relative to the repository root
    old: str
    new: str
    tests: Sequence[str]  # pytest targets that must fail


MUTATIONS: List[Mutation] = [
    Mutation("dense causal mask shifted by one", "cuda/include/flashcore/dense/softmax.cuh",
             "rows[r] + t.diag + 1) : t.sk;", "rows[r] + t.diag + 2) : t.sk;",
             ["tests/test_gpu_dense.py", "tests/test_gpu_extend.py"]),
    Mutation("extend reads the wrong page of a prefix", "cuda/include/flashcore/dense/mainloop.cuh",
             "t.pages[pos / p.page_size] * p.page_size", "t.pages[(pos / p.page_size) / 2] * p.page_size",
             ["tests/test_gpu_extend.py"]),
    Mutation("decode drops the last task of every plan", "cuda/paged_decode.cu",
             "for (int t = first; t < num_tasks; t += stride) {", "for (int t = first; t + 1 < num_tasks; t += stride) {",
             ["tests/test_gpu_decode.py"]),
    Mutation("decode skips the second 64-token tile of a work item", "cuda/paged_decode.cu",
             "        attend(tile, stage, stage + Smem::kTileBytes);",
             "        if (tile != 1) attend(tile, stage, stage + Smem::kTileBytes);",
             ["tests/test_gpu_decode.py"]),
    Mutation("merge leaves out a request's first partial", "cuda/paged_decode.cu",
             "    for (int i = i0 + g; i < i1; i += kMergeSplit) {",
             "    for (int i = i0 + g + (g == 0 && i1 - i0 > 1); i < i1; i += kMergeSplit) {",
             ["tests/test_gpu_decode.py"]),
    Mutation("FP8 V widened without its scale", "cuda/paged_decode.cu",
             "  p.v_scale *= widened_unscale<T, TKV>();", "",
             ["tests/test_gpu_fp8.py"]),
    Mutation("FP8 narrow path: one head dim's V tokens in another's word", "cuda/paged_decode.cu",
             "  out[1] = __byte_perm(lo01, lo23, 0x7632);", "  out[1] = __byte_perm(lo01, lo23, 0x5410);",
             ["tests/test_gpu_fp8.py"]),
    Mutation("FP8 narrow path: K rows in token order, not the permuted one", "cuda/paged_decode.cu",
             "const int k_row[2] = {r0 + narrow_token(g), r0 + narrow_token(g + 8)};",
             "const int k_row[2] = {r0 + g, r0 + g + 8};",
             ["tests/test_gpu_fp8.py"]),
]


def apply(mutation: Mutation, tree: Path) -> None:
    path = tree / mutation.path
    text = path.read_text()
    count = text.count(mutation.old)
    if count != 1:
        raise ValueError(f"{mutation.name}: the text to replace appears {count} times in {mutation.path}")
    path.write_text(text.replace(mutation.old, mutation.new))


def run_one(mutation: Mutation, timeout: int) -> dict:
    """Copies the tree, applies the mutation, builds into a fresh cache and runs its tests."""
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="flashcore-mutant-") as tmp:
        tree = Path(tmp) / "tree"
        shutil.copytree(ROOT, tree, ignore=shutil.ignore_patterns(".git", ".venv", ".carry", "__pycache__"))
        try:
            apply(mutation, tree)
        except ValueError as exc:
            return {"name": mutation.name, "outcome": "no longer applies", "detail": str(exc)}
        env = dict(os.environ, FLASHCORE_CACHE=str(Path(tmp) / "cache"), PYTHONPATH=str(tree))
        cmd = [sys.executable, "-m", "pytest", *mutation.tests, "-m", "gpu", "-q", "-x", "-p", "no:cacheprovider"]
        try:
            res = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
            tail = (res.stdout + res.stderr).strip().splitlines()[-1:] or [""]
            outcome = "caught" if res.returncode == 1 else ("survived" if res.returncode == 0 else
                                                           f"error (pytest exit {res.returncode})")
        except subprocess.TimeoutExpired:
            outcome, tail = "error (timeout)", [""]
    return {"name": mutation.name, "outcome": outcome, "detail": tail[0], "seconds": round(time.time() - start, 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", help="names (substrings) of the mutations to run")
    parser.add_argument("--timeout", type=int, default=240, help="seconds per mutation (build + tests)")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.only or any(s in m.name for s in args.only)]
    results = []
    for mutation in chosen:
        results.append(run_one(mutation, args.timeout))
        r = results[-1]
        print(f"{r['outcome']:>18}  {r['name']}  {r.get('detail', '')}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0 if all(r["outcome"] == "caught" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
