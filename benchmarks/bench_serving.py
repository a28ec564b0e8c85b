"""SGLang serving, side by side: ``flashcore_sparse`` against SGLang's built-in backends.

For each backend in ``--backends`` this starts ``python -m sglang.launch_server`` with the same
settings (a model config from ``configs/`` with dummy weights, CUDA graphs and the radix cache on,
token-id requests), then:

* ``--check``: greedy token ids for a fixed prompt set, many prompts sharing a long system prompt,
  sent together; the ids are compared across backends, and at each divergence the reference
  backend's top-2 log-probability gap shows whether it was a near-tie (dummy weights make many);
* workloads, each a stream of ``/generate`` requests with ``ignore_eos`` at a fixed concurrency:
  ``shared`` (one long system prompt + short user turns), ``random`` (no sharing, random lengths),
  ``long`` (a few 64K-token contexts). Reported: output tokens/s, mean and p50/p99 inter-token
  latency, time to first token; and ours over each other backend.

Order matters on a fresh machine: there the first server started reads 12-14% slower on the
shared workload than the same server started again (H200: 4710 vs 5515 tokens/s, TTFT
625 vs 374 ms), even after the per-server warm-up (``--warmup-requests``). ``--prime`` first starts
the first backend's server once, unmeasured, so that every measured server finds a warm box.

Usage (on the GPU box; see tools/box_serving.sh)::

    python3 benchmarks/bench_serving.py --backends flashcore_sparse,triton --check \\
        --workloads shared,random,long --json out.json --plot out.png
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parent.parent
OURS = "flashcore_sparse"
LLAMA3_TOKEN_RANGE = (1000, 120000)  # ordinary vocabulary ids of a Llama-3 tokenizer
_token_range = LLAMA3_TOKEN_RANGE  # the prompts' ids: use_model_vocab narrows it to the served model's


# ---------------------------------------------------------------- workloads
@dataclass
class Request:
    input_ids: List[int]
    max_new_tokens: int


@dataclass
class Workload:
    name: str
    requests: List[Request]
    concurrency: int
    description: str = ""


def random_ids(rng: random.Random, n: int) -> List[int]:
    return [rng.randrange(*_token_range) for _ in range(n)]


def model_config(args) -> Dict:
    """The served model's config.json (``--model-path`` or ``configs/<--config>``), {} if none."""
    path = Path(args.model_path or ROOT / "configs" / args.config) / "config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def use_model_vocab(args) -> Tuple[int, int]:
    """Keeps the prompts' token ids inside the served model's vocabulary: the tiny configs have
    4096 ids, and an id past the embedding table stops the server (a device-side assert). Returns
    the id range the prompts are drawn from."""
    global _token_range
    vocab = model_config(args).get("vocab_size")
    high = min(LLAMA3_TOKEN_RANGE[1], int(vocab)) if vocab else LLAMA3_TOKEN_RANGE[1]
    _token_range = (min(LLAMA3_TOKEN_RANGE[0], high // 4), high)
    return _token_range


def shared_prompt_workload(seed: int, system_tokens: int, num_requests: int, user_tokens=(32, 256),
                           output_tokens: int = 128, concurrency: int = 64) -> Workload:
    """(a) one system prompt of ``system_tokens`` + a short user turn per request."""
    rng = random.Random(seed)
    system = random_ids(rng, system_tokens)
    reqs = [Request(system + random_ids(rng, rng.randint(*user_tokens)), output_tokens) for _ in range(num_requests)]
    return Workload("shared", reqs, concurrency, f"{system_tokens}-token system prompt + {user_tokens[0]}-"
                    f"{user_tokens[1]} user tokens, {num_requests} requests, {output_tokens} out, c={concurrency}")


def random_workload(seed: int, num_requests: int, input_tokens=(128, 4096), output_tokens=(64, 256),
                    concurrency: int = 64) -> Workload:
    """(b) no sharing: independent random prompts of random lengths."""
    rng = random.Random(seed)
    reqs = [Request(random_ids(rng, rng.randint(*input_tokens)), rng.randint(*output_tokens))
            for _ in range(num_requests)]
    return Workload("random", reqs, concurrency, f"inputs {input_tokens[0]}-{input_tokens[1]}, outputs "
                    f"{output_tokens[0]}-{output_tokens[1]}, {num_requests} requests, c={concurrency}")


def long_context_workload(seed: int, context_tokens: int, num_requests: int, output_tokens: int = 256) -> Workload:
    """(c) a few long, unshared contexts decoded together."""
    rng = random.Random(seed)
    reqs = [Request(random_ids(rng, context_tokens), output_tokens) for _ in range(num_requests)]
    return Workload("long", reqs, num_requests, f"{num_requests} x {context_tokens}-token contexts, "
                    f"{output_tokens} out, c={num_requests}")


CHECK_SEED_OFFSET = 1000  # the check prompts' seed, apart from every workload's (seed + 0..102)


def check_prompts(seed: int, system_tokens: int = 2000, shared: int = 16, unshared: int = 8) -> List[List[int]]:
    """The greedy-comparison prompt set: ``shared`` prompts behind one system prompt, and
    ``unshared`` independent ones of assorted lengths (1 to 300 tokens)."""
    rng = random.Random(seed)
    system = random_ids(rng, system_tokens)
    prompts = [system + random_ids(rng, rng.randint(8, 80)) for _ in range(shared)]
    prompts += [random_ids(rng, n) for n in [1, 2, 7, 33, 64, 129, 250, 300][:unshared]]
    return prompts


# ------------------------------------------------------------------ metrics
@dataclass
class RequestResult:
    ok: bool
    output_tokens: int = 0
    ttft_s: float = 0.0
    itl_s: List[float] = field(default_factory=list)
    error: str = ""


def summarize(results: Sequence[RequestResult], wall_s: float) -> Dict[str, float]:
    """Output tokens/s over the whole run, inter-token latency and time to first token (ms)."""
    good = [r for r in results if r.ok]
    itl = sorted(x for r in good for x in r.itl_s)
    out_tokens = sum(r.output_tokens for r in good)

    def pct(values, q):
        return 1e3 * values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")

    return {
        "requests": len(results), "failed": len(results) - len(good), "output_tokens": out_tokens,
        "wall_s": wall_s, "out_tok_per_s": out_tokens / wall_s if wall_s > 0 else float("nan"),
        "itl_mean_ms": 1e3 * statistics.fmean(itl) if itl else float("nan"),
        "itl_p50_ms": pct(itl, 0.5), "itl_p99_ms": pct(itl, 0.99),
        "ttft_mean_ms": 1e3 * statistics.fmean(r.ttft_s for r in good) if good else float("nan"),
    }


def first_divergence(a: Sequence[int], b: Sequence[int]) -> Optional[int]:
    """Index of the first differing token (or the shorter length when one is a prefix), else None."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def compare_greedy(ref: Dict, other: Dict) -> Dict:
    """Per prompt: equal or where it diverges, with the reference's top-2 logprob gap there."""
    rows = []
    for i, (r, o) in enumerate(zip(ref["outputs"], other["outputs"])):
        at = first_divergence(r["ids"], o["ids"])
        gap = None
        if at is not None and at < len(r.get("top2", [])) and len(r["top2"][at]) == 2:
            gap = r["top2"][at][0] - r["top2"][at][1]
        rows.append({"prompt": i, "prompt_len": r["prompt_len"], "equal": at is None, "diverges_at": at,
                     "ref_top2_gap": gap})
    equal = sum(x["equal"] for x in rows)
    return {"equal": equal, "total": len(rows), "rows": rows}


# --------------------------------------------------------------- the server
_PREFILL_LINE = re.compile(r"Prefill batch.*?#new-seq: (\d+), #new-token: (\d+), #cached-token: (\d+)")


def prefill_summary(log_text: str) -> Optional[Dict[str, float]]:
    """SGLang's "Prefill batch" log lines (``--server-log-level info``) summed: how many prefill
    batches ran, their new sequences and new / cached tokens. None when the log has none (the
    default warning level prints none)."""
    batches = [tuple(int(x) for x in m.groups()) for m in _PREFILL_LINE.finditer(log_text)]
    if not batches:
        return None
    seqs, new, cached = (sum(b[i] for b in batches) for i in range(3))
    return {"batches": len(batches), "new_seqs": seqs, "new_tokens": new, "cached_tokens": cached,
            "new_tokens_per_batch": new / len(batches)}


class Server:
    """``python -m sglang.launch_server`` in its own process group, stopped on exit."""

    def __init__(self, backend: str, args, log_dir: Path, log_name: str = ""):
        self.backend = backend
        self.port = args.port
        self.url = f"http://127.0.0.1:{args.port}"
        model = args.model_path or str(ROOT / "configs" / args.config)
        self.cmd = [sys.executable, "-m", "sglang.launch_server", "--model-path", model,
                    "--attention-backend", backend, "--port", str(args.port), "--random-seed", str(args.seed),
                    "--sampling-backend", "pytorch", "--mem-fraction-static", str(args.mem_fraction),
                    "--cuda-graph-max-bs", str(args.cuda_graph_max_bs),
                    "--max-running-requests", str(args.max_running_requests),
                    "--page-size", str(args.page_size), "--log-level", args.server_log_level]
        if args.model_path is None:
            self.cmd += ["--load-format", "dummy", "--skip-tokenizer-init"]
        self.cmd += args.server_arg
        self.log_path = log_dir / f"server_{log_name or backend}.log"
        self.proc: Optional[subprocess.Popen] = None
        self.startup_s = 0.0

    def log_since(self, offset: int) -> str:
        """The server log from byte ``offset`` on (what a workload made it print)."""
        self._log.flush()
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")

    def log_size(self) -> int:
        self._log.flush()
        return self.log_path.stat().st_size

    def __enter__(self) -> "Server":
        import urllib.request

        if port_in_use(self.port):
            # a server left running (by a run killed before it could stop its own) would answer
            # /health at once and be measured under this backend's name
            raise RuntimeError(f"[{self.backend}] port {self.port} already in use: stop that server first")
        print(f"[{self.backend}] starting: {' '.join(self.cmd)}", flush=True)
        self._log = open(self.log_path, "w")
        start = time.time()
        # unbuffered: the log's lines land while a workload runs, so each workload reads its own
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
                                     env=env)
        deadline = start + 900
        while time.time() < deadline:
            if self.proc.poll() is not None:
                self._log.flush()
                tail = self.log_path.read_text()[-4000:]
                raise RuntimeError(f"[{self.backend}] server exited with {self.proc.returncode}:\n{tail}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as resp:
                    if resp.status == 200:
                        break
            except Exception:
                pass
            time.sleep(2)
        else:
            self.__exit__(None, None, None)
            raise TimeoutError(f"[{self.backend}] server not healthy after 900 s")
        self.startup_s = time.time() - start
        print(f"[{self.backend}] ready in {self.startup_s:.0f} s", flush=True)
        return self

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)
        self._log.close()
        time.sleep(3)  # let the GPU memory go before the next server


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((host, port)) == 0


def _stop_on_sigterm() -> None:
    """SIGTERM (``timeout``, a job killer) unwinds like Ctrl-C, so that the running Server's
    ``__exit__`` stops its server instead of leaving it on the port."""
    def raise_interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, raise_interrupt)


