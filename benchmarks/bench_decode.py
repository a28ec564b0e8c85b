"""Decode benchmark: FlashCore's paged decode vs torch SDPA (cuDNN) on dense K/V, same run.

Configurations from ../shared/BENCHMARKS.md (B, Hq, context, D, page, shared fraction), each
with Hkv = 32 and 8, at its shared fraction and at 0. "Shared fraction f": the first
f*context tokens of every request are the same pages. For every point: our time (``ours``:
the page-table planner's decode kernel, planned once, which the SGLang backend runs per layer;
``api``: the public ``fc.paged_decode`` over a ``PagedLayout``, which plans on every call with the
same GPU planner), the unique bytes the step must read, our effective bandwidth, the lower bound
(unique bytes / copy bandwidth measured in this run), cuDNN SDPA's time on contiguous K/V of the
same requests (what a backend without sharing pays), what SGLang's ``flashinfer`` and ``fa3``
backends run when they are installed (``serving_baselines``: FlashInfer's paged decode on CUDA and
tensor cores, over bf16 and FP8-e4m3 K/V, and FA3's ``flash_attn_with_kvcache``; each checked
against ours, timed in the same rounds, and named under ``skipped`` when it cannot run), and the
per-step planning time (``plan_ms``: the GPU planner, host wall clock until its kernels finish).

    python benchmarks/bench_decode.py [--quick] [--json out.json] [--plot out.png]
    python benchmarks/bench_decode.py --config 8,32,131072,128,128,0.7 --hkv 8
"""

from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

import sglang_flashcore as fc  # noqa: E402
from sglang_flashcore.decode import DecodePlanner  # noqa: E402
from bench_util import (base_parser, copy_bandwidth_tbs, report, require_agreement, require_cuda,  # noqa: E402
                        time_interleaved, time_ms, timed_series, wall_ms)

SEED_CONFIGS = [  # B, Hq, context, D, page, shared fraction
    (8, 32, 128 * 1024, 128, 128, 0.7),
    (16, 32, 32 * 1024, 128, 128, 0.5),
    (32, 32, 8 * 1024, 128, 128, 0.3),
]
LAYERS = 32  # a step plans once for all layers (Llama-3-8B)
SERVING_BASELINES = ["flashinfer", "flashinfer_tc", "flashinfer_fp8", "flashinfer_tc_fp8", "fa3"]


