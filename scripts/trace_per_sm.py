"""Per-SM task times from a raw decode trace: is the spread of task times the SMs' own?

Reads the JSON of ``trace_decode.py --raw`` (plain or .xz) and prints, per batch, each SM's mean
task time (fastest and slowest ten, then all by SM id) and the spread of task times within an SM
against the spread of the SMs' means. Session 17 found, with 2048-token chunks and 8 KV heads,
on one H200, 24 SMs (pairs of neighbouring ids) whose tasks ran 13% faster than the rest: equal
tasks in one wave then end unevenly (benchmarks/results/h200/decode_waves_s17).

    python3 scripts/trace_per_sm.py trace_raw.json[.xz]
"""

from __future__ import annotations

import collections
import json
import lzma
import statistics
import sys
from typing import Dict, List


def per_sm_task_us(result: Dict) -> Dict[int, List[float]]:
    """Each SM's task durations (us) in one batch's raw records."""
    per: Dict[int, List[float]] = collections.defaultdict(list)
    for marks, (_, sm) in zip(result["raw_marks"], result["raw_sm"]):
        per[sm].append((marks[3] - marks[0]) / 1000.0)
    return per


def summarize(result: Dict) -> List[str]:
    per = per_sm_task_us(result)
    means = sorted((statistics.mean(v), sm, len(v)) for sm, v in per.items())
    within = [statistics.pstdev(v) for v in per.values() if len(v) > 1]
    return [
        f"B{result['B']} Hkv{result['Hkv']} chunk {result['chunk']}: {sum(map(len, per.values()))} tasks on {len(per)} SMs",
        "  per-SM mean task us (mean, SM, tasks), fastest 10: " + str([(round(a, 1), sm, n) for a, sm, n in means[:10]]),
        "  slowest 10: " + str([(round(a, 1), sm, n) for a, sm, n in means[-10:]]),
        f"  within-SM sd {statistics.mean(within) if within else 0.0:.1f} us, "
        f"between-SM sd of means {statistics.pstdev([a for a, _, _ in means]):.1f} us",
        "  by SM id: " + " ".join(f"{sm}:{statistics.mean(per[sm]):.0f}" for sm in sorted(per)),
    ]


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    path = sys.argv[1]
    with (lzma.open(path, "rt") if path.endswith(".xz") else open(path)) as f:
        data = json.load(f)
    for result in data["results"]:
        if "raw_marks" not in result:
            print(f"B{result['B']} Hkv{result['Hkv']}: no raw records (run trace_decode.py with --raw)")
            continue
        print("\n".join(summarize(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
