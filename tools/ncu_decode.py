"""Calls of the page-table decode kernel for Nsight Compute, without sharing: for each
``--config B,Hkv,context`` (Hq 32, D 128, bf16, page 64, pages shuffled), the planner then two
decode calls; ``--cudnn`` also calls torch SDPA with cuDNN on the same requests' gathered K/V.

    ncu --clock-control none --kernel-name regex:"paged_decode|sdpa|cudnn" --launch-skip 0 \\
        --metrics gpu__time_duration.sum,dram__bytes_read.sum,sm__cycles_active.max,sm__cycles_active.avg \\
        python tools/ncu_decode.py --config 16,8,32768 [--pool head_major] [--chunk 4096] [--cudnn]
"""

import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))

from bench_decode import shared_page_table  # noqa: E402
from bench_decode_grid import make_pool  # noqa: E402
from sglang_flashcore.decode import DecodePlanner  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", action="append", required=True, help="B,Hkv,context (repeatable)")
    parser.add_argument("--pool", choices=["slots", "head_major"], default="slots")
    parser.add_argument("--chunk", type=int, default=None, help="fixed chunk tokens (default: the planner's)")
    parser.add_argument("--cudnn", action="store_true", help="also run cuDNN SDPA on each point")
    args = parser.parse_args()
    hq, d, page, dt = 32, 128, 64, torch.bfloat16
    for config in args.config:
        batch, hkv, ctx = (int(x) for x in config.split(","))
        r2t, num_slots = shared_page_table(batch, ctx, page, 0.0, "cuda")
        k, v = (make_pool(num_slots, hkv, d, dt, args.pool) for _ in range(2))
        q = torch.randn(batch, hq, d, device="cuda", dtype=dt)
        seq = torch.full((batch,), ctx, device="cuda", dtype=torch.int32)
        planner = DecodePlanner(batch, hq, d, q.device)
        planner.plan(r2t, torch.arange(batch, device="cuda"), seq, hkv, hq // hkv, args.chunk)
        for _ in range(2):
            planner.run(q, k, v, d ** -0.5, page)
        if args.cudnn:
            kd = k[r2t.long()].permute(0, 2, 1, 3).contiguous()
            vd = v[r2t.long()].permute(0, 2, 1, 3).contiguous()
            with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.CUDNN_ATTENTION):
                F.scaled_dot_product_attention(q.unsqueeze(2), kd, vd, enable_gqa=True)
        print(f"B{batch} Hkv{hkv} ctx{ctx} pool {args.pool} chunk {planner.meta()['chunk_tokens']}", flush=True)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