# ------------------------------------------------------------------ clients
def _payload(input_ids, max_new_tokens, stream, logprobs=False):
    body = {"input_ids": input_ids, "stream": stream,
            "sampling_params": {"temperature": 0.0, "max_new_tokens": max_new_tokens, "ignore_eos": True}}
    if logprobs:
        body.update(return_logprob=True, top_logprobs_num=2, logprob_start_len=-1)
    return body


async def _stream_one(client, url: str, req: Request) -> RequestResult:
    start = time.perf_counter()
    last, seen, res = None, 0, RequestResult(ok=False)
    try:
        async with client.post(url + "/generate", json=_payload(req.input_ids, req.max_new_tokens, True)) as resp:
            if resp.status != 200:
                return RequestResult(ok=False, error=f"HTTP {resp.status}: {(await resp.text())[:300]}")
            async for raw in resp.content:
                line = raw.decode().strip()
                if not line.startswith("data:") or line == "data: [DONE]":
                    continue
                data = json.loads(line[5:])
                now = time.perf_counter()
                done = int(data.get("meta_info", {}).get("completion_tokens", seen))
                if done > seen:
                    if last is None:
                        res.ttft_s = now - start
                    else:  # a chunk of k tokens after a gap: k intervals of gap / k
                        res.itl_s.extend([(now - last) / (done - seen)] * (done - seen))
                    last, seen = now, done
        res.ok, res.output_tokens = seen > 0, seen
    except Exception as e:  # a failed request is counted, not fatal
        res.error = repr(e)
    return res


