"""A/B of the dense kernel: this tree against a git revision, timed on one GPU in one device call.

Every "kept / not kept" figure in benchmarks/results/*/dense_ab/ is such a pair: the revision's
kernel built beside this one (its own JIT cache) and both timed back to back, each with its own
cuDNN baseline, so that the ratio between them is not a comparison across machines or days.

    # here, with git: pack the revision's kernel sources and bench_dense into .carry/
    python tools/ab_dense.py pack --base HEAD
    # on the GPU machine (carry .carry/ab_base.tgz): the runs alternate, this tree first
    python3 tools/ab_dense.py run --runs 2 --json ab.json -- --dtype bf16 --shape 32,512,16,16,128
    # two saved bench_dense JSONs (or lists of them), without a GPU
    python tools/ab_dense.py compare --this new_1.json new_2.json --base old_1.json old_2.json

Each bench_dense.py runs as its own process with its own tree's directory first on sys.path:
started with ``python -c`` or ``-m`` from the checkout, Python would import this checkout's
package whatever PYTHONPATH says, and both sides would build the same kernel.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PACK = ROOT / ".carry" / "ab_base.tgz"
PACKED = ["sglang_flashcore", "cuda", "benchmarks/bench_dense.py", "benchmarks/bench_util.py"]
KEY = ("dtype", "B", "S", "Hq", "Hkv", "D", "causal")


def pack(base: str, out: Path) -> str:
    """Writes the kernel sources and bench_dense of revision ``base`` to ``out`` (a .tgz), with a
    file AB_BASE naming the commit; returns that commit."""
    commit = subprocess.run(["git", "rev-parse", base], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()
    subject = subprocess.run(["git", "log", "-1", "--format=%s", commit], cwd=ROOT, check=True, capture_output=True,
                             text=True).stdout.strip()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "base.tar"
        subprocess.run(["git", "archive", "--format=tar", "-o", str(archive), commit, *PACKED], cwd=ROOT, check=True)
        (Path(tmp) / "AB_BASE").write_text(f"{commit} {subject}\n")
        with tarfile.open(out, "w:gz") as tgz:
            with tarfile.open(archive) as tar:
                for member in tar.getmembers():
                    tgz.addfile(member, tar.extractfile(member) if member.isfile() else None)
            tgz.add(Path(tmp) / "AB_BASE", arcname="AB_BASE")
    return commit


def _rows(paths: Sequence[str]) -> List[Dict[Tuple, dict]]:
    runs = []
    for path in paths:
        data = json.loads(Path(path).read_text())
        runs.append({tuple(r[k] for k in KEY): r for r in data["rows"]})
    return runs


def compare(this_runs: List[Dict[Tuple, dict]], base_runs: List[Dict[Tuple, dict]]) -> List[dict]:
    """Per point of the grid: each side's mean TFLOPS and mean ratio to its own cuDNN over the
    runs, and this / base. Points missing from any run are left out."""
    keys = [k for k in this_runs[0] if all(k in run for run in this_runs + base_runs)]
    rows = []
    for key in keys:
        row = dict(zip(KEY, key))
        for side, runs in (("this", this_runs), ("base", base_runs)):
            row[f"{side}_TF"] = sum(run[key]["ours_TF"] for run in runs) / len(runs)
            ratios = [run[key]["ours_over_cudnn"] for run in runs if run[key].get("ours_over_cudnn") is not None]
            row[f"{side}_over_cudnn"] = sum(ratios) / len(ratios) if ratios else None
        row["this_over_base"] = row["this_TF"] / row["base_TF"]
        rows.append(row)
    return rows


def summary(rows: List[dict]) -> str:
    ratios = [r["this_over_base"] for r in rows]
    faster = sum(x > 1 for x in ratios)
    return (f"this / base TFLOPS over {len(rows)} points: {min(ratios):.3f} - {max(ratios):.3f}, "
            f"faster on {faster}, slower on {len(rows) - faster}")


def _print(rows: List[dict]) -> None:
    from bench_util import print_table  # beside this script (imports torch: not needed to pack)

    print_table(rows, list(KEY) + ["this_TF", "base_TF", "this_over_base", "this_over_cudnn", "base_over_cudnn"],
                title="dense A/B: this tree against the base revision")
    print(summary(rows))


def run(pack_path: Path, runs: int, bench_args: List[str], json_out: str, this_root: Path = ROOT,
        script: str = "benchmarks/bench_dense.py") -> List[dict]:
    """Extracts the packed revision beside this tree and runs ``script`` of each tree, alternating,
    each with its own JIT cache; returns ``compare``'s rows (and saves them with both sides' runs)."""
    cache = os.environ.get("FLASHCORE_CACHE", os.path.join(tempfile.gettempdir(), "flashcore_ab"))
    work = Path(tempfile.mkdtemp(prefix="flashcore_ab_"))
    base_root = work / "base"
    with tarfile.open(pack_path) as tgz:
        try:
            tgz.extractall(base_root, filter="data")
        except TypeError:  # Python without extraction filters
            tgz.extractall(base_root)
    base_name = (base_root / "AB_BASE").read_text().strip()
    print(f"base: {base_name}")
    outputs: Dict[str, List[str]] = {"this": [], "base": []}
    for i in range(runs):
        for side, root in (("this", this_root), ("base", base_root)):
            out = str(work / f"{side}_{i}.json")
            env = dict(os.environ, FLASHCORE_CACHE=os.path.join(cache, side), PYTHONPATH=str(root))
            cmd = [sys.executable, str(root / script), *bench_args, "--json", out]
            print(f"run {i + 1}/{runs}: {side}", flush=True)
            subprocess.run(cmd, cwd=root, env=env, check=True, stdout=subprocess.DEVNULL)
            outputs[side].append(out)
    rows = compare(_rows(outputs["this"]), _rows(outputs["base"]))
    if json_out:
        info = json.loads(Path(outputs["this"][0]).read_text())["info"]
        info["command"] = " ".join(["python3", "tools/ab_dense.py", "run", "--runs", str(runs), "--"] + bench_args)
        info["base"] = base_name
        runs_json = {side: [json.loads(Path(p).read_text()) for p in paths] for side, paths in outputs.items()}
        Path(json_out).write_text(json.dumps({"info": info, "rows": rows, "runs": runs_json}, indent=1))
    return rows


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    p_pack = sub.add_parser("pack", help="pack a revision's kernel and bench_dense (needs git)")
    p_pack.add_argument("--base", default="HEAD")
    p_pack.add_argument("--out", default=str(DEFAULT_PACK))
    p_run = sub.add_parser("run", help="time this tree and the packed revision (needs the GPU)")
    p_run.add_argument("--pack", default=str(DEFAULT_PACK))
    p_run.add_argument("--runs", type=int, default=2)
    p_run.add_argument("--json", default="")
    p_run.add_argument("bench_args", nargs=argparse.REMAINDER, help="-- then bench_dense.py's arguments")
    p_cmp = sub.add_parser("compare", help="compare saved bench_dense JSONs")
    p_cmp.add_argument("--this", nargs="+", required=True)
    p_cmp.add_argument("--base", nargs="+", required=True)
    args = parser.parse_args(argv)
    if args.what == "pack":
        print(f"packed {pack(args.base, Path(args.out))} into {args.out}")
    elif args.what == "run":
        if args.runs < 1:
            parser.error("--runs: expected at least 1")
        bench_args = [a for a in args.bench_args if a != "--"]
        if "--json" in bench_args:
            parser.error("bench_dense's --json is written per run; give ab_dense.py's --json before --")
        _print(run(Path(args.pack), args.runs, bench_args, args.json))
    else:
        _print(compare(_rows(args.this), _rows(args.base)))


if __name__ == "__main__":
    main()
