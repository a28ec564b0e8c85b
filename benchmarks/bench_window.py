"""Sliding-window attention benchmark: ours against FlashAttention-3's local attention and
FlashInfer's ``window_left``, in the same run on the same GPU, each baseline checked against ours
before it is timed (a baseline that is not installed or fails is named under ``skipped``).

Prefill: causal varlen attention of B requests of S tokens with a window W: ``fc.attention(...,
window_left=W)`` (its key tiles left of each work tile's window are skipped), ours without the
window (what the window saves) and with a window of S (the windowed kernel over the causal work:
what that kernel variant costs apart from its masked edge tiles), FA3's
``flash_attn_varlen_func(window_size=(W, 0))`` and FlashInfer's ragged FA2 prefill planned with
``window_left=W``.

Decode: B requests of C cached tokens, one query each, the window's W + 1 keys read: the backend's
path (``window.window_table`` into a planner's table, ``DecodePlanner.run``; the per-step table and
plan timed apart as ``plan_ms``), FA3's ``flash_attn_with_kvcache(window_size=(W, 0))`` over the
whole page table (as SGLang's ``fa3`` backend calls it) and FlashInfer's CUDA-core paged decode with
``window_left=W``. A 256 MB L2 flush before every decode call.

    python benchmarks/bench_window.py [--json out.json] [--plot out.png]
    python benchmarks/bench_window.py --prefill 4,8192,1023 --decode 32,32768,4095,64
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

import sglang_flashcore as fc  # noqa: E402
from sglang_flashcore.decode import DecodePlanner, planner_group  # noqa: E402
from sglang_flashcore.window import window_table  # noqa: E402
from bench_decode import flashinfer_pool, shared_page_table, skip_reason  # noqa: E402
from bench_util import (base_parser, report, require_agreement, require_cuda, time_interleaved,  # noqa: E402
                        timed_series, wall_ms)

HQ, HKV, D = 32, 8, 128  # Llama-3-8B / Gemma-3-27B-like attention (bf16)
PREFILL = [(4, 8192, 1023), (1, 32768, 4095), (16, 2048, 511)]  # B, S, W
DECODE = [(32, 32768, 4095, 64), (64, 8192, 1023, 64), (32, 32768, 4095, 1)]  # B, C, W, page


def _checked(fns, row, name, make, ours_out):
    try:
        fns[name] = make()
        row[f"maxdiff_{name}"] = require_agreement(f"{name} at {row}", ours_out, fns[name]())
    except Exception as exc:  # noqa: BLE001 - a baseline that cannot run is reported, not fatal
        fns.pop(name, None)
        row.setdefault("skipped", {})[name] = skip_reason(exc)
        print(f"  {name} unavailable: {row['skipped'][name]}")


def run_prefill(b, s, window, repeats, rounds):
    dtype = torch.bfloat16
    q = torch.randn(b * s, HQ, D, device="cuda", dtype=dtype)
    k, v = (torch.randn(b * s, HKV, D, device="cuda", dtype=dtype) for _ in range(2))
    cu = torch.arange(0, b + 1, device="cuda", dtype=torch.int32) * s
    scale = D ** -0.5
    ours = lambda: fc.attention(q, k, v, causal=True, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=s,  # noqa: E731
                                max_seqlen_k=s, softmax_scale=scale, window_left=window)
    out = ours()[0]
    full = lambda window_left: lambda: fc.attention(q, k, v, causal=True, cu_seqlens_q=cu,  # noqa: E731
                                                     cu_seqlens_k=cu, max_seqlen_q=s, max_seqlen_k=s,
                                                     softmax_scale=scale, window_left=window_left)
    # the causal kernel, and the windowed kernel with a window that hides no key (the same work):
    # what the windowed kernel variant itself costs, apart from the masked edge tiles
    fns = {"ours": ours, "ours_no_window": full(-1), "ours_full_window": full(s)}
    row = dict(op="prefill", B=b, S=s, W=window)

    def fa3():
        from sgl_kernel.flash_attn import flash_attn_varlen_func

        return lambda: flash_attn_varlen_func(q, k, v, cu, cu, s, s, softmax_scale=scale, causal=True,
                                              window_size=(window, 0))

    def flashinfer():
        import flashinfer

        ws = torch.empty(256 * 1024 * 1024, dtype=torch.uint8, device="cuda")
        wrapper = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(ws, "NHD", backend="fa2")
        wrapper.plan(cu, cu, HQ, HKV, D, causal=True, window_left=window, q_data_type=dtype, kv_data_type=dtype)
        return lambda: wrapper.run(q, k, v)

    _checked(fns, row, "fa3", fa3, out)
    _checked(fns, row, "flashinfer", flashinfer, out)
    ms = time_interleaved(fns, repeats=repeats, rounds=rounds, flush=False)
    # FLOPs of the keys each query sees: min(i + 1, W + 1) for query i of a request
    keys = sum(min(i + 1, window + 1) for i in range(s)) * b
    flops = 4 * HQ * D * keys
    for name, t in ms.items():
        row[f"{name}_ms"] = t
        row[f"{name}_TF"] = flops / t / 1e9
        if name != "ours":
            row[f"ours_over_{name}"] = t / ms["ours"]
    return row


def run_decode(b, context, window, page, repeats, rounds):
    dtype = torch.bfloat16
    r2t, slots = shared_page_table(b, context, page, 0.0, "cuda")
    k_cache, v_cache = (torch.randn(slots, HKV, D, device="cuda", dtype=dtype) for _ in range(2))
    q = torch.randn(b, HQ, D, device="cuda", dtype=dtype)
    rows = torch.arange(b, device="cuda")
    seq = torch.full((b,), context, device="cuda", dtype=torch.int32)
    scale = D ** -0.5
    planner = DecodePlanner(b, HQ, D, "cuda")

    def plan():
        table, keys = window_table(r2t, rows, seq, window)
        planner.plan(table, rows, keys, HKV, planner_group(HQ, HKV))

    plan()
    ours = lambda: planner.run(q, k_cache, v_cache, scale, page)  # noqa: E731
    out = ours()[0]
    ref = fc.paged_decode_table(q, k_cache, v_cache, r2t, rows, seq, page_size=page, window_left=window)[0]
    row = dict(op="decode", B=b, C=context, W=window, page=page,
               maxdiff_api=require_agreement("paged_decode_table", out, ref))
    fns = {"ours": ours}

    def fa3():
        from sgl_kernel.flash_attn import flash_attn_with_kvcache

        pages = (r2t[:, ::page] // page).to(torch.int32).contiguous()
        cu_q = torch.arange(b + 1, device="cuda", dtype=torch.int32)
        kc, vc = k_cache.view(-1, page, HKV, D), v_cache.view(-1, page, HKV, D)
        return lambda: flash_attn_with_kvcache(q, kc, vc, page_table=pages, cache_seqlens=seq, cu_seqlens_q=cu_q,
                                               max_seqlen_q=1, softmax_scale=scale, causal=True,
                                               window_size=(window, 0))

    def flashinfer():
        import flashinfer

        kv = flashinfer_pool(k_cache, v_cache, page)
        pages_per_req = -(-context // page)
        indices = (r2t[:, ::page] // page).reshape(-1).to(torch.int32)
        indptr = torch.arange(0, b + 1, device="cuda", dtype=torch.int32) * pages_per_req
        last = torch.full((b,), context - (pages_per_req - 1) * page, device="cuda", dtype=torch.int32)
        ws = torch.empty(256 * 1024 * 1024, dtype=torch.uint8, device="cuda")
        wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(ws, "NHD")
        wrapper.plan(indptr, indices, last, HQ, HKV, D, page, window_left=window, data_type=dtype, q_data_type=dtype)
        return lambda: wrapper.run(q, kv)

    _checked(fns, row, "fa3", fa3, out)
    _checked(fns, row, "flashinfer", flashinfer, out)
    row["plan_ms"] = wall_ms(lambda: (plan(), torch.cuda.synchronize()), repeats=repeats)
    ms = time_interleaved(fns, repeats=repeats, rounds=rounds, flush=True)
    read_gb = 2 * b * min(context, window + 1) * HKV * D * 2 / 1e9  # the window's K and V
    for name, t in ms.items():
        row[f"{name}_ms"] = t
        row[f"{name}_TBs"] = read_gb / t
        if name != "ours":
            row[f"ours_over_{name}"] = t / ms["ours"]
    return row


def main():
    parser = base_parser(__doc__, repeats=20, rounds=True)
    parser.add_argument("--prefill", action="append", help="B,S,W (repeatable; empty string: none)")
    parser.add_argument("--decode", action="append", help="B,C,W,page (repeatable; empty string: none)")
    args = parser.parse_args()
    parse = lambda specs, default: default if specs is None else [tuple(map(int, x.split(","))) for x in specs if x]  # noqa: E731
    info = require_cuda("bench_window")
    info["shapes"] = f"Hq {HQ}, Hkv {HKV}, D {D}, bf16"
    rows = []
    for b, s, w in parse(args.prefill, PREFILL):
        rows.append(run_prefill(b, s, w, args.repeats, args.rounds))
        r = rows[-1]
        print(f"  prefill B{b} S{s} W{w}: ours {r['ours_ms']:.3f} ms ({r['ours_TF']:.0f} TF), "
              f"no window {r['ours_no_window_ms']:.3f} ms (windowed kernel {r['ours_full_window_ms']:.3f} ms), "
              f"FA3 {r.get('fa3_ms', float('nan')):.3f} ms, "
              f"FlashInfer {r.get('flashinfer_ms', float('nan')):.3f} ms", flush=True)
    for b, c, w, page in parse(args.decode, DECODE):
        rows.append(run_decode(b, c, w, page, args.repeats, args.rounds))
        r = rows[-1]
        print(f"  decode B{b} C{c} W{w} page {page}: ours {r['ours_ms']:.3f} ms ({r['ours_TBs']:.2f} TB/s, "
              f"plan {r['plan_ms']:.3f} ms), FA3 {r.get('fa3_ms', float('nan')):.3f} ms, "
              f"FlashInfer {r.get('flashinfer_ms', float('nan')):.3f} ms", flush=True)
    cols = ["op", "B", "S", "C", "W", "page", "ours_ms", "ours_TF", "ours_TBs", "plan_ms", "ours_no_window_ms",
            "ours_over_ours_no_window", "ours_full_window_ms", "fa3_ms", "ours_over_fa3", "flashinfer_ms",
            "ours_over_flashinfer", "maxdiff_fa3", "maxdiff_flashinfer", "maxdiff_api"]
    labels = [f"{r['op']} B{r['B']} {'S' + str(r['S']) if 'S' in r else 'C' + str(r['C'])} W{r['W']}"
              + (f" p{r['page']}" if "page" in r else "") for r in rows]
    series = {"ours": [r["ours_ms"] for r in rows]}
    series.update(timed_series(rows, (("fa3", "FA3 (local)"), ("flashinfer", "FlashInfer (window_left)"),
                                      ("ours_no_window", "ours, no window"),
                                      ("ours_full_window", "ours, windowed kernel, window S"))))
    report(args, info, rows, cols, "sliding-window attention (bf16, Hq 32, Hkv 8, D 128)", labels, series,
           "ms per call (one layer)")


if __name__ == "__main__":
    main()
