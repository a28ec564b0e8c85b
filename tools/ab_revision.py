"""A/B of any benchmark: this tree against a git revision, timed on one GPU in one device call.

The revision's package and kernels are unpacked beside this tree, each side runs its own copy of
the benchmark script (found at its path in that revision: ``benchmarks/`` now, ``scripts/``
before the move) with its own JIT cache, and the runs alternate (this, base, this, base, ...), so
the ratio between the two is not a comparison across machines or days. Every benchmark also times
its own baseline (cuDNN, FA2) in each run, which the table shows beside.

    # here, with git: pack the revision's package, kernels and benchmark scripts into .carry/
    python tools/ab_revision.py pack --base 94de7b1
    # on the GPU machine (carry .carry): one benchmark, any of its arguments after --
    python3 tools/ab_revision.py run --runs 2 --script bench_decode.py --json ab.json -- --hkv 8
    # the seed points of bench_dense.py and bench_decode.py, JSON under a folder
    python3 tools/ab_revision.py seeds --base 94de7b1 --out results/
    # saved JSONs of one benchmark (or lists of them), without a GPU
    python tools/ab_revision.py compare --script bench_dense.py --this new_1.json new_2.json --base old_1.json

A point is matched by its configuration columns (``PROFILES``: per benchmark, the key, the timed
metric and the baseline ratio; ``--key``/``--metric`` for others), and ``this_over_base`` is a
speed ratio: above 1, this tree is faster.

Each benchmark runs as its own process from its own tree, with that tree first on PYTHONPATH:
started with ``python -c`` or ``-m`` from the checkout, Python would import this checkout's
package whatever PYTHONPATH says, and both sides would build the same kernel.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PACK = ROOT / ".carry" / "ab_base.tgz"
PACKED = ["sglang_flashcore", "cuda"]  # whole, plus every bench_*.py of the benchmark folder
BENCH_DIRS = ("benchmarks", "scripts")  # where the benchmark scripts live, newest first


class Profile(NamedTuple):
    key: Tuple[str, ...]  # the configuration columns that name a point
    metric: str  # the timed figure of ours
    higher_is_better: bool  # TFLOPS: True; milliseconds: False
    baseline: str = ""  # ours against the run's own baseline (a speed ratio), shown beside


PROFILES: Dict[str, Profile] = {
    "bench_dense.py": Profile(("dtype", "B", "S", "Hq", "Hkv", "D", "causal"), "ours_TF", True, "ours_over_cudnn"),
    "bench_decode.py": Profile(("B", "Hq", "Hkv", "ctx", "D", "page", "shared"), "ours_ms", False, "speedup_vs_cudnn"),
    "bench_decode_grid.py": Profile(("B", "Hkv", "ctx", "pool", "pages", "spec", "grid_sms"), "ours_ms", False,
                                    "vs_cudnn"),
    "bench_extend.py": Profile(("page", "B", "L", "prefix", "new", "Hq", "Hkv", "D"), "backend_ms", False,
                               "backend_over_sdpa_plus_gather"),
    "bench_ragged.py": Profile(("batch", "Hq", "Hkv", "D", "causal", "dtype"), "ours_ms", False, "ours_over_fa2"),
    "bench_verify.py": Profile(("page", "B", "N", "ctx", "shared"), "ours_ms", False, "ours_over_best_builtin"),
    "bench_window.py": Profile(("op", "B", "S", "C", "W", "page"), "ours_ms", False, "ours_over_fa3"),
}

# the seed points (../shared/BENCHMARKS.md): bench_dense's B16 H16 S2048 D64, bench_decode's grid
SEEDS: List[Tuple[str, List[str]]] = [
    ("bench_dense.py", ["--shape", "16,2048,16,16,64"]),
    ("bench_decode.py", []),
]


def profile_for(script: str) -> Profile:
    name = Path(script).name
    if name not in PROFILES:
        raise ValueError(f"{name}: no profile; name its point with --key and its timed column with --metric")
    return PROFILES[name]


# ------------------------------------------------------------------------------------------ pack
def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()


def revision_files(commit: str) -> List[str]:
    """What ``pack`` takes of a revision: the package, the kernels, and the benchmark scripts of the
    first of BENCH_DIRS that holds bench_util.py there."""
    for folder in BENCH_DIRS:
        names = _git("ls-tree", "--name-only", f"{commit}:{folder}").splitlines() if _has(commit, folder) else []
        if "bench_util.py" in names:
            return PACKED + [f"{folder}/{n}" for n in names if n.startswith("bench_") and n.endswith(".py")]
    raise ValueError(f"{commit}: no bench_util.py under {' or '.join(BENCH_DIRS)}")


def _has(commit: str, path: str) -> bool:
    return subprocess.run(["git", "cat-file", "-e", f"{commit}:{path}"], cwd=ROOT, capture_output=True).returncode == 0


def pack(base: str, out: Path) -> str:
    """Writes revision ``base``'s package, kernels and benchmark scripts to ``out`` (a .tgz), with a
    file AB_BASE naming the commit; returns that commit."""
    commit = _git("rev-parse", "--verify", f"{base}^{{commit}}")
    subject = _git("log", "-1", "--format=%s", commit)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "base.tar"
        subprocess.run(["git", "archive", "--format=tar", "-o", str(archive), commit, *revision_files(commit)],
                       cwd=ROOT, check=True)
        (Path(tmp) / "AB_BASE").write_text(f"{commit} {subject}\n")
        with tarfile.open(out, "w:gz") as tgz:
            with tarfile.open(archive) as tar:
                for member in tar.getmembers():
                    tgz.addfile(member, tar.extractfile(member) if member.isfile() else None)
            tgz.add(Path(tmp) / "AB_BASE", arcname="AB_BASE")
    return commit


def packed_commit(pack_path: Path) -> str:
    with tarfile.open(pack_path) as tgz:
        return tgz.extractfile("AB_BASE").read().decode().split()[0]


def ensure_pack(pack_path: Path, base: Optional[str]) -> None:
    """Uses the pack at ``pack_path`` when it holds ``base`` (a commit or a prefix of one; any
    revision when ``base`` is None); packs ``base`` there otherwise (which needs git)."""
    if pack_path.exists() and (base is None or packed_commit(pack_path).startswith(base)):
        return
    if base is None:
        raise FileNotFoundError(f"{pack_path}: no packed revision; run `ab_revision.py pack --base REV` where git is")
    if pack_path.exists():
        try:
            if packed_commit(pack_path) == _git("rev-parse", "--verify", f"{base}^{{commit}}"):
                return
        except (subprocess.CalledProcessError, FileNotFoundError):
            pass
    try:
        print(f"packed {pack(base, pack_path)} into {pack_path}")
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        raise RuntimeError(f"{pack_path} does not hold {base} and it cannot be packed here (no git?): {exc}")


# --------------------------------------------------------------------------------------- compare
def _rows(paths: Sequence, key: Sequence[str]) -> List[Dict[Tuple, dict]]:
    runs = []
    for path in paths:
        data = json.loads(Path(path).read_text())
        runs.append({tuple(r.get(k) for k in key): r for r in data["rows"]})
    return runs


def _mean(values: List[float]) -> Optional[float]:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def compare(this_runs: List[Dict[Tuple, dict]], base_runs: List[Dict[Tuple, dict]], profile: Profile) -> List[dict]:
    """Per point: each side's mean metric and mean baseline ratio over its runs, and this / base
    as a speed ratio (above 1: this tree is faster). Points missing from any run are left out."""
    keys = [k for k in this_runs[0] if all(k in run for run in this_runs + base_runs)]
    rows = []
    for key in keys:
        row = dict(zip(profile.key, key))
        for side, runs in (("this", this_runs), ("base", base_runs)):
            row[f"{side}_{profile.metric}"] = _mean([run[key].get(profile.metric) for run in runs])
            if profile.baseline:
                row[f"{side}_{profile.baseline}"] = _mean([run[key].get(profile.baseline) for run in runs])
        this, base = row[f"this_{profile.metric}"], row[f"base_{profile.metric}"]
        if this and base:
            row["this_over_base"] = this / base if profile.higher_is_better else base / this
            rows.append(row)
    return rows


def summary(rows: List[dict]) -> str:
    ratios = [r["this_over_base"] for r in rows]
    if not ratios:
        return "no point timed on both sides"
    faster = sum(x > 1 for x in ratios)
    geomean = math.exp(sum(math.log(x) for x in ratios) / len(ratios))
    return (f"this / base speed over {len(rows)} points: {min(ratios):.3f} - {max(ratios):.3f} "
            f"(geomean {geomean:.3f}), faster on {faster}, slower on {len(rows) - faster}")


def columns(profile: Profile) -> List[str]:
    cols = list(profile.key) + [f"this_{profile.metric}", f"base_{profile.metric}", "this_over_base"]
    return cols + ([f"this_{profile.baseline}", f"base_{profile.baseline}"] if profile.baseline else [])


def _print(rows: List[dict], profile: Profile, title: str) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_util import print_table  # imports torch: not needed to pack

    print_table(rows, columns(profile), title=title)
    print(summary(rows), flush=True)


# ------------------------------------------------------------------------------------------- run
def find_script(root: Path, script: str) -> Path:
    """``script`` in the tree at ``root``: the path as given, else its name in one of BENCH_DIRS."""
    if (root / script).is_file():
        return root / script
    for folder in BENCH_DIRS:
        if (root / folder / Path(script).name).is_file():
            return root / folder / Path(script).name
    raise FileNotFoundError(f"{script}: not in {root} (nor under {', '.join(BENCH_DIRS)})")


def unpack(pack_path: Path) -> Tuple[Path, str]:
    """Extracts the packed revision into a new folder; returns it and its AB_BASE line."""
    base_root = Path(tempfile.mkdtemp(prefix="flashcore_ab_")) / "base"
    with tarfile.open(pack_path) as tgz:
        try:
            tgz.extractall(base_root, filter="data")
        except TypeError:  # Python without extraction filters
            tgz.extractall(base_root)
    return base_root, (base_root / "AB_BASE").read_text().strip()


def run(pack_path: Path, runs: int, bench_args: List[str], json_out: str, this_root: Path = ROOT,
        script: str = "bench_dense.py", profile: Optional[Profile] = None, base_root: Optional[Path] = None,
        log_dir: Optional[Path] = None) -> List[dict]:
    """Runs ``script`` of this tree and of the packed revision, alternating, each with its own JIT
    cache; returns ``compare``'s rows (and saves them with both sides' runs to ``json_out``)."""
    profile = profile or profile_for(script)
    # this tree keeps the JIT cache it was given (a build made before is reused); the base gets its own
    this_cache = os.environ.get("FLASHCORE_CACHE", os.path.join(tempfile.gettempdir(), "flashcore_ab_this"))
    caches = {"this": this_cache, "base": this_cache.rstrip("/") + "_ab_base"}
    if base_root is None:
        base_root, base_name = unpack(pack_path)
    else:
        base_name = (base_root / "AB_BASE").read_text().strip()
    work = Path(tempfile.mkdtemp(prefix="flashcore_ab_runs_"))
    log_dir = Path(log_dir) if log_dir else work
    log_dir.mkdir(parents=True, exist_ok=True)
    stem = Path(script).stem
    paths = {"this": find_script(this_root, script), "base": find_script(base_root, script)}
    print(f"base: {base_name}\n{stem}: this {paths['this'].relative_to(this_root)}, "
          f"base {paths['base'].relative_to(base_root)}", flush=True)
    outputs: Dict[str, List[str]] = {"this": [], "base": []}
    for i in range(runs):
        for side, root in (("this", this_root), ("base", base_root)):
            out = str(work / f"{stem}_{side}_{i}.json")
            log = log_dir / f"ab_{stem}_{side}_{i}.txt"
            env = dict(os.environ, FLASHCORE_CACHE=caches[side], PYTHONPATH=str(root))
            cmd = [sys.executable, str(paths[side]), *bench_args, "--json", out]
            print(f"run {i + 1}/{runs}: {side}", flush=True)
            with open(log, "w") as f:
                rc = subprocess.run(cmd, cwd=root, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
            if rc:
                tail = log.read_text().splitlines()[-15:]
                raise RuntimeError(f"{side}'s {paths[side].name} failed (rc {rc}); the end of {log}:\n"
                                   + "\n".join(tail))
            outputs[side].append(out)
    rows = compare(_rows(outputs["this"], profile.key), _rows(outputs["base"], profile.key), profile)
    if json_out:
        info = json.loads(Path(outputs["this"][0]).read_text())["info"]
        info["command"] = " ".join(["python3", "tools/ab_revision.py", "run", "--runs", str(runs), "--script",
                                    Path(script).name, "--"] + bench_args)
        info["base"] = base_name
        info["profile"] = profile._asdict()
        runs_json = {side: [json.loads(Path(p).read_text()) for p in ps] for side, ps in outputs.items()}
        Path(json_out).write_text(json.dumps({"info": info, "rows": rows, "runs": runs_json}, indent=1))
    return rows


def seeds(pack_path: Path, runs: int, out_dir: Path, this_root: Path = ROOT,
          benches: Sequence[Tuple[str, List[str]]] = SEEDS) -> int:
    """``run`` for each of ``benches`` (default: the seed points of bench_dense and bench_decode),
    over one unpacked revision; writes ``ab_<bench>.json`` and the runs' logs to ``out_dir``.
    Returns the number of benchmarks that failed (the others still run)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    base_root, _ = unpack(pack_path)
    failed = 0
    for script, bench_args in benches:
        profile = profile_for(script)
        try:
            rows = run(pack_path, runs, bench_args, str(out_dir / f"ab_{Path(script).stem}.json"), this_root, script,
                       profile, base_root=base_root, log_dir=out_dir)
        except (RuntimeError, FileNotFoundError) as exc:
            print(f"{script}: {exc}", flush=True)
            failed += 1
            continue
        _print(rows, profile, f"{script} {' '.join(bench_args)}: this tree against the base revision")
    return failed


