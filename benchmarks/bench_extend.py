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
  build cannot run for a shape is reported as unavailable, with the reason.

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
from bench_decode import shared_page_table  # noqa: E402
from bench_util import base_parser, report, require_agreement, require_cuda, time_interleaved, wall_ms  # noqa: E402
from sglang_flashcore import kernels  # noqa: E402
from sglang_flashcore.extend import extend_attention, plan_extend  # noqa: E402


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


def add_best_baseline(row: dict) -> None:
    """The faster of the named baselines at this point (``best``) and the backend over it plus the
    gather: cuDNN through a boolean mask is slower than FA2 once there is a prefix."""
    timed = {name: row[f"{name}_ms"] for name in ("cudnn", "fa2") if row.get(f"{name}_ms")}
    if timed:
        row["best"] = min(timed, key=timed.get)
        row["backend_over_best_plus_gather"] = (timed[row["best"]] + row["gather_ms"]) / row["backend_ms"]


def run(batch, length, frac, page, hq, hkv, d, dtype, repeats, rounds=4):
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
    for name, fn in fns.items():
        if name != "gather":
            row[f"maxdiff_{name}"] = require_agreement(f"{name} at {row}", fn().reshape(want.shape), want)
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
    for name in ("backend", "ours", "dense", "cudnn", "fa2"):
        if name in ms:
            row[f"{name}_TF"] = flops / ms[name] / 1e9
    if "backend_gather" in ms:
        row["paged_over_gather"] = ms["backend_gather"] / ms["backend"]
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
    args = parser.parse_args()
    info = require_cuda("bench_extend")
    rows = []
    for page in map(int, args.pages.split(",")):
        for length in map(int, args.lengths.split(",")):
            for batch in map(int, args.batches.split(",")):
                if batch * length > 131072 or (page == 1 and batch * length > 32768):
                    continue  # keep one call within memory and time
                for frac in map(float, args.fractions.split(",")):
                    rows.append(run(batch, length, frac, page, 32, 8, 128, torch.bfloat16, args.repeats, args.rounds))
                    r = rows[-1]
                    extra = "".join(f", {k} {r[k]:.2f}" for k in ("paged_over_gather", "shared_speedup") if k in r)
                    print(f"  page {page} B{batch} L{length} prefix {r['prefix']}: backend {r['backend_TF']:.0f} TF "
                          f"(plan {r['plan_ms']:.3f} ms{extra}), paged_extend {r['ours_TF']:.0f} TF, "
                          f"dense {r['dense_TF']:.0f} TF, cuDNN {r.get('cudnn_TF', float('nan')):.0f} TF, "
                          f"FA2 {r.get('fa2_TF', float('nan')):.0f} TF", flush=True)
    cols = ["page", "B", "L", "prefix", "new", "backend_ms", "backend_TF", "plan_ms", "backend_gather_ms",
            "paged_over_gather", "order0_ms", "order1_ms", "distinct_ms", "shared_speedup", "ours_ms", "ours_TF",
            "dense_TF", "backend_over_dense", "ours_over_dense", "gather_ms", "cudnn_TF", "fa2_TF",
            "best", "backend_over_best_plus_gather", "backend_over_cudnn_plus_gather", "backend_over_fa2_plus_gather"]
    labels = [f"p{r['page']} B{r['B']} L{r['L'] // 1024}K pre{r['prefix'] * 100 // r['L']}%" for r in rows]
    report(args, info, rows, cols, "extend (bf16, Hq 32, Hkv 8, D 128)", labels,
           {"backend (ExtendPlan)": [r["backend_TF"] for r in rows], "paged_extend": [r["ours_TF"] for r in rows], "our dense, pre-gathered": [r["dense_TF"] for r in rows],
            "cuDNN SDPA (gather not counted)": [r.get("cudnn_TF") for r in rows],
            "FA2 SDPA (gather not counted)": [r.get("fa2_TF") for r in rows]}, "TFLOPS")


if __name__ == "__main__":
    main()
