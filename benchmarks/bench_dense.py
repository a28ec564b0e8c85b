"""Dense forward (prefill) benchmark: FlashCore's TMA + wgmma kernel vs torch SDPA with cuDNN and
with FlashAttention-2, in the same run on the same GPU.

Grid of ../shared/BENCHMARKS.md: B*S = 16K tokens, S in {512 .. 16K}, D 64 (H 32), D 128 (H 16) and
D 256 (H 8), causal and not, plus GQA (Hq 32, Hkv 8, D 128) and the seed point B16 H16 S2048 D64.
FLOPs = 4 * B * Hq * S * S * D, halved when causal.

    python benchmarks/bench_dense.py [--dtype bf16|fp16|both] [--json out.json] [--plot out.png]
    python benchmarks/bench_dense.py --shape 16,2048,16,16,64     # B,S,Hq,Hkv,D

A/B against a git revision (its kernel built beside this one, the runs alternating):
tools/ab_revision.py.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

import sglang_flashcore as fc  # noqa: E402
from bench_util import base_parser, report, require_agreement, require_cuda, time_interleaved  # noqa: E402


def grid():
    shapes = []
    for s in (512, 1024, 2048, 4096, 8192, 16384):
        shapes.append((16384 // s, s, 32, 32, 64))
        shapes.append((16384 // s, s, 16, 16, 128))
        shapes.append((16384 // s, s, 32, 8, 128))
        shapes.append((16384 // s, s, 8, 8, 256))  # Gemma 2/3-shaped heads
    shapes.append((16, 2048, 16, 16, 64))  # the seed point
    return shapes


def run(b, s, hq, hkv, d, causal, dtype, repeats, rounds=4):
    q = torch.randn(b, s, hq, d, device="cuda", dtype=dtype)
    k = torch.randn(b, s, hkv, d, device="cuda", dtype=dtype)
    v = torch.randn(b, s, hkv, d, device="cuda", dtype=dtype)
    flops = 4 * b * hq * s * s * d / (2 if causal else 1)
    ours = lambda: fc.attention(q, k, v, causal=causal)  # noqa: E731
    out = ours()[0]
    fns = {"ours": ours}
    row = dict(B=b, S=s, Hq=hq, Hkv=hkv, D=d, causal=int(causal), dtype=str(dtype).split(".")[-1])
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    for name, backend in (("cudnn", torch.nn.attention.SDPBackend.CUDNN_ATTENTION),
                          ("fa2", torch.nn.attention.SDPBackend.FLASH_ATTENTION)):
        def sdpa(backend=backend):
            with torch.nn.attention.sdpa_kernel(backend):
                return F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal, enable_gqa=hq != hkv)
        try:
            ref = sdpa()
        except RuntimeError as exc:
            print(f"  {name} unavailable for {b},{s},{hq},{hkv},{d}: {str(exc).splitlines()[0][:100]}")
            continue
        fns[name] = sdpa
        row[f"maxdiff_{name}"] = require_agreement(f"{name} at {row}", out, ref.transpose(1, 2))
    ms = time_interleaved(fns, repeats=repeats, rounds=rounds, flush=False)
    row.update(ours_ms=ms["ours"], ours_TF=flops / ms["ours"] / 1e9)
    for name in fns:
        if name == "ours":
            continue
        row[f"{name}_TF"] = flops / ms[name] / 1e9
        # ours over the baseline as a speed ratio
        row[f"ours_over_{name}"] = ms[name] / ms["ours"]
    return row


def main():
    parser = base_parser(__doc__, repeats=20, rounds=True)
    parser.add_argument("--shape", action="append", help="B,S,Hq,Hkv,D (repeatable; default: the grid)")
    parser.add_argument("--dtype", choices=["bf16", "fp16", "both"], default="both")
    parser.add_argument("--causal", choices=["yes", "no", "both"], default="both")
    args = parser.parse_args()
    shapes = [tuple(int(x) for x in s.split(",")) for s in args.shape] if args.shape else grid()
    dtypes = {"bf16": [torch.bfloat16], "fp16": [torch.float16], "both": [torch.bfloat16, torch.float16]}[args.dtype]
    causals = {"yes": [True], "no": [False], "both": [False, True]}[args.causal]
    info = require_cuda("bench_dense")
    rows = []
    for dtype in dtypes:
        for shape in shapes:
            for causal in causals:
                rows.append(run(*shape, causal, dtype, args.repeats, args.rounds))
                r = rows[-1]
                print(f"  {r['dtype']} B{r['B']} S{r['S']} Hq{r['Hq']} Hkv{r['Hkv']} D{r['D']} causal {r['causal']}: "
                      f"ours {r['ours_TF']:.0f} TF, cuDNN {r.get('cudnn_TF', float('nan')):.0f} TF", flush=True)
    cols = ["dtype", "B", "S", "Hq", "Hkv", "D", "causal", "ours_ms", "ours_TF", "cudnn_TF", "ours_over_cudnn",
            "fa2_TF", "ours_over_fa2", "maxdiff_cudnn"]
    labels = [f"{r['dtype']} S{r['S']} D{r['D']} H{r['Hq']}/{r['Hkv']} {'c' if r['causal'] else 'nc'}" for r in rows]
    report(args, info, rows, cols, "dense attention forward (TFLOPS)", labels,
           {"ours": [r["ours_TF"] for r in rows], "cuDNN SDPA": [r.get("cudnn_TF") for r in rows],
            "FA2 SDPA": [r.get("fa2_TF") for r in rows]}, "TFLOPS")


if __name__ == "__main__":
    main()
