"""Calls of the dense kernel for Nsight Compute: by default the seed point (B16 H16 S2048 D64
fp16), non-causal then causal; ``--shape B,S,H,D`` (repeatable) for other points; ``--hkv`` for
GQA, ``--window W`` for a causal sliding window (as bench_window.py calls it, packed rows).

    ncu --clock-control none --kernel-name regex:dense_fwd \\
        --metrics sm__throughput.avg.pct_of_peak_sustained_elapsed,gpu__time_duration.sum \\
        python tools/ncu_dense.py [--shape 1,16384,16,128] [--causal no] [--cudnn]

``--cudnn`` also calls torch SDPA with cuDNN on the same tensors (match its kernel with
``--kernel-name regex:"dense_fwd|sdpa"``), for a side-by-side reading; ``--fa3`` FA3's
``flash_attn_varlen_func`` (sgl_kernel, carried by tools/box_serving.sh) on the same tensors
(``regex:"dense_fwd|flash_fwd"``).
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import sglang_flashcore as fc  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", action="append", help="B,S,H,D (repeatable; default: the seed point)")
    parser.add_argument("--causal", choices=["yes", "no", "both"], default="both")
    parser.add_argument("--dtype", choices=["fp16", "bf16"], default="fp16")
    parser.add_argument("--cudnn", action="store_true", help="also run cuDNN SDPA on each point")
    parser.add_argument("--fa3", action="store_true", help="also run FA3's varlen forward on each point")
    parser.add_argument("--hkv", type=int, default=0, help="KV heads (default: H)")
    parser.add_argument("--window", type=int, default=-1, help="causal sliding window (keys left of a query)")
    args = parser.parse_args()
    shapes = [tuple(int(x) for x in s.split(",")) for s in args.shape] if args.shape else [(16, 2048, 16, 64)]
    dtype = torch.float16 if args.dtype == "fp16" else torch.bfloat16
    causals = {"yes": [True], "no": [False], "both": [False, True]}[args.causal]
    if args.window >= 0:
        causals = [True]
    for b, s, h, d in shapes:
        hkv = args.hkv or h
        q = torch.randn(b, s, h, d, device="cuda", dtype=dtype)
        k, v = (torch.randn(b, s, hkv, d, device="cuda", dtype=dtype) for _ in range(2))
        cu = torch.arange(0, b + 1, device="cuda", dtype=torch.int32) * s
        packed = [t.reshape(b * s, -1, d) for t in (q, k, v)]
        for causal in causals:
            fc.attention(*packed, causal=causal, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=s, max_seqlen_k=s,
                         window_left=args.window)
            if args.fa3:
                from sgl_kernel.flash_attn import flash_attn_varlen_func

                flash_attn_varlen_func(*packed, cu, cu, s, s, causal=causal, window_size=(args.window, 0))
            if args.cudnn and args.window < 0:
                with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.CUDNN_ATTENTION):
                    torch.nn.functional.scaled_dot_product_attention(
                        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal,
                        enable_gqa=hkv != h)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
