"""SGLang serving under faults: ``flashcore_sparse`` and a built-in backend (``triton`` by default)
through the same scenarios, a fresh server per (scenario, backend), every request's fate counted.

Scenarios (``--scenarios``, all by default):

* ``retract``: a KV pool of ``--retract-tokens`` tokens for 48 long requests at once, so that
  SGLang retracts and re-queues some; every request must finish, and the greedy ids are compared
  with the other backend's under the same pool.
* ``abort``: 64 streaming requests, every other one closed by the client after a few tokens; the
  rest must finish, the server must stay healthy, and the check prompts then give the other
  backend's greedy ids.
* ``chunked``: two 64K-token prompts (sharing 48K tokens) with ``--chunked-prefill-size 4096`` at
  each page size of ``--page-sizes``: greedy ids compared.
* ``evict``: a small pool and eight 3K-token system prompts, each behind eight requests, sent
  interleaved, so that the radix cache evicts prefixes while others are in use: greedy ids compared.
* ``load``: 1,000 requests at concurrency 256, twice; every request must finish, and the GPU
  memory in use (nvidia-smi) must not grow from the first run to the second.

Greedy comparisons report, as ``bench_serving.py --check`` does, where the ids diverge and the
reference's top-2 log-probability gap there (dummy weights make near-ties). Exit 1 when a request
that was not aborted is lost, a server dies, or memory grows by more than ``--max-growth-mib``.

    python3 benchmarks/serve_faults.py --backends flashcore_sparse,triton --json faults.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_serving import (Request, Server, Workload, _payload, add_server_args, check_prompts,  # noqa: E402
                           compare_greedy, greedy_outputs, random_ids, run_workload, use_model_vocab)

SCENARIOS = ("retract", "abort", "chunked", "evict", "load")


def retract_prompts(seed: int, count: int = 48, length: int = 1500) -> List[List[int]]:
    rng = random.Random(seed)
    return [random_ids(rng, length + rng.randint(0, 300)) for _ in range(count)]


def chunked_prompts(seed: int, length: int = 65536, shared: int = 49152) -> List[List[int]]:
    rng = random.Random(seed)
    prefix = random_ids(rng, shared)
    return [prefix + random_ids(rng, length - shared) for _ in range(2)]


def evict_prompts(seed: int, systems: int = 8, per_system: int = 8, system_tokens: int = 3000) -> List[List[int]]:
    """``systems`` system prompts, each behind ``per_system`` requests, interleaved (system 0's
    first request, system 1's first, ...), so that the cache holds several at once."""
    rng = random.Random(seed)
    heads = [random_ids(rng, system_tokens) for _ in range(systems)]
    return [heads[s] + random_ids(rng, rng.randint(16, 128)) for _ in range(per_system) for s in range(systems)]


def load_workload(seed: int, requests: int = 1000, concurrency: int = 256) -> Workload:
    rng = random.Random(seed)
    reqs = [Request(random_ids(rng, rng.randint(100, 1000)), 64) for _ in range(requests)]
    return Workload("load", reqs, concurrency)


async def _abort_some(url: str, prompts: List[List[int]], keep_every: int = 2, abort_after: int = 8) -> Dict[str, int]:
    """Streams every prompt; the client closes every ``keep_every``-th-but-one stream after
    ``abort_after`` tokens. Returns how many finished, were aborted, and failed otherwise."""
    import aiohttp

    counts = {"finished": 0, "aborted": 0, "failed": 0}

    async def one(i, client, ids):
        abort = i % keep_every != 0
        try:
            async with client.post(url + "/generate", json=_payload(ids, 200, True)) as resp:
                if resp.status != 200:
                    counts["failed"] += 1
                    return
                seen = 0
                async for raw in resp.content:
                    line = raw.decode().strip()
                    if not line.startswith("data:") or line == "data: [DONE]":
                        continue
                    seen = int(json.loads(line[5:]).get("meta_info", {}).get("completion_tokens", seen))
                    if abort and seen >= abort_after:
                        counts["aborted"] += 1
                        return  # leaving the block closes the connection mid-stream
                counts["finished" if seen == 200 else "failed"] += 1
        except Exception:  # noqa: BLE001 - counted
            counts["failed"] += 1

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1800)) as client:
        await asyncio.gather(*(one(i, client, p) for i, p in enumerate(prompts)))
    return counts


def gpu_memory_mib() -> Optional[int]:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30)
        return int(out.stdout.split()[0])
    except Exception:  # noqa: BLE001 - no nvidia-smi: no reading
        return None


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=10) as resp:
            return resp.status == 200
    except Exception:  # noqa: BLE001
        return False


def scenario_server_args(name: str, args, page: int = 1) -> List[str]:
    if name == "retract":
        return ["--max-total-tokens", str(args.retract_tokens)]
    if name == "evict":
        return ["--max-total-tokens", str(args.evict_tokens)]
    if name == "chunked":
        return ["--chunked-prefill-size", "4096", "--context-length", "70000", "--page-size", str(page)]
    return []


