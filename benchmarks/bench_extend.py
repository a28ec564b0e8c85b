"""Extend (prefill over a cached prefix) benchmark, same run, same GPU:

* backend: what ``FlashCoreBackend`` runs per layer — ``extend_attention`` over an ``ExtendPlan``
  (page 64: the dense kernel reads the pool's pages in place; page 1: one gather of the keys,
  then the dense kernel; no prefix: the new K/V as they are); the plan itself is made once per
  batch and timed separately (``plan_ms``, host wall clock);
* backend_gather: the same with a gathered plan (``paged=False``), what page 64 ran before;
* with B > 1 and a prefix (page 64): the paged kernel in each CTA order (``order0``: one request's
  blocks together; ``order1``: the requests side by side, the plan's choice when they share
  pages), and ``distinct``: the same shapes over a table where no page is shared (what sharing
  saves);
* ours: ``paged_extend`` from a ``PagedLayout`` (the public API: the layout as a page table, an
  ``ExtendPlan`` made on every call, then the backend's kernel path; it reads the lengths back
  to the host on every call, so its time includes that host work);
* our dense kernel on already-gathered K/V (the same total work, no gather; the op, without the
  public API's argument checks);
* torch SDPA (cuDNN) on the gathered contiguous K/V, bottom-right causal mask; gather timed separately.

B requests of L tokens; the first f*L tokens of every request are one cached prefix (the same pages
for all B), the rest are new. FLOPs = 4 * Hq * D * sum_b (Sq*P + Sq*(Sq+1)/2).

    python benchmarks/bench_extend.py [--json out.json] [--plot out.png]
"""

from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

