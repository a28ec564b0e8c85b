"""Shared by the benchmark scripts: GPU timing, ceilings, tables, JSON and plots.

Timing follows ../shared/BENCHMARKS.md: CUDA events around each call after warm-up (queued
behind a sleep kernel, so that they time the GPU and not the host), the median of the repeats,
and (for memory-bound work) a 256 MB buffer written between calls so that no call finds its
inputs in L2. ``time_interleaved`` times ours and the baselines of one point in alternating
rounds, so that a clock drift during the point is shared between them.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

_flush_buf: Optional[torch.Tensor] = None


def base_parser(doc: str, repeats: int, rounds: bool = False) -> argparse.ArgumentParser:
    """The options every benchmark has: --repeats, --json, --plot; and --rounds for those that
    time ours and the baselines side by side (``time_interleaved``)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=repeats, help="timed calls per point (median reported)")
    if rounds:
        parser.add_argument("--rounds", type=int, default=4,
                            help="alternating rounds of ours and the baselines that the repeats are spread "
                                 "over (1: each timed in one block)")
    parser.add_argument("--json", help="save every figure and the run's device and command here")
    parser.add_argument("--plot", help="save a PNG plot here")
    return parser


def require_cuda(script: str) -> Dict[str, str]:
    """Exits with a message unless a GPU is present; prints and returns the device facts."""
    if not torch.cuda.is_available():
        sys.exit(f"{script}: needs a CUDA GPU")
    info = device_info()
    print(f"{info['device']}  torch {info['torch']}")
    return info


def flush_l2() -> None:
    global _flush_buf
    if _flush_buf is None:
        _flush_buf = torch.empty(256 * 1024 * 1024, dtype=torch.uint8, device="cuda")
    _flush_buf.zero_()


def _event_times(fn: Callable[[], object], calls: int, flush: bool) -> List[float]:
    """GPU milliseconds of ``calls`` calls of ``fn``, one CUDA-event pair around each.

    The calls are queued behind a sleep kernel long enough for the host to enqueue them all,
    so each pair of events brackets the GPU work of one call and none of the host's (Python,
    checks, launch) time, for us and for the baselines alike."""
    torch.cuda.synchronize()
    host = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    per_call_s = time.perf_counter() - host
    if flush:
        flush_l2()
    pairs = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(calls)]
    torch.cuda.synchronize()
    # ~1.5 GHz: cycles for twice the host time of every call (capped at 0.5 s)
    torch.cuda._sleep(int(min(2.0 * calls * per_call_s, 0.5) * 1.5e9))
    for start, end in pairs:
        if flush:
            flush_l2()
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return [start.elapsed_time(end) for start, end in pairs]


def time_ms(fn: Callable[[], object], repeats: int = 20, warmup: int = 3, flush: bool = True) -> float:
    """Median milliseconds of ``fn`` on the current stream: GPU time only (see ``_event_times``)."""
    return time_interleaved({"fn": fn}, repeats=repeats, rounds=1, warmup=warmup, flush=flush)["fn"]


def time_interleaved(fns: Dict[str, Callable[[], object]], repeats: int = 20, rounds: int = 4, warmup: int = 3,
                     flush: bool = True) -> Dict[str, float]:
    """Median milliseconds of each function, timed in ``rounds`` alternating rounds.

    Each round times every function for ``ceil(repeats / rounds)`` calls in turn, so that a
    drift of the GPU's clocks over a point (a long kernel at the power limit slows down as it
    heats) falls on ours and on the baselines alike, instead of on whichever ran last."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    calls = -(-repeats // max(rounds, 1))
    samples: Dict[str, List[float]] = {name: [] for name in fns}
    for _ in range(max(rounds, 1)):
        for name, fn in fns.items():
            samples[name] += _event_times(fn, calls, flush)
    return {name: statistics.median(times) for name, times in samples.items()}


def wall_ms(fn: Callable[[], object], repeats: int = 20, warmup: int = 3) -> float:
    """Median host wall clock of ``fn`` until the GPU is done: what a serving step pays for
    host-bound work such as planning."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def copy_bandwidth_tbs(gib: float = 2.0) -> float:
    """Device-to-device copy, counted as bytes read + bytes written per second (TB/s)."""
    n = int(gib * 1024**3)
    src = torch.empty(n, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), repeats=10, flush=False)
    src = dst = None  # frees them (the copy closure holds the names)
    return 2 * n / (ms * 1e-3) / 1e12


def device_info() -> Dict[str, str]:
    return {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cuda": str(torch.version.cuda),
        "python": platform.python_version(),
        "command": " ".join([sys.executable.split("/")[-1]] + sys.argv),
    }


def print_table(rows: List[Dict], columns: Sequence[str], title: str = "") -> None:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3f}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    if title:
        print(title)
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths)))
    sys.stdout.flush()


def save_json(path: str, info: Dict, rows: List[Dict]) -> None:
    with open(path, "w") as f:
        json.dump({"info": info, "rows": rows}, f, indent=1)


def bar_plot(path: str, labels: List[str], series: Dict[str, List[float]], ylabel: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(8, 0.7 * len(labels)), 4.5))
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        xs = [x + i * width for x in range(len(labels))]
        ax.bar(xs, [v if v is not None else 0 for v in values], width, label=name)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(labels))])
    ax.set_xticklabels(labels, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def timed_series(rows: List[Dict], names: Sequence[Tuple[str, str]]) -> Dict[str, List[Optional[float]]]:
    """Plot series {label: each row's ``<name>_ms``} for the (name, label) pairs that some row
    timed (a baseline that could not run on this box has no column, and no series)."""
    return {label: [r.get(f"{name}_ms") for r in rows] for name, label in names
            if any(f"{name}_ms" in r for r in rows)}


def report(args, info: Dict, rows: List[Dict], columns: Sequence[str], title: str,
           labels: List[str], series: Dict[str, List[float]], ylabel: str) -> None:
    """The end of every benchmark: the table, then --json and --plot when asked for."""
    print_table(rows, [c for c in columns if any(c in r for r in rows)], title="\n" + title)
    if args.json:
        save_json(args.json, info, rows)
    if args.plot:
        bar_plot(args.plot, labels, series, ylabel, f"{title} on {info['device']}")


# Largest |ours - baseline| a benchmark accepts before it times anything: attention outputs are
# convex combinations of V rows (|o| <= max |v|, about 4 for the benchmarks' unit normals), so
# these are a few units in the last place of the dtype at that magnitude.
AGREE_ATOL = {torch.float16: 8e-3, torch.bfloat16: 6e-2, torch.float32: 1e-4}


def require_agreement(what: str, ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """The max |ours - theirs|; exits the benchmark (status 2) when it is over ``AGREE_ATOL`` or
    not finite, so that a wrong result is never timed."""
    diff = (ours.float() - theirs.float()).abs().max().item() if ours.numel() else 0.0
    if not diff <= AGREE_ATOL[ours.dtype]:
        raise SystemExit(f"{what}: max |ours - reference| = {diff:.3g} > {AGREE_ATOL[ours.dtype]} ({ours.dtype}); "
                         "not timing a wrong result")
    return diff
