"""Extend (prefill over a cached prefix) benchmark, same run, same GPU, every output checked
against our dense kernel on the gathered K/V before anything is timed:

* backend: one layer of what ``FlashCoreBackend`` runs, ``extend_attention`` over an
  ``ExtendPlan`` (page 64: the dense kernel reads the pool's pages in place; page 1: one gather
  of the keys, then the dense kernel; no prefix: the new K/V as they are). The plan is made once
  per batch for all layers; its host wall time is ``plan_ms``, not part of ``backend_ms``;
* backend_gather: the same with a gathered plan (``paged=False``);
* with B > 1 and a prefix (page 64): ``order0``/``order1``, the paged kernel in each CTA order
  (one request's blocks together / the requests side by side, the plan's choice when they share
  pages), and ``distinct``: the same shapes over a table where no page is shared, on a pool
  sized for that table (what sharing saves);
* ours: ``paged_extend`` from a ``PagedLayout``: the public call, which builds the page table
  and the plan on every call and reads the lengths back to the host, all inside ``ours_ms``;
* dense: our dense kernel on already-gathered K/V (the same total work, no gather);
* baselines on the gathered, contiguous K/V (``gather_ms``, timed on its own, is the indexing
  copy they need), each named by the kernel that runs: ``cudnn`` (SDPA's cuDNN backend: with
  no prefix through ``is_causal``, with one through an explicit bottom-right boolean mask),
  ``fa2`` (SDPA's FlashAttention-2 backend with ``causal_lower_right``). A baseline the torch
  build cannot run for a shape is reported as unavailable, with the reason;
* what SGLang's ``fa3`` and ``flashinfer`` backends run, reading the pool's pages in place like the
  backend (``serving_baselines``: ``fa3``, ``flashinfer``, ``flashinfer_fa3``), when installed;
  those that are not are named under ``skipped``.

All timed functions alternate in rounds. B requests of L tokens; the first f*L tokens of every
request are one cached prefix (the same pages for all B), the rest are new.
FLOPs = 4 * Hq * D * sum_b (Sq*P + Sq*(Sq+1)/2).

    python benchmarks/bench_extend.py [--json out.json] [--plot out.png]
"""

from __future__ import annotations

import dataclasses
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

import sglang_flashcore as fc  # noqa: E402
from bench_decode import fp8_pools, shared_page_table, skip_reason  # noqa: E402
from bench_util import base_parser, report, require_agreement, require_cuda, time_interleaved, wall_ms  # noqa: E402
from sglang_flashcore import kernels  # noqa: E402
from sglang_flashcore.extend import extend_attention, plan_extend, widened_page_plan  # noqa: E402


def _sdpa(backend, q, k, v, **kwargs):
    with torch.nn.attention.sdpa_kernel([backend]):
        return F.scaled_dot_product_attention(q, k, v, **kwargs)


def baselines(qb, kg, vg, new, length, gqa):
    """SDPA baselines on gathered K/V [B, L, Hkv, D], each restricted to one backend:
    {name: callable returning [B, new, Hq, D]}; unavailable ones are printed and left out."""
    from torch.nn.attention import SDPBackend
    from torch.nn.attention.bias import causal_lower_right

    qt, kt, vt = qb.transpose(1, 2), kg.transpose(1, 2), vg.transpose(1, 2)
    if new == length:  # no prefix: plain causal, which cuDNN serves
        cudnn_kwargs = dict(is_causal=True)
    else:  # bottom-right causal as an explicit mask: the cuDNN backend takes boolean masks
        i = torch.arange(new, device=qb.device).unsqueeze(1)
        j = torch.arange(length, device=qb.device).unsqueeze(0)
        cudnn_kwargs = dict(attn_mask=(j <= i + (length - new)))
    candidates = {
        "cudnn": lambda: _sdpa(SDPBackend.CUDNN_ATTENTION, qt, kt, vt, enable_gqa=gqa, **cudnn_kwargs),
        "fa2": lambda: _sdpa(SDPBackend.FLASH_ATTENTION, qt, kt, vt, attn_mask=causal_lower_right(new, length),
                             enable_gqa=gqa),
    }
    found = {}
    for name, fn in candidates.items():
        try:
            fn()
        except RuntimeError as exc:
            print(f"  {name} unavailable for Sq {new} Sk {length}: {str(exc).splitlines()[0][:120]}")
            continue
        found[name] = lambda fn=fn: fn().transpose(1, 2)
    return found


SERVING_BASELINES = ["fa3", "flashinfer", "flashinfer_fa3"]