async def run_workload(url: str, workload: Workload) -> Dict[str, float]:
    import aiohttp

    sem = asyncio.Semaphore(workload.concurrency)
    timeout = aiohttp.ClientTimeout(total=3600)
    async with aiohttp.ClientSession(timeout=timeout) as client:
        async def bounded(req):
            async with sem:
                return await _stream_one(client, url, req)

        start = time.perf_counter()
        results = await asyncio.gather(*(bounded(r) for r in workload.requests))
        wall = time.perf_counter() - start
    errors = [r.error for r in results if not r.ok]
    if errors:
        print(f"  {len(errors)} failed, first: {errors[0]}", flush=True)
    return summarize(results, wall)


async def greedy_outputs(url: str, prompts: List[List[int]], max_new_tokens: int) -> List[Dict]:
    import aiohttp

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1800)) as client:
        # the system prompt first, alone, so that the rest find it in the radix cache
        async def one(ids):
            async with client.post(url + "/generate", json=_payload(ids, max_new_tokens, False, True)) as resp:
                body = await resp.json()
                if resp.status != 200:
                    raise RuntimeError(f"HTTP {resp.status}: {body}")
                return body

        first = await one(prompts[0])
        rest = await asyncio.gather(*(one(p) for p in prompts[1:]))
    outputs = []
    for prompt, body in zip(prompts, [first, *rest]):
        top = body["meta_info"].get("output_top_logprobs") or []
        top2 = [[float(t[0]) for t in step[:2]] for step in top if step]
        outputs.append({"prompt_len": len(prompt), "ids": list(body["output_ids"]), "top2": top2})
    return outputs


