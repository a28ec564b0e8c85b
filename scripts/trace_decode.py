"""When each decode task runs, on which SM, and how long: a timeline of the table-mode kernel.

Copies ``sglang_flashcore/`` and ``cuda/`` to a scratch folder, inserts a record per task into its
``paged_decode.cu`` (the task's start and end on %globaltimer, its SM, task and KV head) and the
first start / last end of the merge kernel, builds that copy into its own cache, plans and runs
decode batches without sharing (bf16, Hq 32, D 128, page 64, pages shuffled) and prints, per batch:

- the decode kernel's span (first task start to last task end) and the merge kernel's;
- the tail: how long fewer than 90% / 50% of the peak number of tasks ran at once, and what share
  of the span that is;
- task times: median, p10 / p90, in the first wave, at full occupancy, and in the tail; what each
  resident task streamed per microsecond;
- the CTAs resident per SM (max), and how many SMs ran tasks;
- each task's start-up (start to its first K/V tile landed), in the first wave and after it;
- the same launch after an L2 flush that leaves clean lines (a read) instead of dirty ones.

Why: with 8 KV heads the kernel reads 0.92-0.96x cuDNN, and what part of that is the last wave
(a model says most, one sweep point says it cannot be all) was guessed, never measured.

    python3 scripts/trace_decode.py                         # four batches, the automatic chunk
    python3 scripts/trace_decode.py --config 16,8,32768,10923 --config 16,8,32768 --json trace.json
    python3 scripts/trace_decode.py --config 16,8,32768@FLASHCORE_DECODE_GRID=task_major --raw --json t.json

The insertion points are exact source lines of ``cuda/paged_decode.cu``: when the kernel changes,
the script stops with the line it no longer finds (tests/test_scripts.py checks they all match).
"""

from __future__ import annotations

import argparse
import array
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import trace_util  # noqa: E402

MAX_RECORDS = 1 << 16  # tasks x KV heads recorded per launch
# A record: start ns, first K/V tile landed ns, middle tile landed ns, end ns,
# (smid << 48 | task << 16 | head).  g_trace_n[0] counts records, [1] / [2] hold the merge
# kernel's first start and last end.
WORDS = 5
TRACE_BUFFER = ("#include <cstdio>\n#include <cstdlib>\nnamespace flashcore {\n"
                f"constexpr int kTraceRecords = {MAX_RECORDS};\n" + """\
__device__ unsigned long long g_trace[kTraceRecords * 5];
__device__ unsigned long long g_trace_n[3];
__shared__ unsigned long long s_trace_mark[2];  // the running task's first and middle tile
__device__ __forceinline__ unsigned long long trace_now() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}
__device__ __forceinline__ unsigned trace_smid() {
  unsigned s;
  asm volatile("mov.u32 %0, %%smid;" : "=r"(s));
  return s;
}
namespace {
""")

TASK_LOOP = """  for (int t = first; t < num_tasks; t += stride) {
    decode_work_item<T, D, true>(p, p.tasks[2 * t], h, p.tasks[2 * t + 1], smem_raw);
    __syncthreads();
  }
"""
TASK_LOOP_TRACED = """  for (int t = first; t < num_tasks; t += stride) {
    const unsigned long long t_start = trace_now();
    decode_work_item<T, D, true>(p, p.tasks[2 * t], h, p.tasks[2 * t + 1], smem_raw);
    __syncthreads();
    if (threadIdx.x == 0) {
      const unsigned long long i = atomicAdd(&g_trace_n[0], 1ull);
      if (i < kTraceRecords) {
        g_trace[5 * i] = t_start;
        g_trace[5 * i + 1] = s_trace_mark[0];
        g_trace[5 * i + 2] = s_trace_mark[1];
        g_trace[5 * i + 3] = trace_now();
        g_trace[5 * i + 4] = ((unsigned long long)trace_smid() << 48) | ((unsigned long long)t << 16) | h;
      }
    }
  }
"""
TILE_WAIT = "      cp_async_wait<1>();\n      __syncthreads();\n      const T* ks = kv_smem"
TILE_WAIT_TRACED = ("      cp_async_wait<1>();\n      __syncthreads();\n"
                    "      if (threadIdx.x == 0 && (tile == 0 || tile == ntiles / 2)) s_trace_mark[tile != 0] = trace_now();\n"
                    "      const T* ks = kv_smem")