def shared_page_table(batch, context, page, shared_frac, device, shuffled=True):
    """req_to_token for ``batch`` requests whose first shared_frac*context tokens share pages.
    Pages are handed out in a shuffled order, as a long-running allocator would (``shuffled``), or
    in order, each request's pages consecutive in the pool (what a fresh allocator gives)."""
    shared_pages = int(shared_frac * context) // page
    own_pages = -(-context // page) - shared_pages
    total_pages = shared_pages + batch * own_pages
    if shuffled:
        perm = torch.randperm(total_pages, device=device, dtype=torch.int64)
    else:
        perm = torch.arange(total_pages, device=device, dtype=torch.int64)
    per_req = torch.cat([
        perm[:shared_pages].expand(batch, shared_pages),
        perm[shared_pages:].view(batch, own_pages),
    ], dim=1)
    slots = (per_req.unsqueeze(-1) * page + torch.arange(page, device=device)).view(batch, -1)[:, :context]
    return slots.to(torch.int32).contiguous(), total_pages * page


def flashinfer_pool(k_cache, v_cache, page):
    """The same K/V in FlashInfer's paged layout [pages, 2, page, Hkv, D] (a copy, built once per
    point for both FlashInfer kernels), or None when FlashInfer is not installed."""
    try:
        import flashinfer  # noqa: F401
    except ImportError:
        return None
    hkv, d = k_cache.shape[1], k_cache.shape[2]
    return torch.stack([k_cache.view(-1, page, hkv, d), v_cache.view(-1, page, hkv, d)], dim=1)


def flashinfer_decode(q, kv, r2t, page, batch, context, use_tensor_cores=False):
    """FlashInfer's paged decode over ``kv`` (from ``flashinfer_pool``): its CUDA-core kernel, or
    with ``use_tensor_cores`` its prefill kernel, which FlashInfer advises for GQA."""
    import flashinfer

    hkv, d = kv.shape[3], kv.shape[4]
    pages_per_req = -(-context // page)
    indices = (r2t[:, ::page] // page).reshape(-1).to(torch.int32)
    indptr = torch.arange(0, batch + 1, device=q.device, dtype=torch.int32) * pages_per_req
    last = torch.full((batch,), context - (pages_per_req - 1) * page, device=q.device, dtype=torch.int32)
    ws = torch.empty(256 * 1024 * 1024, dtype=torch.uint8, device=q.device)
    wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(ws, "NHD", use_tensor_cores=use_tensor_cores)
    wrapper.plan(indptr, indices, last, q.shape[1], hkv, d, page, data_type=kv.dtype, q_data_type=q.dtype)
    return lambda: wrapper.run(q, kv)


def skip_reason(exc: BaseException) -> str:
    """One line saying why a baseline cannot run: the exception's type and first non-empty line."""
    line = next((x.strip() for x in str(exc).splitlines() if x.strip()), "")
    return f"{type(exc).__name__}: {line[:160]}"


def fa3_decode(q, k_cache, v_cache, r2t, page, batch, context):
    """FlashAttention-3's paged decode as SGLang's ``fa3`` backend calls it (``flash_attn_with_kvcache``
    over the pool's pages, one query token per request, the batch's scheduler metadata computed
    once); sgl-kernel's, or on the GPU box the build of tools/build_baselines.py. Raises ImportError
    when neither is installed."""
    from sgl_kernel.flash_attn import flash_attn_with_kvcache, get_scheduler_metadata

    hq, hkv, d = q.shape[1], k_cache.shape[1], k_cache.shape[2]
    pages = (r2t[:, ::page] // page).to(torch.int32).contiguous()
    seq = torch.full((batch,), context, device=q.device, dtype=torch.int32)
    cu_q = torch.arange(batch + 1, device=q.device, dtype=torch.int32)
    kc, vc = k_cache.view(-1, page, hkv, d), v_cache.view(-1, page, hkv, d)
    sched = get_scheduler_metadata(batch, 1, context, hq, hkv, d, seq, qkv_dtype=q.dtype, cu_seqlens_q=cu_q,
                                   page_size=page, causal=True)
    return lambda: flash_attn_with_kvcache(q, kc, vc, page_table=pages, cache_seqlens=seq, cu_seqlens_q=cu_q,
                                           max_seqlen_q=1, softmax_scale=q.shape[-1] ** -0.5, causal=True,
                                           scheduler_metadata=sched)


def serving_baselines(q, k_cache, v_cache, r2t, page, batch, context, out, ours_on, row):
    """What SGLang's ``flashinfer`` and ``fa3`` backends run for this decode step, each checked
    against ours before it is timed: {name: callable}. FlashInfer's CUDA-core and tensor-core
    (``_tc``) decode over bf16 and FP8-e4m3 (``_fp8``, unit scales) copies of the pool, FA3's
    ``flash_attn_with_kvcache``. The FP8 ones are checked against ours on the same FP8 values
    (``ours_on(k, v)``, dequantized to the query's dtype). A baseline that is not installed or fails
    is left out, its reason in ``row["skipped"]``."""
    fns, skipped = {}, {}
    fi_kv = flashinfer_pool(k_cache, v_cache, page)
    if fi_kv is None:
        skipped["flashinfer"] = "flashinfer not importable"
    else:
        fp8 = torch.float8_e4m3fn
        k8, v8 = k_cache.to(fp8), v_cache.to(fp8)
        ref8 = ours_on(k8.to(q.dtype), v8.to(q.dtype))
        fi_kv8 = flashinfer_pool(k8, v8, page)
        k8 = v8 = None
        for name, kv, ref, tensor_cores in (("flashinfer", fi_kv, out, False), ("flashinfer_tc", fi_kv, out, True),
                                             ("flashinfer_fp8", fi_kv8, ref8, False),
                                             ("flashinfer_tc_fp8", fi_kv8, ref8, True)):
            try:
                fns[name] = flashinfer_decode(q, kv, r2t, page, batch, context, tensor_cores)
                row[f"maxdiff_{name}"] = require_agreement(f"{name} at {row}", ref, fns[name]())
            except Exception as exc:  # noqa: BLE001 - a baseline that fails to build or run is reported, not fatal
                skipped[name] = skip_reason(exc)
                fns.pop(name, None)
    try:
        fns["fa3"] = fa3_decode(q, k_cache, v_cache, r2t, page, batch, context)
        row["maxdiff_fa3"] = require_agreement(f"fa3 at {row}", out, fns["fa3"]())
    except Exception as exc:  # noqa: BLE001 - as above
        skipped["fa3"] = skip_reason(exc)
        fns.pop("fa3", None)
    for name, why in skipped.items():
        print(f"  {name} unavailable: {why}")
    if skipped:
        row["skipped"] = skipped
    return fns


def graph_replay_ms(planner, q, k_cache, v_cache, page, repeats):
    """The decode launch captured in a CUDA graph (as SGLang runs it), replayed."""
    scale = q.shape[-1] ** -0.5
    planner.run(q, k_cache, v_cache, scale, page)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        planner.run(q, k_cache, v_cache, scale, page)
    ms = time_ms(graph.replay, repeats=repeats)
    del graph
    return ms


def fp8_pools(k_cache, v_cache, fp8, k_scale, v_scale):
    """The pools as SGLang's FP8 KV cache stores them (values / scale, cast), and the values they
    stand for in the query's dtype (exact: every FP8 value, times a power-of-two scale, is a bf16/fp16)."""
    k8, v8 = (k_cache / k_scale).to(fp8), (v_cache / v_scale).to(fp8)
    return k8, v8, k8.to(k_cache.dtype) * k_scale, v8.to(v_cache.dtype) * v_scale


def run_point(batch, hq, hkv, context, d, page, frac, copy_tbs, dtype, repeats, chunk=None, graph=False, rounds=4,
              kv_dtype=None, deterministic=False):
    dev = "cuda"
    r2t, num_slots = shared_page_table(batch, context, page, frac, dev)
    k_cache = torch.randn(num_slots, hkv, d, device=dev, dtype=dtype)
    v_cache = torch.randn(num_slots, hkv, d, device=dev, dtype=dtype)
    q = torch.randn(batch, hq, d, device=dev, dtype=dtype)
    idx = torch.arange(batch, device=dev)
    seq = torch.full((batch,), context, device=dev, dtype=torch.int32)

    # the public API's input, and the report's byte counts (the SharingPlan: torch code, every
    # unique token once, at the token level, finer than the planner's chunks)
    layout = fc.from_sglang(r2t, idx, seq, page, num_slots=num_slots, validate=False, total_tokens=batch * context)
    stats = layout.plan().stats(hkv, d, hq, q.element_size())
    api = lambda: fc.paged_decode(q, k_cache, v_cache, layout, chunk_tokens=chunk, check_bounds=False)  # noqa: E731
    api_out = api()[0]  # also builds the layout's page table, once

    planner = DecodePlanner(batch, hq, d, q.device)
    plan = lambda: planner.plan(r2t, idx, seq, hkv, hq // hkv, chunk)  # noqa: E731
    plan_ms = wall_ms(plan, repeats=10, warmup=1)
    meta = planner.meta()
    scale = d ** -0.5
    ours = lambda: planner.run(q, k_cache, v_cache, scale, page)  # noqa: E731
    out = ours()[0]
    unique_bytes = fc.decode_bytes(meta["unique_tokens"], batch, hkv, hq, d, q.element_size())

    # cuDNN SDPA (and FA2) on the gathered, contiguous K/V of the same requests, timed in rounds
    # that alternate with ours
    kd = k_cache[r2t.long()].permute(0, 2, 1, 3).contiguous()  # [B, Hkv, S, D]
    vd = v_cache[r2t.long()].permute(0, 2, 1, 3).contiguous()
    qd = q.unsqueeze(2)
    fns = {"ours": ours, "api": api}
    row = dict(B=batch, Hq=hq, Hkv=hkv, ctx=context, D=d, page=page, shared=frac)
    row["maxdiff_api"] = require_agreement(f"fc.paged_decode at {row}", api_out, out)
    for name, backend in (("cudnn", torch.nn.attention.SDPBackend.CUDNN_ATTENTION),
                          ("fa2", torch.nn.attention.SDPBackend.FLASH_ATTENTION)):
        def sdpa(backend=backend):
            with torch.nn.attention.sdpa_kernel(backend):
                return F.scaled_dot_product_attention(qd, kd, vd, enable_gqa=hq != hkv)
        try:
            ref = sdpa()
        except RuntimeError as exc:
            row[f"{name}_ms"] = None
            print(f"  {name} SDPA unavailable for this shape: {str(exc).splitlines()[0][:120]}")
            continue
        fns[name] = sdpa
        row[f"maxdiff_{name}"] = require_agreement(f"{name} at {row}", out, ref.squeeze(2))
    fns.update(serving_baselines(q, k_cache, v_cache, r2t, page, batch, context, out,
                                 lambda k, v: planner.run(q, k, v, scale, page)[0], row))
    if deterministic:  # batch-invariant mode (--enable-deterministic-inference): fixed chunks, no sharing
        det = DecodePlanner(batch, hq, d, q.device, deterministic=True)
        det.plan(r2t, idx, seq, hkv, hq // hkv)
        fns["ours_det"] = lambda: det.run(q, k_cache, v_cache, scale, page)  # noqa: E731
        row["maxdiff_ours_det"] = require_agreement(f"deterministic mode at {row}", out, fns["ours_det"]()[0])
    if kv_dtype is not None:
        # ours over an FP8 pool (K / 0.5, V / 2, as SGLang stores it with checkpoint scales), checked
        # against ours over the values it stands for, timed in the same rounds
        k8, v8, k_deq, v_deq = fp8_pools(k_cache, v_cache, kv_dtype, 0.5, 2.0)
        fns["ours_fp8"] = lambda: planner.run(q, k8, v8, scale, page, 0.5, 2.0)  # noqa: E731
        row["maxdiff_ours_fp8"] = require_agreement(f"ours over {kv_dtype} at {row}",
                                                    planner.run(q, k_deq, v_deq, scale, page)[0], fns["ours_fp8"]()[0])
        k_deq = v_deq = None
    ms = time_interleaved(fns, repeats=repeats, rounds=rounds)
    ours_ms, api_ms = ms["ours"], ms["api"]
    # the bound: every unique token once (the layout's runs, finer than the planner's chunks)
    row.update(unique_GB=stats["bytes_shared"] / 1e9, dense_GB=stats["bytes_dense"] / 1e9,
               planned_GB=unique_bytes / 1e9,
               ours_ms=ours_ms, ours_TBs=stats["bytes_shared"] / ours_ms / 1e9,
               bound_ms=stats["bytes_shared"] / (copy_tbs * 1e12) * 1e3, plan_ms=plan_ms,
               chunk=meta["chunk_tokens"], work_items=meta["work_items"], tasks=meta["tasks"],
               api_ms=api_ms)
    row["ours_over_bound"] = ours_ms / row["bound_ms"]
    if "ours_det" in ms:
        row.update(det_ms=ms["ours_det"], det_over_default=ms["ours_det"] / ours_ms)
    if "ours_fp8" in ms:
        fp8_bytes = fc.decode_bytes(stats["tokens_unique"], batch, hkv, hq, d, 1)  # K/V at one byte
        row.update(kv_dtype=str(kv_dtype).replace("torch.", ""), ours_fp8_ms=ms["ours_fp8"],
                   fp8_over_bf16=ms["ours_fp8"] / ours_ms, fp8_bound_ms=fp8_bytes / (copy_tbs * 1e12) * 1e3)
        row["fp8_over_bound"] = ms["ours_fp8"] / row["fp8_bound_ms"]
        for name in ("flashinfer_fp8", "flashinfer_tc_fp8"):
            if name in ms:
                row[f"fp8_speedup_vs_{name}"] = ms[name] / ms["ours_fp8"]
    row["api_over_ours"] = api_ms / ours_ms
    if graph:
        row["graph_ms"] = graph_replay_ms(planner, q, k_cache, v_cache, page, repeats)
    row["plan_pct_of_step"] = 100 * plan_ms / (plan_ms + LAYERS * ours_ms)
    for name in ("cudnn", "fa2"):
        if name in ms:
            row[f"{name}_ms"] = ms[name]
            row[f"{name}_TBs"] = stats["bytes_dense"] / ms[name] / 1e9
            row[f"speedup_vs_{name}"] = ms[name] / ours_ms
    for name in SERVING_BASELINES:
        if name in ms:
            row[f"{name}_ms"] = ms[name]
            row[f"speedup_vs_{name}"] = ms[name] / ours_ms
    fns = planner = None
    torch.cuda.empty_cache()
    return row


def main():
    parser = base_parser(__doc__, repeats=20, rounds=True)
    parser.add_argument("--config", action="append", help="B,Hq,context,D,page,shared (repeatable)")
    parser.add_argument("--hkv", type=int, action="append", help="KV heads (default 32 and 8)")
    parser.add_argument("--dtype", choices=["bf16", "fp16"], default="bf16")
    parser.add_argument("--quick", action="store_true", help="contexts / 8, for a smoke run")
    parser.add_argument("--chunk", type=int, action="append", help="split-KV chunk tokens (default: auto)")
    parser.add_argument("--shared-only", action="store_true", help="skip the shared-fraction-0 controls")
    parser.add_argument("--graph", action="store_true", help="also time the launch captured in a CUDA graph")
    parser.add_argument("--deterministic", action="store_true",
                        help="also time the batch-invariant mode (SGLang's --enable-deterministic-inference)")
    parser.add_argument("--kv-dtype", choices=["auto", "fp8_e4m3", "fp8_e5m2"], default="auto",
                        help="also time ours over an FP8 pool of this format (SGLang's --kv-cache-dtype)")
    args = parser.parse_args()
    kv_dtype = {"auto": None, "fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}[args.kv_dtype]
    configs = [tuple(float(x) if "." in x else int(x) for x in c.split(",")) for c in args.config] if args.config else SEED_CONFIGS
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float16
    info = require_cuda("bench_decode")
    copy_tbs = copy_bandwidth_tbs()
    info |= {"copy_TBs_read_plus_write": copy_tbs, "dtype": args.dtype, "layers_per_step": LAYERS,
             "l2_flush": "256 MB between calls"}
    print(f"copy bandwidth {copy_tbs:.2f} TB/s (read+write)")
    rows = []
    for b, hq, ctx, d, page, frac in configs:
        if args.quick:
            ctx //= 8
        for hkv in args.hkv or [32, 8]:
            for f in [frac] if args.shared_only else sorted({frac, 0.0}, reverse=True):
                for chunk in args.chunk or [None]:
                    rows.append(run_point(b, hq, hkv, ctx, d, page, f, copy_tbs, dtype, args.repeats, chunk, args.graph,
                                           args.rounds, kv_dtype, args.deterministic))
                    r = rows[-1]
                    print(f"  B{b} ctx{ctx} Hkv{hkv} shared {f} chunk {r['chunk']}: ours {r['ours_ms']:.3f} ms "
                          f"({r['ours_TBs']:.2f} TB/s, plan {r['plan_ms']:.3f} ms), paged_decode {r['api_ms']:.3f} ms, "
                          f"cuDNN {r.get('cudnn_ms') or float('nan'):.3f} ms"
                          + (f", ours {args.kv_dtype} {r['ours_fp8_ms']:.3f} ms ({r['fp8_over_bf16']:.2f}x bf16, "
                             f"{r['fp8_over_bound']:.2f}x its bound)" if "ours_fp8_ms" in r else ""), flush=True)
    cols = ["B", "Hkv", "ctx", "page", "shared", "chunk", "unique_GB", "ours_ms", "graph_ms", "ours_TBs", "bound_ms",
            "ours_over_bound", "cudnn_ms", "cudnn_TBs", "speedup_vs_cudnn", "fa2_ms", "speedup_vs_fa2", "flashinfer_ms",
            "speedup_vs_flashinfer", "flashinfer_tc_ms", "speedup_vs_flashinfer_tc", "flashinfer_fp8_ms",
            "speedup_vs_flashinfer_fp8", "flashinfer_tc_fp8_ms", "speedup_vs_flashinfer_tc_fp8", "fa3_ms",
            "speedup_vs_fa3", "maxdiff_flashinfer", "maxdiff_flashinfer_tc", "maxdiff_flashinfer_fp8",
            "maxdiff_flashinfer_tc_fp8", "maxdiff_fa3", "plan_ms", "plan_pct_of_step", "api_ms", "api_over_ours", "maxdiff_api",
            "maxdiff_cudnn"]
    if args.deterministic:
        cols += ["det_ms", "det_over_default", "maxdiff_ours_det"]
    if kv_dtype is not None:
        cols += ["kv_dtype", "ours_fp8_ms", "fp8_over_bf16", "fp8_bound_ms", "fp8_over_bound",
                 "fp8_speedup_vs_flashinfer_fp8", "fp8_speedup_vs_flashinfer_tc_fp8", "maxdiff_ours_fp8"]
    labels = [f"B{r['B']} {r['ctx'] // 1024}K Hkv{r['Hkv']} f{r['shared']}" for r in rows]
    series = {"ours": [r["ours_ms"] for r in rows], "ours, paged_decode (plans per call)": [r["api_ms"] for r in rows],
              "cuDNN SDPA (dense)": [r.get("cudnn_ms") for r in rows],
              "lower bound": [r["bound_ms"] for r in rows]}
    if kv_dtype is not None:
        series[f"ours, {args.kv_dtype} KV"] = [r.get("ours_fp8_ms") for r in rows]
    series.update(timed_series(rows, (("flashinfer", "FlashInfer paged"),
                                      ("flashinfer_tc", "FlashInfer paged, tensor cores"),
                                      ("flashinfer_tc_fp8", "FlashInfer paged, tensor cores, FP8 KV"),
                                      ("fa3", "FA3 flash_attn_with_kvcache"))))
    report(args, info, rows, cols, "paged decode, " + args.dtype, labels, series, "ms per decode step (one layer)")


if __name__ == "__main__":
    main()
