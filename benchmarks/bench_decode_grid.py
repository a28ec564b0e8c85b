"""A/B of the decode planner's launch knobs without a rebuild, same run, same GPU: the chunk size
(auto or fixed), the CTAs that loop over the tasks (``grid_work``, in multiples of the SM count)
and environment switches the binding reads per call (``--variant FLASHCORE_DECODE_GRID=task_major``),
on decode batches without sharing, against cuDNN SDPA on the gathered K/V. ``--pool head_major``
stores each KV head's slots contiguously ([Hkv, slots, D] seen through strides) instead of SGLang's
[slots, Hkv, D]: what the pool layout alone costs the kernel.

    python benchmarks/bench_decode_grid.py [--json out.json] [--plot out.png]
"""

from __future__ import annotations

import itertools
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

from bench_decode import shared_page_table  # noqa: E402
from bench_util import base_parser, report, require_cuda, time_interleaved, with_env  # noqa: E402
from sglang_flashcore.decode_plan import (ROWS_PER_TASK, SPLIT_PARTS, WAVE_MAX_CHUNK_TOKENS, DecodePlanner,  # noqa: E402
                                          chunk_tasks)

def make_pool(num_slots: int, hkv: int, d: int, dtype: torch.dtype, layout: str) -> torch.Tensor:
    """A [slots, Hkv, D] pool: SGLang's token-major storage ("slots") or head-major storage
    ("head_major": each head's slots contiguous, the same tensor seen through strides)."""
    if layout == "head_major":
        return torch.randn(hkv, num_slots, d, device="cuda", dtype=dtype).permute(1, 0, 2)
    return torch.randn(num_slots, hkv, d, device="cuda", dtype=dtype)


def wave_chunk(lengths, num_kv_heads: int, tasks_per_chunk: int, slots: int, waves: int) -> int:
    """The smallest chunk whose (chunk, KV head) tasks fit ``waves`` waves of ``slots`` CTAs
    (``--chunks wK``): how the wave-filling chunks of the sweeps are named."""
    lo, hi = 1, max(lengths)
    while lo < hi:
        mid = (lo + hi) // 2
        fits = chunk_tasks(lengths, mid, num_kv_heads * tasks_per_chunk) <= waves * slots
        lo, hi = (lo, mid) if fits else (mid + 1, hi)
    return lo


CONFIGS = [(8, 8, 131072), (16, 8, 32768), (32, 8, 8192), (16, 32, 32768)]  # (B, Hkv, context), Hq 32
NO_SHARING_PAGE = 64


def no_sharing_batch(batch: int, hkv: int, ctx: int, pool: str = "slots", shuffled: bool = True):
    """A decode batch without sharing (bf16, Hq 32, D 128, page 64): ``(req_to_token, k, v, q,
    req_pool_indices, seq_lens, a call of cuDNN SDPA on the same requests' gathered K/V)``."""
    hq, d, dt = 32, 128, torch.bfloat16
    r2t, num_slots = shared_page_table(batch, ctx, NO_SHARING_PAGE, 0.0, "cuda", shuffled=shuffled)
    k = make_pool(num_slots, hkv, d, dt, pool)
    v = make_pool(num_slots, hkv, d, dt, pool)
    q = torch.randn(batch, hq, d, device="cuda", dtype=dt)
    idx = torch.arange(batch, device="cuda")
    seq = torch.full((batch,), ctx, device="cuda", dtype=torch.int32)
    kd = k[r2t.long()].permute(0, 2, 1, 3).contiguous()
    vd = v[r2t.long()].permute(0, 2, 1, 3).contiguous()

    def cudnn():
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.CUDNN_ATTENTION):
            return F.scaled_dot_product_attention(q.unsqueeze(2), kd, vd, enable_gqa=True)

    return r2t, k, v, q, idx, seq, cudnn