MERGE_START = "  merge_wait();  // the partials\n"  # a block's start: when its wait for the decode grid ends
MERGE_START_TRACED = MERGE_START + ("  if (x == 0 && g == 0) atomicMin(&g_trace_n[1], trace_now());\n")
MERGE_END = "  if (x == 0) p.lse[(int64_t)b * p.num_q_heads + head] = l > 0.f ? m + logf(l) : -INFINITY;\n}\n"
MERGE_END_TRACED = MERGE_END[:-2] + "  if (x == 0) atomicMax(&g_trace_n[2], trace_now());\n}\n"
LAUNCH_END = "  return merged;\n}\n\n}  // namespace\n"  # after the merge kernel's launch
DUMP = """  const char* trace_path = getenv("FC_TRACE");
  if (trace_path) {
    const unsigned long long init[3] = {0ull, ~0ull, 0ull};
    cudaMemcpyToSymbolAsync(g_trace_n, init, sizeof(init), 0, cudaMemcpyHostToDevice, stream);
  }
  if (decodes) {
"""

# (source text, its replacement): each source text must occur exactly once in paged_decode.cu
INSERTIONS = [
    ("namespace flashcore {\nnamespace {\n", TRACE_BUFFER),
    (TASK_LOOP, TASK_LOOP_TRACED),
    (TILE_WAIT, TILE_WAIT_TRACED),
    (MERGE_START, MERGE_START_TRACED),
    (MERGE_END, MERGE_END_TRACED),
    ("  if (decodes) {\n", DUMP),
    (LAUNCH_END, """  if (trace_path) {
    static unsigned long long host[kTraceRecords * 5 + 3];
    cudaStreamSynchronize(stream);
    cudaMemcpyFromSymbol(host, g_trace_n, 3 * sizeof(unsigned long long));
    cudaMemcpyFromSymbol(host + 3, g_trace, kTraceRecords * 5 * sizeof(unsigned long long));
    FILE* f = fopen(trace_path, "wb");
    fwrite(host, 1, sizeof(host), f);
    fclose(f);
  }
""" + LAUNCH_END),
]


def instrument(src: str) -> str:
    """``paged_decode.cu`` with a record per task, the merge kernel's span and a host-side dump of
    both to the file $FC_TRACE names after each launch (when it is set)."""
    return trace_util.patch(src, INSERTIONS, "paged_decode.cu", "trace_decode")


def read_trace(path: str) -> dict:
    """The trace file as tasks [(start ns, end ns, sm, task, head)] and the merge kernel's span."""
    words = array.array("Q")
    with open(path, "rb") as f:
        words.frombytes(f.read())
    n = min(words[0], MAX_RECORDS)
    tasks, marks = [], []
    for i in range(n):
        start, first, middle, end, tag = words[3 + WORDS * i: 3 + WORDS * (i + 1)]
        tasks.append((start, end, tag >> 48, (tag >> 16) & 0xFFFFFFFF, tag & 0xFFFF))
        marks.append((start, first, middle, end))
    return {"tasks": sorted(tasks), "marks": sorted(marks), "dropped": words[0] - n, "merge": (words[1], words[2])}


def running_profile(tasks: list) -> list:
    """[(time ns, tasks running from then on)] at every task start and end."""
    events = sorted([(s, 1) for s, _, _, _, _ in tasks] + [(e, -1) for _, e, _, _, _ in tasks])
    profile, running = [], 0
    for t, delta in events:
        running += delta
        profile.append((t, running))
    return profile


def time_below(profile: list, level: float) -> float:
    """Nanoseconds, after the peak is first reached, during which fewer than ``level`` tasks ran."""
    peak = max(r for _, r in profile)
    reached, total = False, 0.0
    for (t, r), (t_next, _) in zip(profile, profile[1:]):
        reached = reached or r >= peak
        if reached and r < level:
            total += t_next - t
    return total