# --------------------------------------------------------------------- main
def add_server_args(p: argparse.ArgumentParser, *, config: str = "llama3_8b", port: int = 30011,
                    mem_fraction: float = 0.8, cuda_graph_max_bs: int = 128, max_running_requests: int = 128) -> None:
    """The options ``Server`` reads (the backends, the model, the launch settings, the logs), with
    each script's defaults; shared by the serving scripts."""
    p.add_argument("--backends", default=f"{OURS},triton", help="comma-separated; the first is 'ours'")
    p.add_argument("--config", default=config, help="a model config in configs/ (dummy weights)")
    p.add_argument("--model-path", default=None, help="a real model instead of --config")
    p.add_argument("--port", type=int, default=port)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--page-size", type=int, default=1)
    p.add_argument("--mem-fraction", type=float, default=mem_fraction)
    p.add_argument("--cuda-graph-max-bs", type=int, default=cuda_graph_max_bs)
    p.add_argument("--max-running-requests", type=int, default=max_running_requests)
    p.add_argument("--server-arg", action="append", default=[], help="extra launch_server argument (repeat)")
    p.add_argument("--server-log-level", default="warning",
                   help="the server's --log-level; at info each workload also reports SGLang's prefill batches")
    p.add_argument("--log-dir", default=".", help="server logs go here")
    p.add_argument("--json")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_server_args(p)
    p.add_argument("--workloads", default="shared,random,long", help="shared,random,long or empty")
    p.add_argument("--check", action="store_true", help="compare greedy token ids across backends")
    p.add_argument("--check-new-tokens", type=int, default=32)
    p.add_argument("--system-tokens", type=int, default=8192, help="workload (a)'s shared system prompt")
    p.add_argument("--shared-requests", type=int, default=128)
    p.add_argument("--random-requests", type=int, default=128)
    p.add_argument("--long-context", type=int, default=65536)
    p.add_argument("--long-requests", type=int, default=4)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--prime", action="store_true",
                   help="start the first backend's server once, unmeasured, before the measured ones")
    p.add_argument("--warmup-requests", type=int, default=16,
                   help="requests of an untimed warm-up per workload on every server (0: none)")
    p.add_argument("--plot")
    p.add_argument("--merge", nargs="+", metavar="JSON",
                   help="no run: combine the --json files of runs made one backend at a time (the same warm machine)")
    return p.parse_args(argv)