import sglang_flashcore as fc  # noqa: E402
from bench_decode import shared_page_table  # noqa: E402
from bench_util import base_parser, report, require_cuda, time_interleaved, time_ms, wall_ms  # noqa: E402
from sglang_flashcore import ops  # noqa: E402
from sglang_flashcore.extend import extend_attention, plan_extend  # noqa: E402


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
    flops = 4 * hq * d * batch * (new * prefix + new * (new + 1) / 2)
    ours = lambda: fc.paged_extend(q, k_new, v_new, k_cache, v_cache, layout, cu_q, max_seqlen_q=new, check_bounds=False)  # noqa: E731
    row = dict(B=batch, L=length, prefix=prefix, new=new, page=page, Hq=hq, Hkv=hkv, D=d)
    pre_t, ext_t = torch.full((batch,), prefix, device=dev), torch.full((batch,), new, device=dev)
    def make_plan(table=r2t, paged=None):
        return plan_extend(table, idx, pre_t, ext_t, table[:, prefix:].reshape(-1).long(), prefix_lens_cpu=[prefix] * batch,
                           extend_lens_cpu=[new] * batch, page_size=page, paged=paged)

    row["plan_ms"] = wall_ms(make_plan, repeats=repeats)
    plan = make_plan()
    row["paged"] = plan.paged
    scale = d ** -0.5

    def backend(p, kc=k_cache, vc=v_cache):
        return lambda: extend_attention(q, k_new, v_new, kc, vc, p, scale)

    # gathered, contiguous K/V of every request: [B, L, Hkv, D]
    gather = lambda: (k_cache[r2t.long()], v_cache[r2t.long()])  # noqa: E731
    kg, vg = gather()
    qb = q.view(batch, new, hq, d)
    cu_k = torch.arange(batch + 1, device=dev, dtype=torch.int32) * length
    # the op itself (the kernel), without the public API's argument checks (their syncs would count)
    dense = lambda: ops.attention_op(q, kg.view(-1, hkv, d), vg.view(-1, hkv, d), cu_q, cu_k,  # noqa: E731
                                     new, length, True, d ** -0.5)
    # the backend, the public op, our kernel on pre-gathered K/V, the gather and SDPA in alternating rounds
    fns = {"backend": backend(plan), "ours": ours, "dense": dense, "gather": gather}
    if plan.paged:
        fns["backend_gather"] = backend(make_plan(paged=False))
        if batch > 1:
            distinct, _ = shared_page_table(batch, length, page, 0.0, dev)
            fns["distinct"] = backend(make_plan(distinct))  # same pool, no page shared
    try:
        from torch.nn.attention.bias import causal_lower_right

        mask = causal_lower_right(new, length)
        qt, kt, vt = qb.transpose(1, 2), kg.transpose(1, 2), vg.transpose(1, 2)

        def sdpa():
            with torch.nn.attention.sdpa_kernel([torch.nn.attention.SDPBackend.CUDNN_ATTENTION,
                                                 torch.nn.attention.SDPBackend.FLASH_ATTENTION]):
                return F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, enable_gqa=hq != hkv)

        sdpa()
        fns["sdpa"] = sdpa
    except (RuntimeError, ImportError) as exc:
        print(f"  SDPA unavailable: {str(exc).splitlines()[0][:120]}")
    ms = time_interleaved(fns, repeats=repeats, rounds=rounds, flush=False)
    row.update({f"{name}_ms": t for name, t in ms.items()})
    row["backend_TF"] = flops / row["backend_ms"] / 1e9
    if "backend_gather" in ms:
        row["paged_over_gather"] = row["backend_gather_ms"] / row["backend_ms"]
    if "distinct" in ms:
        row["shared_speedup"] = row["distinct_ms"] / row["backend_ms"]
        # the CTA order: the launch's choice, then each order forced (this mutates the plan, so it
        # is timed on its own)
        row["grid_order"] = int(plan.grid_order.item())
        for order in (0, 1):
            plan.grid_order.fill_(order)
            row[f"order{order}_ms"] = time_ms(backend(plan), repeats=repeats, flush=False)
    row["ours_TF"] = flops / row["ours_ms"] / 1e9
    row["dense_TF"] = flops / row["dense_ms"] / 1e9
    row["ours_over_dense"] = row["ours_TF"] / row["dense_TF"]
    row["backend_over_dense"] = row["backend_TF"] / row["dense_TF"]
    if "sdpa" in ms:
        row["sdpa_TF"] = flops / row["sdpa_ms"] / 1e9
        row["ours_over_sdpa_plus_gather"] = (row["sdpa_ms"] + row["gather_ms"]) / row["ours_ms"]
        row["backend_over_sdpa_plus_gather"] = (row["sdpa_ms"] + row["gather_ms"]) / row["backend_ms"]
    kg = vg = None  # frees them (the closures hold the names)
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
                          f"dense {r['dense_TF']:.0f} TF, SDPA {r.get('sdpa_TF', float('nan')):.0f} TF", flush=True)
    cols = ["page", "B", "L", "prefix", "new", "backend_ms", "backend_TF", "plan_ms", "backend_gather_ms",
            "paged_over_gather", "order0_ms", "order1_ms", "distinct_ms", "shared_speedup", "ours_ms", "ours_TF",
            "dense_TF", "backend_over_dense", "ours_over_dense", "gather_ms", "sdpa_TF",
            "backend_over_sdpa_plus_gather", "ours_over_sdpa_plus_gather"]
    labels = [f"p{r['page']} B{r['B']} L{r['L'] // 1024}K pre{r['prefix'] * 100 // r['L']}%" for r in rows]
    report(args, info, rows, cols, "extend (bf16, Hq 32, Hkv 8, D 128)", labels,
           {"backend (ExtendPlan)": [r["backend_TF"] for r in rows], "paged_extend": [r["ours_TF"] for r in rows], "our dense, pre-gathered": [r["dense_TF"] for r in rows],
            "SDPA (gather not counted)": [r.get("sdpa_TF") for r in rows]}, "TFLOPS")


if __name__ == "__main__":
    main()