def main():
    parser = base_parser(__doc__, repeats=20, rounds=True)
    parser.add_argument("--multipliers", default="1,2,3,4", help="grid_work in SMs")
    parser.add_argument("--chunks", default="auto,512,1024",
                        help="chunk tokens (auto: the planner's choice; pow2: the same without the wave-filling "
                             "move; wK: the smallest chunk that fits K waves)")
    parser.add_argument("--split", default=str(SPLIT_PARTS),
                        help="the tail split's parts per item, comma-separated (1: off; '4,1' times both)")
    parser.add_argument("--config", action="append", help="B,Hkv,context (repeatable; default: four batches)")
    parser.add_argument("--pool", choices=["slots", "head_major"], default="slots", help="KV pool storage")
    parser.add_argument("--pages", choices=["shuffled", "ordered"], default="shuffled",
                        help="page order in the pool: shuffled (a long-running allocator) or each request's in order")
    parser.add_argument("--variant", action="append", default=[],
                        help="also time ours with this NAME=VALUE environment switch (repeatable)")
    args = parser.parse_args()
    configs = [tuple(int(x) for x in c.split(",")) for c in args.config] if args.config else CONFIGS
    info = require_cuda("bench_decode_grid")
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    rows = []
    for batch, hkv, ctx in configs:
        r2t, k, v, q, idx, seq, cudnn = no_sharing_batch(batch, hkv, ctx, args.pool, shuffled=args.pages == "shuffled")
        hq, d, page = q.shape[1], q.shape[2], NO_SHARING_PAGE
        planner = DecodePlanner(batch, hq, d, q.device)
        timed = set()  # wK specs may name the same chunk twice
        for chunk, split, mult in itertools.product(args.chunks.split(","), map(int, args.split.split(",")),
                                                    map(int, args.multipliers.split(","))):
            # the plan depends on grid_work and the split (the split only cuts while every task
            # gets a CTA of its own), so each point is planned with its own
            planner.grid_work, planner.split_parts = mult * sms, split
            planner.wave_max_chunk = 0 if chunk == "pow2" else WAVE_MAX_CHUNK_TOKENS
            fixed = None if chunk in ("auto", "pow2") else int(chunk) if not chunk.startswith("w") else wave_chunk(
                [ctx] * batch, hkv, -(-(hq // hkv) // ROWS_PER_TASK), mult * sms, int(chunk[1:]))
            planner.plan(r2t, idx, seq, hkv, hq // hkv, fixed)
            meta = planner.meta()
            if (meta["chunk_tokens"], split, mult) in timed:
                continue
            timed.add((meta["chunk_tokens"], split, mult))
            run = lambda: planner.run(q, k, v, d ** -0.5, page)  # noqa: E731
            # ours, its variants and cuDNN in alternating rounds (cuDNN is timed again at every point)
            fns = {"ours": run, **{variant: with_env(run, variant) for variant in args.variant}, "cudnn": cudnn}
            times = time_interleaved(fns, repeats=args.repeats, rounds=args.rounds)
            ms, cudnn_ms = times["ours"], times["cudnn"]
            row = dict(B=batch, Hkv=hkv, ctx=ctx, pool=args.pool, pages=args.pages, spec=chunk, chunk=meta["chunk_tokens"],
                       split=split, tasks=meta["tasks"], grid_sms=mult, ours_ms=ms, cudnn_ms=cudnn_ms,
                       vs_cudnn=cudnn_ms / ms)
            for variant in args.variant:
                row[f"{variant}_ms"] = times[variant]
                row[f"{variant}_vs_cudnn"] = cudnn_ms / row[f"{variant}_ms"]
            rows.append(row)
            print(f"  B{batch} Hkv{hkv} ctx{ctx} chunk {meta['chunk_tokens']} split {split} ({meta['tasks']} tasks) "
                  f"grid {mult}xSM: {ms:.3f} ms, "
                  f"cuDNN {cudnn_ms:.3f} ms, {cudnn_ms / ms:.3f}x"
                  + "".join(f", {v} {row[v + '_vs_cudnn']:.3f}x" for v in args.variant), flush=True)
    labels = [f"B{r['B']} H{r['Hkv']} c{r['chunk']} s{r['split']} g{r['grid_sms']}" for r in rows]
    report(args, info, rows, list(rows[0]), "decode launch knobs (bf16, Hq 32, D 128, page 64, no sharing)", labels,
           {"ours / cuDNN speed": [r["vs_cudnn"] for r in rows]}, "cuDNN ms / ours ms")


if __name__ == "__main__":
    main()
