"""Calls of the dense kernel for Nsight Compute: by default the seed point (B16 H16 S2048 D64
fp16), non-causal then causal; ``--shape B,S,H,D`` (repeatable) for other points.

    ncu --clock-control none --kernel-name regex:dense_fwd \\
        --metrics sm__throughput.avg.pct_of_peak_sustained_elapsed,gpu__time_duration.sum \\
        python tools/ncu_dense.py [--shape 1,16384,16,128] [--causal no] [--cudnn]

``--cudnn`` also calls torch SDPA with cuDNN on the same tensors (match its kernel with
``--kernel-name regex:"dense_fwd|sdpa"``), for a side-by-side reading.
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
    args = parser.parse_args()
    shapes = [tuple(int(x) for x in s.split(",")) for s in args.shape] if args.shape else [(16, 2048, 16, 64)]
    dtype = torch.float16 if args.dtype == "fp16" else torch.bfloat16
    causals = {"yes": [True], "no": [False], "both": [False, True]}[args.causal]
    for b, s, h, d in shapes:
        q, k, v = (torch.randn(b, s, h, d, device="cuda", dtype=dtype) for _ in range(3))
        for causal in causals:
            fc.attention(q, k, v, causal=causal)
            if args.cudnn:
                with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.CUDNN_ATTENTION):
                    torch.nn.functional.scaled_dot_product_attention(
                        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
