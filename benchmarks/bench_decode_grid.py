"""The decode planner's launch knobs without a rebuild, same run, same GPU: the chunk size (auto,
the automatic power of two before the wave-filling move, fixed, or the smallest that fits K waves)
and the CTAs that loop over the tasks (``grid_work``, in multiples of the SM count), on decode
batches without sharing, against cuDNN SDPA on the gathered K/V. ``--pool head_major`` stores each
KV head's slots contiguously ([Hkv, slots, D] seen through strides) instead of SGLang's
[slots, Hkv, D]: what the pool layout alone costs the kernel. The tail split and the wave-filling
policy are fixed in the product: compare them against a git revision with tools/ab_revision.py.

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
from bench_util import base_parser, report, require_cuda, time_interleaved  # noqa: E402
from sglang_flashcore.decode import DecodePlanner  # noqa: E402
from sglang_flashcore.heuristics import (DECODE_ROWS_PER_TASK, chunk_tasks, choose_chunk_tokens,  # noqa: E402
                                         target_chunks)


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


def pow2_chunk(lengths, num_kv_heads: int, max_chunks: int, device) -> int:
    """The automatic chunk before the wave-filling move (``--chunks pow2``): the largest power of two
    that still gives the policy's target of chunks, as the planner computes it on the device."""
    return choose_chunk_tokens(lengths, max_chunks, target=target_chunks(num_kv_heads, device))


def chunk_for(spec: str, lengths, num_kv_heads: int, group: int, slots: int, max_chunks: int, device):
    """The fixed chunk that ``--chunks`` names (None: the planner's automatic choice)."""
    if spec == "auto":
        return None
    if spec == "pow2":
        return pow2_chunk(lengths, num_kv_heads, max_chunks, device)
    if spec.startswith("w"):
        return wave_chunk(lengths, num_kv_heads, -(-group // DECODE_ROWS_PER_TASK), slots, int(spec[1:]))
    return int(spec)


def parse_chunks(text: str):
    specs = text.split(",")
    for spec in specs:
        if not (spec in ("auto", "pow2") or spec.isdigit() or (spec[:1] == "w" and spec[1:].isdigit())):
            raise ValueError(f"--chunks: expected auto, pow2, a number of tokens or wK, got {spec!r}")
    return specs


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
                        help="chunk tokens (auto: the planner's choice; pow2: the automatic power of two without "
                             "the wave-filling move; wK: the smallest chunk that fits K waves)")
    parser.add_argument("--config", action="append", help="B,Hkv,context (repeatable; default: four batches)")
    parser.add_argument("--pool", choices=["slots", "head_major"], default="slots", help="KV pool storage")
    parser.add_argument("--pages", choices=["shuffled", "ordered"], default="shuffled",
                        help="page order in the pool: shuffled (a long-running allocator) or each request's in order")
    args = parser.parse_args()
    try:
        chunk_specs = parse_chunks(args.chunks)
    except ValueError as exc:
        parser.error(str(exc))
    configs = [tuple(int(x) for x in c.split(",")) for c in args.config] if args.config else CONFIGS
    info = require_cuda("bench_decode_grid")
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    rows = []
    for batch, hkv, ctx in configs:
        r2t, k, v, q, idx, seq, cudnn = no_sharing_batch(batch, hkv, ctx, args.pool, shuffled=args.pages == "shuffled")
        hq, d, page = q.shape[1], q.shape[2], NO_SHARING_PAGE
        planner = DecodePlanner(batch, hq, d, q.device)
        timed = set()  # specs may name the same chunk twice
        for chunk, mult in itertools.product(chunk_specs, map(int, args.multipliers.split(","))):
            # the plan depends on grid_work (the tail split only cuts while every task gets a CTA of
            # its own), so each point is planned with its own
            planner.grid_work = mult * sms
            fixed = chunk_for(chunk, [ctx] * batch, hkv, hq // hkv, mult * sms, planner.max_chunks, q.device)
            planner.plan(r2t, idx, seq, hkv, hq // hkv, fixed)
            meta = planner.meta()
            if (meta["chunk_tokens"], mult) in timed:
                continue
            timed.add((meta["chunk_tokens"], mult))
            run = lambda: planner.run(q, k, v, d ** -0.5, page)  # noqa: E731
            # ours and cuDNN in alternating rounds (cuDNN is timed again at every point)
            times = time_interleaved({"ours": run, "cudnn": cudnn}, repeats=args.repeats, rounds=args.rounds)
            ms, cudnn_ms = times["ours"], times["cudnn"]
            rows.append(dict(B=batch, Hkv=hkv, ctx=ctx, pool=args.pool, pages=args.pages, spec=chunk,
                             chunk=meta["chunk_tokens"], tasks=meta["tasks"], grid_sms=mult, ours_ms=ms,
                             cudnn_ms=cudnn_ms, vs_cudnn=cudnn_ms / ms))
            print(f"  B{batch} Hkv{hkv} ctx{ctx} chunk {meta['chunk_tokens']} ({meta['tasks']} tasks) "
                  f"grid {mult}xSM: {ms:.3f} ms, cuDNN {cudnn_ms:.3f} ms, {cudnn_ms / ms:.3f}x", flush=True)
    labels = [f"B{r['B']} H{r['Hkv']} c{r['chunk']} g{r['grid_sms']}" for r in rows]
    report(args, info, rows, list(rows[0]), "decode launch knobs (bf16, Hq 32, D 128, page 64, no sharing)", labels,
           {"ours / cuDNN speed": [r["vs_cudnn"] for r in rows]}, "cuDNN ms / ours ms")


if __name__ == "__main__":
    main()