def build_workloads(args) -> List[Workload]:
    makers = {
        "shared": lambda: shared_prompt_workload(args.seed, args.system_tokens, args.shared_requests,
                                                 concurrency=args.concurrency),
        "random": lambda: random_workload(args.seed + 1, args.random_requests, concurrency=args.concurrency),
        "long": lambda: long_context_workload(args.seed + 2, args.long_context, args.long_requests),
    }
    names = [w for w in args.workloads.split(",") if w]
    unknown = [w for w in names if w not in makers]
    if unknown:
        raise SystemExit(f"--workloads: unknown {unknown}; choose from {sorted(makers)}")
    return [makers[w]() for w in names]


def warmup_workloads(args, requests: Optional[int] = None) -> List[Workload]:
    """Small, untimed versions of the chosen workloads, run on every server before it is measured,
    so that a server's first requests (new shapes, first captures) are not timed. They do not make
    up for a fresh machine's first server, which stays slower (see ``--prime``). Other seeds: the
    warm-up leaves no measured prompt in the radix cache."""
    n = args.warmup_requests if requests is None else requests
    if n <= 0:
        return []
    makers = {
        "shared": lambda: shared_prompt_workload(args.seed + 100, args.system_tokens, n, concurrency=n),
        "random": lambda: random_workload(args.seed + 101, n, concurrency=n),
        "long": lambda: long_context_workload(args.seed + 102, min(args.long_context, 8192), 1, output_tokens=32),
    }
    return [makers[w]() for w in args.workloads.split(",") if w in makers]


def ratio_rows(results: Dict[str, Dict[str, Dict]], backends: List[str]) -> List[Dict]:
    """One row per workload: each backend's tokens/s and ITL, and ours over each other backend."""
    ours, rows = backends[0], []
    workloads = [w for w in next(iter(results.values()))] if results else []
    for w in workloads:
        row = {"workload": w}
        for b in backends:
            m = results.get(b, {}).get(w)
            if m:
                row[f"{b}_tok_s"] = m["out_tok_per_s"]
                row[f"{b}_itl_ms"] = m["itl_mean_ms"]
        for b in backends[1:]:
            if row.get(f"{ours}_tok_s") and row.get(f"{b}_tok_s"):
                row[f"ours_over_{b}"] = row[f"{ours}_tok_s"] / row[f"{b}_tok_s"]
        rows.append(row)
    return rows