def summarize(trace: dict, token_bytes: float) -> dict:
    """The figures the docstring lists, from one launch's trace; ``token_bytes``: K+V bytes one
    task reads per token of one KV head."""
    tasks = trace["tasks"]
    t0 = tasks[0][0]
    t_end = max(e for _, e, _, _, _ in tasks)
    span = t_end - t0
    profile = running_profile(tasks)
    peak = max(r for _, r in profile)
    full_until = next(t for t, r in profile if r >= peak)  # the first moment of full occupancy
    # occupancy falls below 90% of the peak for good at the event after its last moment above
    last_full = max(i for i, (_, r) in enumerate(profile) if r >= 0.9 * peak)
    tail_start = profile[min(last_full + 1, len(profile) - 1)][0]
    durations = [e - s for s, e, _, _, _ in tasks]
    first = [e - s for s, e, _, _, _ in tasks if s <= full_until]
    steady = [e - s for s, e, _, _, _ in tasks if s > full_until and e <= tail_start]
    tail = [e - s for s, e, _, _, _ in tasks if e > tail_start]
    # start -> first K/V tile landed (the task's start-up), in the first wave and after it
    marks = trace.get("marks", [])
    startup_first = [f - s for s, f, _, _ in marks if s <= full_until and f >= s]
    startup_later = [f - s for s, f, _, _ in marks if s > full_until and f >= s]
    per_sm = {}
    for s, e, sm, _, _ in tasks:
        per_sm.setdefault(sm, []).append((s, e))
    resident = max(max(r for _, r in running_profile([(s, e, 0, 0, 0) for s, e in v])) for v in per_sm.values())

    def stats(xs):
        xs = sorted(xs)
        if not xs:
            return None
        return {"n": len(xs), "median_us": xs[len(xs) // 2] / 1e3, "p10_us": xs[len(xs) // 10] / 1e3,
                "p90_us": xs[(len(xs) * 9) // 10] / 1e3}

    out = {
        "tasks": len(tasks), "dropped": trace["dropped"], "span_us": span / 1e3, "peak_running": peak,
        "sms_used": len(per_sm), "max_resident_per_sm": resident,
        "below_90pct_us": time_below(profile, 0.9 * peak) / 1e3,
        "below_50pct_us": time_below(profile, 0.5 * peak) / 1e3,
        "ramp_us": (full_until - t0) / 1e3,
        "task_all": stats(durations), "task_first_wave": stats(first), "task_steady": stats(steady),
        "task_tail": stats(tail),
        "startup_first_wave": stats(startup_first), "startup_later": stats(startup_later),
    }
    merge_start, merge_end = trace["merge"]
    if merge_end > 0 and merge_start != 2 ** 64 - 1:
        out["gap_to_merge_us"] = (merge_start - t_end) / 1e3
        out["merge_us"] = (merge_end - merge_start) / 1e3
    # bytes each resident task streamed per microsecond while all ran (steady tasks)
    if steady:
        out["steady_task_GBps"] = token_bytes / (statistics.median(steady) / 1e9) / 1e9
    return out


def run(batch: int, hkv: int, ctx: int, chunk, scratch: str, repeats: int, raw: bool) -> dict:
    import torch

    from bench_decode_grid import NO_SHARING_PAGE, no_sharing_batch
    from bench_util import time_ms
    from sglang_flashcore.decode_plan import DecodePlanner

    r2t, k, v, q, idx, seq, cudnn = no_sharing_batch(batch, hkv, ctx)
    cudnn_ms = time_ms(cudnn, repeats=repeats)
    hq, d, page = q.shape[1], q.shape[2], NO_SHARING_PAGE
    planner = DecodePlanner(batch, hq, d, q.device)
    planner.plan(r2t, idx, seq, hkv, hq // hkv, chunk)
    meta = planner.meta()
    ours_ms = time_ms(lambda: planner.run(q, k, v, d ** -0.5, page), repeats=repeats)
    path = os.path.join(scratch, "trace.bin")
    os.environ["FC_TRACE"] = path
    from bench_util import flush_l2
    flush_l2()
    torch.cuda.synchronize()
    planner.run(q, k, v, d ** -0.5, page)
    torch.cuda.synchronize()
    del os.environ["FC_TRACE"]
    chunk_tokens = meta["chunk_tokens"]
    trace = read_trace(path)
    summary = summarize(trace, token_bytes=2 * chunk_tokens * d * 2)
    # The benchmarks flush L2 by writing 256 MB: the launch then also writes those dirty lines
    # back. The same launch after reading 256 MB instead (L2 full of clean lines) shows what that costs.
    clean = torch.empty(256 * 1024 * 1024 // 4, device="cuda", dtype=torch.float32)
    clean.sum()
    torch.cuda.synchronize()
    os.environ["FC_TRACE"] = path
    planner.run(q, k, v, d ** -0.5, page)
    torch.cuda.synchronize()
    del os.environ["FC_TRACE"]
    after_clean = summarize(read_trace(path), token_bytes=2 * chunk_tokens * d * 2)
    summary["after_clean_flush"] = {key: after_clean[key] for key in
                                    ("span_us", "task_first_wave", "task_steady", "below_90pct_us")}
    if raw:  # (start, first tile, middle tile, end) ns from the first start, and the SM of each task
        t0 = trace["marks"][0][0]
        summary["raw_marks"] = [[x - t0 for x in m] for m in trace["marks"]]
        summary["raw_sm"] = [[s - t0, sm] for s, _, sm, _, _ in trace["tasks"]]
    summary.update(B=batch, Hkv=hkv, ctx=ctx, chunk=chunk_tokens, plan_tasks=meta["tasks"],
                   grid_work=planner.grid_work, ours_ms=ours_ms, cudnn_ms=cudnn_ms, vs_cudnn=cudnn_ms / ours_ms)
    return summary


def print_summary(s: dict) -> None:
    print(f"\nB{s['B']} x {s['ctx']}, Hkv {s['Hkv']}, chunk {s['chunk']}: {s['plan_tasks']} tasks x {s['Hkv']} heads "
          f"on grid_work {s['grid_work']}; ours {s['ours_ms']:.3f} ms, cuDNN {s['cudnn_ms']:.3f} ms "
          f"({s['vs_cudnn']:.3f}x)")
    print(f"  decode span {s['span_us']:.1f} us (traced launch), ramp to full {s['ramp_us']:.1f} us; "
          f"peak {s['peak_running']} tasks at once, {s['max_resident_per_sm']} a SM at most, {s['sms_used']} SMs")
    print(f"  below 90% of peak: {s['below_90pct_us']:.1f} us ({100 * s['below_90pct_us'] / s['span_us']:.1f}%), "
          f"below 50%: {s['below_50pct_us']:.1f} us ({100 * s['below_50pct_us'] / s['span_us']:.1f}%)")
    if "merge_us" in s:
        print(f"  gap to the merge kernel {s['gap_to_merge_us']:.1f} us, merge {s['merge_us']:.1f} us")
    for name in ("task_first_wave", "task_steady", "task_tail", "task_all", "startup_first_wave", "startup_later"):
        st = s.get(name)
        if st:
            print(f"  {name:16s} n {st['n']:5d}  median {st['median_us']:7.1f} us  p10 {st['p10_us']:7.1f}  "
                  f"p90 {st['p90_us']:7.1f}")
    c = s.get("after_clean_flush")
    if c:
        print(f"  after a read-only flush: span {c['span_us']:.1f} us, first wave median "
              f"{c['task_first_wave']['median_us']:.1f} us, below 90% {c['below_90pct_us']:.1f} us")
    if "steady_task_GBps" in s:
        print(f"  a steady task streams {s['steady_task_GBps']:.1f} GB/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", action="append",
                        help="B,Hkv,context[,chunk tokens] (repeatable; no chunk: the planner's choice)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--raw", action="store_true", help="also save every task's timestamps in the JSON")
    parser.add_argument("--json", help="save the summaries here")
    args = parser.parse_args()
    configs = []
    for c in args.config or ["16,8,32768", "32,8,8192", "8,8,131072", "16,32,32768"]:
        numbers, _, env = c.partition("@")
        values = tuple(int(x) for x in numbers.split(","))
        if len(values) not in (3, 4) or (env and "=" not in env):
            sys.exit("trace_decode: --config takes B,Hkv,context[,chunk][@NAME=VALUE]")
        configs.append((values, env))
    scratch = trace_util.traced_tree("paged_decode.cu", instrument, "fc_trace_decode_")
    import torch

    import sglang_flashcore  # noqa: F401  (the traced copy, before bench_decode puts the tree's first)

    if not torch.cuda.is_available():
        sys.exit("trace_decode: needs a CUDA GPU")
    print(torch.cuda.get_device_name(0))
    results = []
    for (batch, hkv, ctx, *chunk), env in configs:
        name, _, value = env.partition("=")
        if env:  # a switch the binding reads per call, for this batch only
            os.environ[name] = value
        s = run(batch, hkv, ctx, chunk[0] if chunk else None, scratch, args.repeats, args.raw)
        if env:
            del os.environ[name]
            s["env"] = env
            print(f"  (with {env})")
        print_summary(s)
        results.append(s)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(0), "command": "python3 " + " ".join(sys.argv),
                       "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
