"""A small grid of kernel calls checked against the reference, sized for compute-sanitizer:

    compute-sanitizer --tool memcheck python tools/sanitize_cases.py
    compute-sanitizer --tool racecheck python tools/sanitize_cases.py [decode dense extend draft]

Naming groups runs only those (racecheck over the whole grid outlasts a device call). Exits 1 if
any output differs from the reference.
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

import sglang_flashcore as fc  # noqa: E402
from cases import make_extend_case, make_page_table  # noqa: E402
from sglang_flashcore.extend import extend_attention, plan_extend  # noqa: E402
from sglang_flashcore import kernels  # noqa: E402
from sglang_flashcore.reference import attention_ref, merge_states_ref, paged_decode_ref, paged_extend_ref  # noqa: E402
from sglang_flashcore.speculative import chain_mask, draft_attention  # noqa: E402


def decode_cases():
    # pattern, page, (Hq, Hkv), D, dtype, lengths, chunk
    yield "prefix", 16, (8, 2), 128, torch.float16, [70, 1, 33], 64
    yield "none", 1, (4, 4), 64, torch.bfloat16, [5, 130], 16
    yield "tree", 64, (32, 4), 128, torch.bfloat16, [300, 200, 129, 64, 0], 128
    yield "identical", 128, (16, 16), 64, torch.float16, [257] * 3, 256
    # several hundred tasks: the table kernel's CTAs each loop over a few of them
    yield "tree", 16, (16, 4), 128, torch.bfloat16, [3000, 2000, 1000, 17], 16
    # 57 tasks of 16 KV heads, over a wave (25): the tail split cuts the last 25 one-reader items
    yield "none", 16, (32, 16), 128, torch.bfloat16, [3000, 3000, 1000, 17], 128
    # 64 query heads per KV head: each reader's rows span two 32-row tasks
    yield "prefix", 16, (64, 1), 64, torch.float16, [100, 50, 33], 16
    # the automatic chunk, moved to fill a wave of 8-KV-head tasks (not a multiple of a tile)
    yield "none", 16, (32, 8), 128, torch.bfloat16, [3000, 2500, 0, 4000], None
    # head dims served padded by the next compiled one (columns past them zero-filled, never stored)
    yield "prefix", 16, (8, 2), 96, torch.bfloat16, [300, 70, 1], 64
    yield "tree", 64, (4, 1), 192, torch.float16, [500, 129, 64], None
    # head dim 256: one CTA per SM, eight columns per merge lane
    yield "prefix", 64, (16, 2), 256, torch.bfloat16, [700, 1, 300], 128


def dense_cases():
    # q lengths, k lengths, Hq, Hkv, D, causal, dtype, sliding window (-1: none), soft-cap (0: none)
    yield [130, 1, 0], [130, 300, 5], 4, 2, 128, True, torch.bfloat16, -1, 0.0
    yield [64, 200], [64, 17], 2, 2, 64, False, torch.float16, -1, 0.0
    yield [257], [257], 8, 1, 128, False, torch.float16, -1, 0.0
    # over 132 work tiles (the persistent CTAs claim the rest), rows that see no key, empty rows
    yield [300, 129, 0, 1, 200], [300, 500, 7, 1, 50], 48, 12, 64, True, torch.bfloat16, -1, 0.0
    # sliding windows: key tiles skipped left of a work tile's window, masks on both edges; soft-caps
    yield [700, 5, 130], [900, 400, 130], 8, 2, 128, True, torch.bfloat16, 200, 0.0
    yield [300, 64], [1000, 64], 12, 4, 64, True, torch.float16, 0, 30.0
    yield [100, 40], [100, 300], 4, 4, 64, False, torch.bfloat16, -1, 5.0
    # head dim 256: 64-key tiles, O leaving half a row block at a time; with a window and a soft-cap
    yield [300, 77], [300, 200], 8, 2, 256, True, torch.bfloat16, -1, 0.0
    yield [200], [450], 4, 4, 256, True, torch.float16, 100, 20.0
    # head dims 80 and 192 in the 128 and 256 kernels (rows past a request's end stored by the warps)
    yield [150, 33], [150, 300], 8, 2, 80, True, torch.bfloat16, 60, 0.0
    yield [77], [200], 4, 2, 192, False, torch.bfloat16, -1, 0.0


def extend_cases():
    # prefix lengths, extend lengths, page, (Hq, Hkv), D, dtype, shared prefix
    yield [0, 0], [130, 1], 1, (4, 2), 128, torch.bfloat16, False
    yield [64, 64, 64], [5, 1, 70], 16, (8, 1), 64, torch.float16, True
    yield [3, 200], [129, 2], 64, (4, 4), 128, torch.float16, False
    yield [128, 128], [70, 3], 128, (8, 2), 256, torch.bfloat16, True
    yield [64, 64], [40, 90], 64, (4, 2), 96, torch.float16, True


GROUPS = ("decode", "dense", "extend", "draft")


def main(groups: list[str]) -> int:
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        raise SystemExit(f"unknown case groups {unknown}; choose from {GROUPS}")
    groups = groups or list(GROUPS)
    bad = 0
    for i, (pattern, page, (hq, hkv), d, dtype, lengths, chunk) in enumerate(decode_cases() if "decode" in groups else ()):
        pt = make_page_table(pattern, lengths, page, seed=i)
        q = torch.randn(len(lengths), hq, d, device="cuda").to(dtype)
        k = torch.randn(pt.num_slots, hkv, d, device="cuda").to(dtype)
        v = torch.randn(pt.num_slots, hkv, d, device="cuda").to(dtype)
        layout = fc.from_sglang(pt.req_to_token.cuda(), pt.req_pool_indices.cuda(), pt.seq_lens.cuda(), page)
        ref, _ = paged_decode_ref(q, k, v, layout)
        # the layout API (its page table through the GPU planner), then the page table itself
        out_layout, _ = fc.paged_decode(q, k, v, layout, chunk_tokens=chunk)
        out_table, _ = fc.paged_decode_table(q, k, v, pt.req_to_token.cuda(), pt.req_pool_indices.cuda(),
                                             pt.seq_lens.cuda(), page_size=page, chunk_tokens=chunk)
        # the same batch over an FP8 pool (its own reference)
        fp8 = (torch.float8_e4m3fn, torch.float8_e5m2)[i % 2]
        k8, v8 = (k / 0.5).to(fp8), (v * 0.5).to(fp8)
        ref8, _ = paged_decode_ref(q, k8, v8, layout, None, 0.5, 2.0)
        out_fp8, _ = fc.paged_decode(q, k8, v8, layout, chunk_tokens=chunk, k_scale=0.5, v_scale=2.0)
        # the soft-capped kernel, with a window over the same table
        ref_cap, _ = fc.paged_decode_table(q.cpu().float(), k.cpu().float(), v.cpu().float(), pt.req_to_token,
                                           pt.req_pool_indices, pt.seq_lens, page_size=page, softcap=3.0,
                                           window_left=40)
        out_cap, _ = fc.paged_decode_table(q, k, v, pt.req_to_token.cuda(), pt.req_pool_indices.cuda(),
                                           pt.seq_lens.cuda(), page_size=page, softcap=3.0, window_left=40)
        out_cap = out_cap.cpu()
        for name, out, want in (("layout", out_layout, ref), ("table", out_table, ref), ("fp8", out_fp8, ref8),
                                ("softcap, window", out_cap, ref_cap)):
            err = (out.float() - want).abs().max().item() if out.numel() else 0.0
            ok = err < 2e-2
            bad += not ok
            print(f"decode case {i} ({name}): max abs err {err:.2e} {'ok' if ok else 'MISMATCH'}")
    for i, (lq, lk, hq, hkv, d, causal, dtype, window, softcap) in enumerate(dense_cases() if "dense" in groups else ()):
        cq = torch.tensor([0] + lq, device="cuda").cumsum(0).int()
        ck = torch.tensor([0] + lk, device="cuda").cumsum(0).int()
        q = torch.randn(sum(lq), hq, d, device="cuda").to(dtype)
        k = torch.randn(sum(lk), hkv, d, device="cuda").to(dtype)
        v = torch.randn(sum(lk), hkv, d, device="cuda").to(dtype)
        out, _ = fc.attention(q, k, v, causal=causal, cu_seqlens_q=cq, cu_seqlens_k=ck, window_left=window,
                              softcap=softcap)
        ref, _ = attention_ref(q, k, v, causal=causal, cu_seqlens_q=cq, cu_seqlens_k=ck, window_left=window,
                               softcap=softcap)
        err = (out.float() - ref).abs().max().item() if out.numel() else 0.0
        ok = err < 2e-2
        bad += not ok
        print(f"dense case {i}: max abs err {err:.2e} {'ok' if ok else 'MISMATCH'}")
    for i, (prefix, ext, page, (hq, hkv), d, dtype, shared) in enumerate(extend_cases() if "extend" in groups else ()):
        case = make_extend_case(prefix, ext, page, hq, hkv, d, dtype, device="cuda", seed=i, shared=shared)
        pt = case.table
        prefix_t = torch.tensor(prefix, device="cuda")
        layout = fc.from_sglang(pt.req_to_token.cuda(), pt.req_pool_indices.cuda(), prefix_t, page)
        ref, _ = paged_extend_ref(case.q, case.k_new, case.v_new, case.k_cache, case.v_cache, layout,
                                  case.cu_seqlens_q())
        # the backend's path (ExtendPlan: pages read in place by the dense kernel for page >= 8, in
        # both CTA orders, or one gather), then the layout API's
        plan = plan_extend(pt.req_to_token.cuda(), pt.req_pool_indices.cuda(), prefix_t,
                           torch.tensor(ext, device="cuda"), case.out_cache_loc, prefix_lens_cpu=prefix,
                           extend_lens_cpu=ext, page_size=page)
        outs = [("plan", extend_attention(case.q, case.k_new, case.v_new, case.k_cache, case.v_cache, plan, d ** -0.5)[0])]
        if plan.paged:
            plan.grid_order.fill_(1 - int(plan.grid_order.item()))
            outs.append(("plan, other order",
                         extend_attention(case.q, case.k_new, case.v_new, case.k_cache, case.v_cache, plan, d ** -0.5)[0]))
        out_layout, _ = fc.paged_extend(case.q, case.k_new, case.v_new, case.k_cache, case.v_cache, layout,
                                        case.cu_seqlens_q())
        for name, out in outs + [("layout", out_layout)]:
            err = (out.float() - ref).abs().max().item() if out.numel() else 0.0
            ok = err < 2e-2
            bad += not ok
            print(f"extend case {i} ({name}): max abs err {err:.2e} {'ok' if ok else 'MISMATCH'}")
    # the verify draft kernel: chains of 1 to 9 draft tokens, with and without a soft-cap, head dim 96 padded
    draft_cases = [(3, 4, 8, 2, 128, 0.0), (1, 9, 4, 4, 256, 5.0), (2, 1, 16, 8, 64, 0.0), (2, 5, 8, 2, 96, 0.0)]
    for i, (batch, n, hq, hkv, d, softcap) in enumerate(draft_cases if "draft" in groups else ()):
        rows = batch * n
        q = torch.randn(rows, hq, d, device="cuda").bfloat16()
        k, v = (torch.randn(rows, hkv, d, device="cuda").bfloat16() for _ in range(2))
        mask = chain_mask(batch, n, "cuda")
        out_c, lse_c = torch.randn(rows, hq, d, device="cuda").bfloat16(), torch.randn(rows, hq, device="cuda")
        out, _ = kernels.draft_merge(q, k, v, mask, out_c, lse_c, d ** -0.5, softcap)
        ref, _ = merge_states_ref(out_c, lse_c, *draft_attention(q, k, v, mask, d ** -0.5, softcap))
        err = (out.float() - ref).abs().max().item()
        ok = err < 2e-2
        bad += not ok
        print(f"draft case {i}: max abs err {err:.2e} {'ok' if ok else 'MISMATCH'}")
    torch.cuda.synchronize()
    print("sanitize_cases:", "FAILED" if bad else "all cases match")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