def write_report(args, backends, workloads, results, greedy, startup, quiet: bool = False,
                 run_info: Optional[Dict] = None) -> None:
    """The table, the greedy comparison, --json and --plot (``quiet``: only --json).
    ``run_info``: where the runs were made (``--merge``), instead of this process's versions."""
    from bench_util import bar_plot, print_table

    ok_results = {b: {w: m for w, m in r.items() if w != "error"} for b, r in results.items()}
    rows = ratio_rows(ok_results, backends)
    cols = ["workload"] + [f"{b}_tok_s" for b in backends] + [f"{b}_itl_ms" for b in backends] + \
        [f"ours_over_{b}" for b in backends[1:]]
    if not quiet:
        print_table(rows, [c for c in cols if any(c in r for r in rows)],
                title="\nSGLang serving, output tokens/s (higher is better) and mean inter-token latency")
    comparison = {}
    if args.check and len(greedy) > 1:
        ref = backends[1] if backends[1] in greedy else next(iter(greedy))
        for b, outs in greedy.items():
            if b != ref:
                comparison[b] = compare_greedy({"outputs": greedy[ref]}, {"outputs": outs})
                c = comparison[b]
                if quiet:
                    continue
                print(f"greedy ids, {b} vs {ref}: {c['equal']}/{c['total']} prompts identical", flush=True)
                for r in c["rows"]:
                    if not r["equal"]:
                        print(f"  prompt {r['prompt']} ({r['prompt_len']} tokens) diverges at output token "
                              f"{r['diverges_at']}; {ref}'s top-2 logprob gap there: {r['ref_top2_gap']}")
    if args.json:
        import platform

        info = {"command": " ".join(["python3"] + [os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:]),
                "python": platform.python_version(), "workloads": {w.name: w.description for w in workloads},
                "startup_s": startup}
        if run_info is not None:
            info.update(run_info)
        else:
            try:
                import sglang
                import torch

                info.update(sglang=sglang.__version__, torch=torch.__version__,
                            device=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")
            except Exception:
                pass
        with open(args.json, "w") as f:
            json.dump({"info": info, "rows": rows, "results": results, "greedy": greedy,
                       "comparison": comparison}, f, indent=1)
    if args.plot and rows and not quiet:
        bar_plot(args.plot, [r["workload"] for r in rows],
                 {b: [r.get(f"{b}_tok_s") for r in rows] for b in backends}, "output tokens/s",
                 "SGLang serving, Llama-3-8B shape, dummy weights")


def merge_runs(args) -> int:
    """Combines per-backend runs (each its own --json) into one report, greedy comparison included."""
    results, greedy, startup, workloads = {}, {}, {}, {}
    run_info: Dict = {"merged_runs": []}
    for path in args.merge:
        with open(path) as f:
            run = json.load(f)
        for key in ("device", "torch", "sglang", "python"):  # where the runs were made
            run_info.setdefault(key, run["info"].get(key))
        run_info["merged_runs"].append(run["info"].get("command"))
        results.update(run["results"])
        greedy.update(run["greedy"])
        startup.update(run["info"].get("startup_s", {}))
        workloads.update(run["info"].get("workloads", {}))
    backends = [b for b in args.backends.split(",") if b in results]
    args.check = bool(greedy)
    described = [Workload(name, [], 1, desc) for name, desc in workloads.items()]
    write_report(args, backends, described, results, greedy, startup, run_info=run_info)
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    if args.merge:
        return merge_runs(args)
    _stop_on_sigterm()

    backends = [b for b in args.backends.split(",") if b]
    use_model_vocab(args)
    workloads = build_workloads(args)
    log_dir = Path(args.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    # a seed of their own: the check prompts share no system prompt with the timed workloads, so
    # they leave nothing in the radix cache that a timed run could reuse
    prompts = check_prompts(args.seed + CHECK_SEED_OFFSET)
    results: Dict[str, Dict[str, Dict]] = {}
    greedy: Dict[str, List[Dict]] = {}
    startup: Dict[str, float] = {}
    if args.prime and backends:
        with Server(backends[0], args, log_dir, log_name="prime") as server:
            for w in warmup_workloads(args, requests=max(args.warmup_requests, 16)):
                asyncio.run(run_workload(server.url, w))
        print(f"[{backends[0]}] primed the machine (not measured)", flush=True)
    for backend in backends:
        try:
            with Server(backend, args, log_dir) as server:
                startup[backend] = server.startup_s
                for w in warmup_workloads(args):
                    asyncio.run(run_workload(server.url, w))
                if args.check:
                    greedy[backend] = asyncio.run(greedy_outputs(server.url, prompts, args.check_new_tokens))
                    print(f"[{backend}] greedy ids for {len(prompts)} prompts", flush=True)
                results[backend] = {}
                for w in workloads:
                    log_start = server.log_size()
                    m = asyncio.run(run_workload(server.url, w))
                    prefill = prefill_summary(server.log_since(log_start))
                    if prefill is not None:
                        m["prefill"] = prefill
                    results[backend][w.name] = m
                    if args.json:
                        write_report(args, backends, workloads, results, greedy, startup, quiet=True)
                    print(f"[{backend}] {w.name}: {m['out_tok_per_s']:.0f} out tok/s, ITL {m['itl_mean_ms']:.2f} ms "
                          f"(p99 {m['itl_p99_ms']:.2f}), TTFT {m['ttft_mean_ms']:.0f} ms, {m['failed']} failed"
                          + (f"; {prefill['batches']} prefill batches, {prefill['new_tokens']} new / "
                             f"{prefill['cached_tokens']} cached tokens" if prefill else ""), flush=True)
        except Exception as e:
            print(f"[{backend}] FAILED: {e}", flush=True)
            results.setdefault(backend, {})["error"] = str(e)[-2000:]
        if args.json:  # after every backend, so that a run cut short keeps what it measured
            write_report(args, backends, workloads, results, greedy, startup, quiet=True)
    write_report(args, backends, workloads, results, greedy, startup)
    failed = [b for b, r in results.items() if "error" in r]
    lost = {f"{b}/{w}": m["failed"] for b, r in results.items() for w, m in r.items()
            if w != "error" and m.get("failed")}
    if lost:  # a throughput over fewer requests than asked for is no comparison
        print(f"failed requests: {lost}", flush=True)
    return 1 if failed or lost else 0


if __name__ == "__main__":
    sys.exit(main())