def run_scenario(name: str, backend: str, args, log_dir: Path, page: int = 1) -> Dict:
    """One scenario on one backend's fresh server: its counts, greedy ids and readings."""
    server_args = argparse.Namespace(**vars(args))
    server_args.server_arg = args.server_arg + scenario_server_args(name, args, page)
    if name == "chunked":
        server_args.page_size = page
    result: Dict = {}
    with Server(backend, server_args, log_dir, log_name=f"{name}_p{page}_{backend}") as server:
        if name == "retract":
            result["greedy"] = asyncio.run(greedy_outputs(server.url, retract_prompts(args.seed), 64))
        elif name == "abort":
            result["counts"] = asyncio.run(_abort_some(server.url, retract_prompts(args.seed + 1, 64, 800)))
            result["healthy_after"] = healthy(server.url)
            result["greedy"] = asyncio.run(greedy_outputs(server.url, check_prompts(args.seed + 2), 16))
        elif name == "chunked":
            result["greedy"] = asyncio.run(greedy_outputs(server.url, chunked_prompts(args.seed + 3), 16))
        elif name == "evict":
            result["greedy"] = asyncio.run(greedy_outputs(server.url, evict_prompts(args.seed + 4), 16))
        elif name == "load":
            runs = []
            for i in range(2):
                m = asyncio.run(run_workload(server.url, load_workload(args.seed + 5 + i)))
                runs.append({"failed": m["failed"], "requests": m["requests"], "gpu_mib": gpu_memory_mib()})
            result["runs"] = runs
        result["healthy_at_end"] = healthy(server.url)
    return result


def judge(results: Dict, backends: List[str], max_growth_mib: int) -> List[str]:
    """What makes the run fail: lost requests, dead servers, memory growth, missing results."""
    problems = []
    for key, by_backend in results.items():
        for backend, r in by_backend.items():
            if "error" in r:
                problems.append(f"{key}/{backend}: {r['error'][:200]}")
                continue
            if not r.get("healthy_at_end", False):
                problems.append(f"{key}/{backend}: server not healthy at the end")
            counts = r.get("counts")
            if counts and counts["failed"]:
                problems.append(f"{key}/{backend}: {counts['failed']} requests lost")
            for run in r.get("runs", []):
                if run["failed"]:
                    problems.append(f"{key}/{backend}: {run['failed']} of {run['requests']} requests failed")
            mib = [run["gpu_mib"] for run in r.get("runs", []) if run["gpu_mib"] is not None]
            if len(mib) == 2 and mib[1] - mib[0] > max_growth_mib:
                problems.append(f"{key}/{backend}: GPU memory grew {mib[1] - mib[0]} MiB between runs")
    return problems


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_server_args(p, port=30031, max_running_requests=256)
    p.add_argument("--scenarios", default=",".join(SCENARIOS))
    p.add_argument("--page-sizes", default="1,16,64", help="the chunked scenario's page sizes")
    p.add_argument("--retract-tokens", type=int, default=20000, help="the retract scenario's --max-total-tokens")
    p.add_argument("--evict-tokens", type=int, default=16384, help="the evict scenario's --max-total-tokens")
    p.add_argument("--max-growth-mib", type=int, default=256)
    args = p.parse_args(argv)
    unknown = set(args.scenarios.split(",")) - set(SCENARIOS)
    if unknown:
        p.error(f"--scenarios: unknown {sorted(unknown)}; choose from {', '.join(SCENARIOS)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    use_model_vocab(args)
    backends = args.backends.split(",")
    log_dir = Path(args.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    results: Dict[str, Dict[str, Dict]] = {}
    for name in args.scenarios.split(","):
        pages = [int(x) for x in args.page_sizes.split(",")] if name == "chunked" else [args.page_size]
        for page in pages:
            key = f"{name}_p{page}" if name == "chunked" else name
            results[key] = {}
            for backend in backends:
                try:
                    results[key][backend] = run_scenario(name, backend, args, log_dir, page)
                except Exception as e:  # noqa: BLE001 - a dead server is a finding, the run goes on
                    results[key][backend] = {"error": str(e)[-2000:]}
                print(f"[{key}] {backend}: " + json.dumps({k: v for k, v in results[key][backend].items()
                                                          if k != "greedy"})[:400], flush=True)
            ref, ours = results[key].get(backends[-1], {}), results[key].get(backends[0], {})
            if "greedy" in ref and "greedy" in ours:
                cmp = compare_greedy({"outputs": ref["greedy"]}, {"outputs": ours["greedy"]})
                results[key]["greedy_vs_" + backends[-1]] = {"equal": cmp["equal"], "total": cmp["total"],
                                                             "rows": cmp["rows"]}
                print(f"[{key}] greedy ids equal to {backends[-1]}'s: {cmp['equal']}/{cmp['total']}", flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
    problems = judge({k: {b: r for b, r in v.items() if b in backends} for k, v in results.items()}, backends,
                     args.max_growth_mib)
    for line in problems:
        print("PROBLEM", line, flush=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