def serving_baselines(q, k_cache, v_cache, r2t, page, new, length, scale, row):
    """What SGLang's ``fa3`` and ``flashinfer`` backends run for this extend, reading the pool's pages
    in place like ours (no gather): FA3's ``flash_attn_with_kvcache`` (sgl-kernel's, or on the GPU
    box the build of tools/build_baselines.py), and FlashInfer's paged prefill over the whole
    length, causal, with its FA2 kernel (SGLang's paged prefill wrapper) and its sm90 one
    (``flashinfer_fa3``: the kernel of SGLang's ragged wrapper on Hopper). {name: callable}; one that
    is not installed or cannot run is named in ``row["skipped"]``."""
    batch, hkv, d = r2t.shape[0], k_cache.shape[1], k_cache.shape[2]
    pages_per_req = -(-length // page)
    table = (r2t[:, ::page] // page).to(torch.int32).contiguous()
    kc, vc = k_cache.view(-1, page, hkv, d), v_cache.view(-1, page, hkv, d)
    cu_q = torch.arange(batch + 1, device=q.device, dtype=torch.int32) * new
    fns, skipped = {}, {}
    try:
        from sgl_kernel.flash_attn import flash_attn_with_kvcache

        seq = torch.full((batch,), length, device=q.device, dtype=torch.int32)
        fns["fa3"] = lambda: flash_attn_with_kvcache(q, kc, vc, page_table=table, cache_seqlens=seq, cu_seqlens_q=cu_q,
                                                     max_seqlen_q=new, softmax_scale=scale, causal=True)
        fns["fa3"]()
    except Exception as exc:  # noqa: BLE001 - a baseline that is absent or fails to run is reported, not fatal
        skipped["fa3"] = skip_reason(exc)
        fns.pop("fa3", None)
    for name, backend in (("flashinfer", "fa2"), ("flashinfer_fa3", "fa3")):
        try:
            import flashinfer

            ws = torch.empty(256 * 1024 * 1024, dtype=torch.uint8, device=q.device)
            wrapper = flashinfer.BatchPrefillWithPagedKVCacheWrapper(ws, "NHD", backend=backend)
            indptr = torch.arange(batch + 1, device=q.device, dtype=torch.int32) * pages_per_req
            last = torch.full((batch,), length - (pages_per_req - 1) * page, device=q.device, dtype=torch.int32)
            wrapper.plan(cu_q, indptr, table.reshape(-1), last, q.shape[1], hkv, d, page, causal=True,
                         sm_scale=scale, q_data_type=q.dtype, kv_data_type=k_cache.dtype)
            fns[name] = lambda wrapper=wrapper: wrapper.run(q, (kc, vc))
            fns[name]()
        except Exception as exc:  # noqa: BLE001 - as above
            skipped[name] = skip_reason(exc)
            fns.pop(name, None)
    for name, why in skipped.items():
        print(f"  {name} unavailable: {why}")
    if skipped:
        row["skipped"] = skipped
    return fns


def add_best_baseline(row: dict) -> None:
    """The faster of the named baselines at this point (``best``) and the backend over it plus the
    gather: cuDNN through a boolean mask is slower than FA2 once there is a prefix."""
    timed = {name: row[f"{name}_ms"] for name in ("cudnn", "fa2") if row.get(f"{name}_ms")}
    if timed:
        row["best"] = min(timed, key=timed.get)
        row["backend_over_best_plus_gather"] = (timed[row["best"]] + row["gather_ms"]) / row["backend_ms"]


def run(batch, length, frac, page, hq, hkv, d, dtype, repeats, rounds=4, kv_dtype=None):
    dev = "cuda"
    prefix = (int(frac * length) // page) * page
    new = length - prefix
    r2t, num_slots = shared_page_table(batch, length, page, prefix / length, dev)
    k_cache = torch.randn(num_slots, hkv, d, device=dev, dtype=dtype)
    v_cache = torch.randn(num_slots, hkv, d, device=dev, dtype=dtype)
    q = torch.randn(batch * new, hq, d, device=dev, dtype=dtype)
    new_slots = r2t[:, prefix:].reshape(-1).long()
    k_new, v_new = k_cache[new_slots], v_cache[new_slots]
    idx = torch.arange(batch, device=dev)
    layout = fc.from_sglang(r2t, idx, torch.full((batch,), prefix, device=dev), page, num_slots=num_slots)
    cu_q = torch.arange(batch + 1, device=dev, dtype=torch.int32) * new
    cu_k = torch.arange(batch + 1, device=dev, dtype=torch.int32) * length
    flops = 4 * hq * d * batch * (new * prefix + new * (new + 1) / 2)
    scale = d ** -0.5
    row = dict(B=batch, L=length, prefix=prefix, new=new, page=page, Hq=hq, Hkv=hkv, D=d)
    pre_t, ext_t = torch.full((batch,), prefix, device=dev), torch.full((batch,), new, device=dev)

    def make_plan(table=r2t, paged=None):
        return plan_extend(table, idx, pre_t, ext_t, table[:, prefix:].reshape(-1).long(), prefix_lens_cpu=[prefix] * batch,
                           extend_lens_cpu=[new] * batch, page_size=page, paged=paged)

    def backend(p, kc=k_cache, vc=v_cache, kn=k_new, vn=v_new):
        return lambda: extend_attention(q, kn, vn, kc, vc, p, scale)[0]

    def dense_on(kc, vc, table):  # our dense kernel on gathered K/V: the reference of the checks
        kg, vg = kc[table.long()], vc[table.long()]
        return kg, vg, lambda: kernels.attention_cuda(q, kg.view(-1, hkv, d), vg.view(-1, hkv, d), cu_q, cu_k, new,
                                                      length, True, scale)[0]

    row["plan_ms"] = wall_ms(make_plan, repeats=repeats)
    plan = make_plan()
    row["paged"] = plan.paged
    kg, vg, dense = dense_on(k_cache, v_cache, r2t)
    want = dense()
    fns = {"backend": backend(plan), "dense": dense,
           "ours": lambda: fc.paged_extend(q, k_new, v_new, k_cache, v_cache, layout, cu_q, max_seqlen_q=new,
                                           check_bounds=False)[0],
           "gather": lambda: (k_cache[r2t.long()], v_cache[r2t.long()])}
    if plan.paged:
        fns["backend_gather"] = backend(make_plan(paged=False))
        if batch > 1:
            for order in (0, 1):  # the paged kernel in each CTA order (the plan's choice is one of them)
                forced = dataclasses.replace(plan, grid_order=torch.tensor([order], dtype=torch.int32, device=dev))
                fns[f"order{order}"] = backend(forced)
            row["grid_order"] = int(plan.grid_order.item())
    fns.update(baselines(q.view(batch, new, hq, d), kg, vg, new, length, hq != hkv))
    fns.update(serving_baselines(q, k_cache, v_cache, r2t, page, new, length, scale, row))
    for name, fn in fns.items():
        if name != "gather":
            row[f"maxdiff_{name}"] = require_agreement(f"{name} at {row}", fn().reshape(want.shape), want)
    if kv_dtype is not None:
        # the backend over an FP8 pool (K / 0.5, V / 2, as SGLang stores them) and the plan it makes:
        # paged plans read a bf16 copy of the distinct pages, widened per layer (inside backend_fp8_ms,
        # the plan's distinct-page count inside fp8_plan_ms); the new tokens' unquantized K/V as they are
        k8, v8, k_deq, v_deq = fp8_pools(k_cache, v_cache, kv_dtype, 0.5, 2.0)
        kn8, vn8 = k_deq[new_slots], v_deq[new_slots]
        row["fp8_plan_ms"] = wall_ms(lambda: widened_page_plan(make_plan()), repeats=repeats)
        fp8_plan = widened_page_plan(make_plan())
        fns["backend_fp8"] = lambda: extend_attention(q, kn8, vn8, k8, v8, fp8_plan, scale, new_kv_in_cache=False,
                                                      k_scale=0.5, v_scale=2.0)[0]
        *_, dense_fp8 = dense_on(k_deq, v_deq, r2t)
        k_deq = v_deq = None
        row["maxdiff_backend_fp8"] = require_agreement(f"backend over {kv_dtype} at {row}", fns["backend_fp8"](),
                                                       dense_fp8())
        dense_fp8 = None
    if plan.paged and batch > 1:  # no page shared, on a pool sized for its own table
        distinct, distinct_slots = shared_page_table(batch, length, page, 0.0, dev)
        kd = torch.randn(distinct_slots, hkv, d, device=dev, dtype=dtype)
        vd = torch.randn(distinct_slots, hkv, d, device=dev, dtype=dtype)
        assert int(distinct.max()) < kd.shape[0], "the distinct control's table must lie inside its pool"
        d_new = distinct[:, prefix:].reshape(-1).long()
        fns["distinct"] = backend(make_plan(distinct), kd, vd, kd[d_new], vd[d_new])
        *_, dense_distinct = dense_on(kd, vd, distinct)
        row["maxdiff_distinct"] = require_agreement(f"distinct at {row}", fns["distinct"](), dense_distinct())
    ms = time_interleaved(fns, repeats=repeats, rounds=rounds, flush=False)
    row.update({f"{name}_ms": t for name, t in ms.items()})
    for name in ("backend", "ours", "dense", "cudnn", "fa2", *SERVING_BASELINES):
        if name in ms:
            row[f"{name}_TF"] = flops / ms[name] / 1e9
    for name in SERVING_BASELINES:  # they read the pool in place, as the backend does
        if name in ms:
            row[f"backend_over_{name}"] = ms[name] / ms["backend"]
    if "backend_gather" in ms:
        row["paged_over_gather"] = ms["backend_gather"] / ms["backend"]
    if "backend_fp8" in ms:
        row["fp8_over_bf16"] = ms["backend"] / ms["backend_fp8"]  # speed of FP8 relative to bf16
    if "distinct" in ms:
        row["shared_speedup"] = ms["distinct"] / ms["backend"]
    row["ours_over_dense"] = ms["dense"] / ms["ours"]
    row["backend_over_dense"] = ms["dense"] / ms["backend"]
    for name in ("cudnn", "fa2"):
        if name in ms:  # the baseline needs the gathered K/V: its time includes the gather
            row[f"backend_over_{name}_plus_gather"] = (ms[name] + ms["gather"]) / ms["backend"]
            row[f"ours_over_{name}_plus_gather"] = (ms[name] + ms["gather"]) / ms["ours"]
    add_best_baseline(row)
    kg = vg = kd = vd = None  # frees them (the closures hold the names)
    fns = None
    torch.cuda.empty_cache()
    return row


def main():
    parser = base_parser(__doc__, repeats=10, rounds=True)
    parser.add_argument("--lengths", default="4096,16384")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--fractions", default="0,0.5,0.9")
    parser.add_argument("--pages", default="64,1")
    parser.add_argument("--kv-dtype", choices=["auto", "fp8_e4m3", "fp8_e5m2"], default="auto",
                        help="also time the backend over an FP8 pool of this format (SGLang's --kv-cache-dtype)")
    args = parser.parse_args()
    kv_dtype = {"auto": None, "fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}[args.kv_dtype]
    info = require_cuda("bench_extend")
    rows = []
    for page in map(int, args.pages.split(",")):
        for length in map(int, args.lengths.split(",")):
            for batch in map(int, args.batches.split(",")):
                if batch * length > 131072 or (page == 1 and batch * length > 32768):
                    continue  # keep one call within memory and time
                for frac in map(float, args.fractions.split(",")):
                    rows.append(run(batch, length, frac, page, 32, 8, 128, torch.bfloat16, args.repeats, args.rounds,
                                    kv_dtype))
                    r = rows[-1]
                    extra = "".join(f", {k} {r[k]:.2f}" for k in ("paged_over_gather", "shared_speedup", "fp8_over_bf16")
                                    if k in r)
                    print(f"  page {page} B{batch} L{length} prefix {r['prefix']}: backend {r['backend_TF']:.0f} TF "
                          f"(plan {r['plan_ms']:.3f} ms{extra}), paged_extend {r['ours_TF']:.0f} TF, "
                          f"dense {r['dense_TF']:.0f} TF, cuDNN {r.get('cudnn_TF', float('nan')):.0f} TF, "
                          f"FA2 {r.get('fa2_TF', float('nan')):.0f} TF", flush=True)
    cols = ["page", "B", "L", "prefix", "new", "backend_ms", "backend_TF", "plan_ms", "backend_gather_ms",
            "paged_over_gather", "order0_ms", "order1_ms", "distinct_ms", "shared_speedup", "ours_ms", "ours_TF",
            "dense_TF", "backend_over_dense", "ours_over_dense", "gather_ms", "cudnn_TF", "fa2_TF",
            "best", "backend_over_best_plus_gather", "backend_over_cudnn_plus_gather", "backend_over_fa2_plus_gather",
            "fa3_TF", "backend_over_fa3", "flashinfer_TF", "backend_over_flashinfer", "flashinfer_fa3_TF",
            "backend_over_flashinfer_fa3"] + (["backend_fp8_ms", "fp8_over_bf16"] if kv_dtype is not None else [])
    labels = [f"p{r['page']} B{r['B']} L{r['L'] // 1024}K pre{r['prefix'] * 100 // r['L']}%" for r in rows]
    report(args, info, rows, cols, "extend (bf16, Hq 32, Hkv 8, D 128)", labels,
           {"backend (ExtendPlan)": [r["backend_TF"] for r in rows], "paged_extend": [r["ours_TF"] for r in rows], "our dense, pre-gathered": [r["dense_TF"] for r in rows],
            "cuDNN SDPA (gather not counted)": [r.get("cudnn_TF") for r in rows],
            "FA2 SDPA (gather not counted)": [r.get("fa2_TF") for r in rows],
            **{label: [r.get(f"{name}_TF") for r in rows] for name, label in (
                ("fa3", "FA3 flash_attn_with_kvcache (paged)"), ("flashinfer", "FlashInfer paged prefill (FA2)"),
                ("flashinfer_fa3", "FlashInfer paged prefill (sm90)")) if any(f"{name}_TF" in r for r in rows)}},
           "TFLOPS")


if __name__ == "__main__":
    main()