def _profile_from(args, script: str) -> Profile:
    if args.key or args.metric:
        if not (args.key and args.metric):
            raise ValueError("--key and --metric go together")
        return Profile(tuple(args.key.split(",")), args.metric, not args.lower_is_better, args.baseline)
    return profile_for(script)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    p_pack = sub.add_parser("pack", help="pack a revision's package, kernels and benchmarks (needs git)")
    p_pack.add_argument("--base", default="HEAD")
    p_pack.add_argument("--out", default=str(DEFAULT_PACK))

    def add_pack_args(p):
        p.add_argument("--pack", default=str(DEFAULT_PACK), help="the packed revision (.tgz)")
        p.add_argument("--base", help="the revision to compare with: packed into --pack unless it holds it already "
                                      "(default: whatever --pack holds)")
        p.add_argument("--runs", type=int, default=2, help="runs of each side, alternating")

    def add_profile_args(p):
        p.add_argument("--key", help="comma-separated columns that name a point (scripts without a profile)")
        p.add_argument("--metric", help="the timed column of ours (scripts without a profile)")
        p.add_argument("--lower-is-better", action="store_true", help="--metric is a time")
        p.add_argument("--baseline", default="", help="a ratio column of ours to its baseline, shown beside")

    p_run = sub.add_parser("run", help="time one benchmark of this tree and of the packed revision (needs the GPU)")
    add_pack_args(p_run)
    p_run.add_argument("--script", default="bench_dense.py", help="the benchmark, by name or path")
    p_run.add_argument("--json", default="")
    p_run.add_argument("--logs", default="", help="folder for each run's output (default: a temporary one)")
    add_profile_args(p_run)
    p_run.add_argument("bench_args", nargs=argparse.REMAINDER, help="-- then the benchmark's arguments")
    p_seeds = sub.add_parser("seeds", help="A/B of the seed points of bench_dense and bench_decode (needs the GPU)")
    add_pack_args(p_seeds)
    p_seeds.add_argument("--out", required=True, help="folder for ab_<bench>.json and the runs' logs")
    p_cmp = sub.add_parser("compare", help="compare saved JSONs of one benchmark")
    p_cmp.add_argument("--script", default="bench_dense.py", help="the benchmark that wrote them")
    p_cmp.add_argument("--this", nargs="+", required=True)
    p_cmp.add_argument("--base", nargs="+", required=True)
    add_profile_args(p_cmp)
    args = parser.parse_args(argv)
    if args.what == "pack":
        print(f"packed {pack(args.base, Path(args.out))} into {args.out}")
        return 0
    if args.what == "compare":
        try:
            profile = _profile_from(args, args.script)
        except ValueError as exc:
            parser.error(str(exc))
        _print(compare(_rows(args.this, profile.key), _rows(args.base, profile.key), profile), profile,
               f"{Path(args.script).name} A/B: this tree against the base revision")
        return 0
    if args.runs < 1:
        parser.error("--runs: expected at least 1")
    ensure_pack(Path(args.pack), args.base)
    if args.what == "seeds":
        return 1 if seeds(Path(args.pack), args.runs, Path(args.out)) else 0
    try:
        profile = _profile_from(args, args.script)
    except ValueError as exc:
        parser.error(str(exc))
    bench_args = args.bench_args[1:] if args.bench_args[:1] == ["--"] else args.bench_args
    if "--json" in bench_args:
        parser.error("the benchmark's --json is written per run; give ab_revision.py's --json before --")
    rows = run(Path(args.pack), args.runs, bench_args, args.json, script=args.script, profile=profile,
               log_dir=Path(args.logs) if args.logs else None)
    _print(rows, profile, f"{Path(args.script).name} A/B: this tree against the base revision")
    return 0


if __name__ == "__main__":
    sys.exit(main())
