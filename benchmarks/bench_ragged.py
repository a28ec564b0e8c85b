"""Ragged (varlen) prefill benchmark: FlashCore's dense kernel on mixed-length batches, against
FlashAttention-2's varlen kernel (torch's aten op) in the same run on the same GPU.

Serving prefill batches mix lengths: one long prompt beside many short ones, or short new
tokens over long cached prefixes. A batch is written COUNTxNEW[:PREFIX] terms joined by '+':
``1x8192+60x200`` is one request of 8192 new tokens and 60 of 200; ``64x200:8192`` is 64
requests of 200 new tokens, each after an 8192-token prefix (keys = prefix + new, causal masks
bottom-right aligned). FLOPs count the visible (query, key) pairs only.

    python benchmarks/bench_ragged.py --batch 1x8192+60x200 --batch 64x200:8192
"""

from __future__ import annotations

import os
import sys
from typing import List, Tuple

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

import sglang_flashcore as fc  # noqa: E402
from bench_util import base_parser, report, require_cuda, time_interleaved  # noqa: E402

DEFAULT_BATCHES = ["1x8192+60x200", "1x8192+60x200:8192", "64x200:8192", "8x2048+56x64", "32x1000"]


def parse_batch(spec: str) -> List[Tuple[int, int]]:
    """``COUNTxNEW[:PREFIX]`` terms joined by '+' -> one (new tokens, prefix) per request."""
    requests = []
    for term in spec.split("+"):
        try:
            count, rest = term.split("x", 1)
            new, _, prefix = rest.partition(":")
            count, new, prefix = int(count), int(new), int(prefix or 0)
        except ValueError:
            raise ValueError(f"--batch: expected COUNTxNEW[:PREFIX] terms joined by '+', got {term!r} in {spec!r}")
        if count < 0 or new < 0 or prefix < 0:
            raise ValueError(f"--batch: counts and lengths must be >= 0, got {term!r}")
        requests += [(new, prefix)] * count
    return requests


def visible_pairs(new: int, prefix: int, causal: bool) -> int:
    """(query, key) pairs a request computes: bottom-right causal over prefix + new keys."""
    keys = prefix + new
    return new * keys if not causal else new * prefix + new * (new + 1) // 2


def _fa2_varlen(q, k, v, cu_q, cu_k, max_q, max_k, causal):
    return torch.ops.aten._flash_attention_forward(q, k, v, cu_q, cu_k, max_q, max_k, 0.0, causal, False)[0]


def run(spec: str, hq: int, hkv: int, d: int, causal: bool, dtype, repeats: int, rounds: int = 4):
    requests = parse_batch(spec)
    new = torch.tensor([n for n, _ in requests], dtype=torch.int32)
    keys = torch.tensor([n + p for n, p in requests], dtype=torch.int32)
    cu_q = torch.nn.functional.pad(new.cumsum(0), (1, 0)).to(torch.int32).cuda()
    cu_k = torch.nn.functional.pad(keys.cumsum(0), (1, 0)).to(torch.int32).cuda()
    max_q, max_k = int(new.max()), int(keys.max())
    q = torch.randn(int(new.sum()), hq, d, device="cuda", dtype=dtype)
    k = torch.randn(int(keys.sum()), hkv, d, device="cuda", dtype=dtype)
    v = torch.randn_like(k)
    flops = 4 * hq * d * sum(visible_pairs(n, p, causal) for n, p in requests)

    def ours():
        return fc.attention(q, k, v, causal=causal, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k,
                            max_seqlen_q=max_q, max_seqlen_k=max_k)

    out = ours()[0]
    fns = {"ours": ours}
    row = dict(batch=spec, requests=len(requests), q_tokens=int(new.sum()), Hq=hq, Hkv=hkv, D=d,
               causal=int(causal), dtype=str(dtype).split(".")[-1])
    try:
        ref = _fa2_varlen(q, k, v, cu_q, cu_k, max_q, max_k, causal)
        fns["fa2"] = lambda: _fa2_varlen(q, k, v, cu_q, cu_k, max_q, max_k, causal)
        row["maxdiff_fa2"] = (ref.float() - out.float()).abs().max().item()
    except (RuntimeError, AttributeError) as exc:
        print(f"  FA2 varlen unavailable for {spec}: {str(exc).splitlines()[0][:100]}")
    ms = time_interleaved(fns, repeats=repeats, rounds=rounds, flush=False)  # ours and FA2 in turns
    row.update(ours_ms=ms["ours"], ours_TF=flops / ms["ours"] / 1e9)
    if "fa2" in ms:
        row.update(fa2_ms=ms["fa2"], fa2_TF=flops / ms["fa2"] / 1e9, ours_over_fa2=ms["fa2"] / ms["ours"])
    return row


def main():
    parser = base_parser(__doc__, repeats=20, rounds=True)
    parser.add_argument("--batch", action="append", help="COUNTxNEW[:PREFIX] terms joined by '+' (repeatable)")
    parser.add_argument("--heads", default="32,8", help="Hq,Hkv")
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--dtype", choices=["bf16", "fp16"], default="bf16")
    parser.add_argument("--causal", choices=["yes", "no"], default="yes")
    args = parser.parse_args()
    batches = args.batch or DEFAULT_BATCHES
    for spec in batches:
        parse_batch(spec)  # bad specs fail before the GPU is touched
    hq, hkv = (int(x) for x in args.heads.split(","))
    info = require_cuda("bench_ragged.py")
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float16
    rows = [run(spec, hq, hkv, args.head_dim, args.causal == "yes", dtype, args.repeats, args.rounds)
            for spec in batches]
    columns = ["batch", "requests", "q_tokens", "ours_ms", "ours_TF", "fa2_ms", "ours_over_fa2", "maxdiff_fa2"]
    series = {"ours": [r["ours_TF"] for r in rows], "FA2 varlen": [r.get("fa2_TF") for r in rows]}
    report(args, info, rows, columns, "ragged prefill (ms; ratios > 1: ours faster)", batches, series, "TFLOPS")


if __name__ == "__main__":
    main()
