"""Sliding windows on the device: the dense kernel's window masks and skipped key tiles, extend
plans that start at the window (pages read in place or gathered), and decode through window
tables with shared prefixes, all against the float32 reference."""

import random

import pytest
import torch

import sglang_flashcore as fc
from sglang_flashcore.extend import extend_attention, plan_extend
from sglang_flashcore.reference import attention_ref
from sglang_flashcore.window import extend_key_start
from cases import HEAD_DIMS, varlen_qkv

pytestmark = pytest.mark.gpu

TOL = {torch.float16: dict(atol=2e-3, rtol=1e-3), torch.bfloat16: dict(atol=1.5e-2, rtol=1e-2)}
# around the 128-key tiles and the 64-row warpgroups: 0, a tile minus/plus one, several tiles
WINDOWS = [0, 1, 63, 64, 127, 128, 129, 255, 300, 1000, 5000]


def _random_case(i):
    rng = random.Random(9000 + i)
    d = rng.choice(HEAD_DIMS)
    hkv = rng.choice([1, 2, 4])
    hq = hkv * rng.choice([1, 4, 8])
    dtype = rng.choice([torch.float16, torch.bfloat16])
    window = rng.choice(WINDOWS)
    lq, lk = [], []
    for _ in range(rng.choice([1, 2, 3, 5])):
        k_len = rng.choice([1, 17, 128, 129, rng.randint(1, 800), rng.randint(500, 3000)])
        q_len = rng.choice([k_len, 1, rng.randint(1, k_len), min(k_len, rng.randint(100, 400))])
        lq.append(q_len)
        lk.append(k_len)
    return d, hq, hkv, dtype, window, lq, lk


@pytest.mark.parametrize("i", range(160))
def test_dense_window_matches_reference(i):
    d, hq, hkv, dtype, window, lq, lk = _random_case(i)
    q, k, v, cq, ck = varlen_qkv(lq, lk, hq, hkv, d, dtype, seed=i)
    out, lse = fc.attention(q, k, v, causal=True, cu_seqlens_q=cq, cu_seqlens_k=ck, window_left=window)
    ref_o, ref_l = attention_ref(q, k, v, causal=True, cu_seqlens_q=cq, cu_seqlens_k=ck, window_left=window)
    torch.testing.assert_close(out.float(), ref_o, **TOL[dtype])
    torch.testing.assert_close(lse, ref_l.float(), atol=2e-3, rtol=1e-4)


@pytest.mark.parametrize("page,paged", [(1, False), (16, True), (64, True), (64, False)])
@pytest.mark.parametrize("window", [0, 100, 128, 700])
def test_extend_from_the_window_start_matches_reference(page, paged, window):
    from cases import make_extend_case

    prefix, ext = [900, 0, 64, 2000], [300, 129, 1, 40]
    case = make_extend_case(prefix, ext, page, 8, 2, 128, torch.bfloat16, device="cuda", seed=window + page,
                            shared=False)
    pt = case.table
    prefix_t = torch.tensor(prefix, device="cuda")
    start = extend_key_start(prefix_t, window)
    plan = plan_extend(pt.req_to_token.cuda(), pt.req_pool_indices.cuda(), prefix_t, torch.tensor(ext, device="cuda"),
                       case.out_cache_loc, prefix_lens_cpu=prefix, extend_lens_cpu=ext, page_size=page, paged=paged,
                       key_start=start, key_start_cpu=start.tolist())
    out, _ = extend_attention(case.q, case.k_new, case.v_new, case.k_cache, case.v_cache, plan, 128 ** -0.5,
                              window_left=window)
    full = plan_extend(pt.req_to_token.cuda(), pt.req_pool_indices.cuda(), prefix_t, torch.tensor(ext, device="cuda"),
                       case.out_cache_loc, prefix_lens_cpu=prefix, extend_lens_cpu=ext, page_size=page, paged=False)
    keys = case.k_cache[full.key_slots].float()
    values = case.v_cache[full.key_slots].float()
    want, _ = attention_ref(case.q.float(), keys, values, causal=True, cu_seqlens_q=full.cu_seqlens_q,
                            cu_seqlens_k=full.cu_seqlens_k, window_left=window, softmax_scale=128 ** -0.5)
    torch.testing.assert_close(out.float(), want, **TOL[torch.bfloat16])


@pytest.mark.parametrize("pattern", ["none", "prefix", "identical"])
@pytest.mark.parametrize("window", [0, 63, 64, 1000, 100000])
@pytest.mark.parametrize("page", [1, 64])
def test_decode_window_matches_reference(pattern, window, page):
    from cases import make_page_table

    lengths = [3000, 1, 700, 2049, 64]
    pt = make_page_table(pattern, lengths, page, seed=window)
    hq, hkv, d = 32, 8, 128
    g = torch.Generator(device="cuda").manual_seed(window)
    q = torch.randn(len(lengths), hq, d, device="cuda", generator=g).bfloat16()
    k = torch.randn(pt.num_slots, hkv, d, device="cuda", generator=g).bfloat16()
    v = torch.randn(pt.num_slots, hkv, d, device="cuda", generator=g).bfloat16()
    r2t, rows, lens = pt.req_to_token.cuda(), pt.req_pool_indices.cuda(), pt.seq_lens.cuda()
    out, lse = fc.paged_decode_table(q, k, v, r2t, rows, lens, page_size=page, window_left=window)
    ref, ref_lse = fc.paged_decode_table(q.cpu().float(), k.cpu().float(), v.cpu().float(), r2t.cpu(), rows.cpu(),
                                         lens.cpu(), page_size=page, window_left=window)
    torch.testing.assert_close(out.float().cpu(), ref, **TOL[torch.bfloat16])
    torch.testing.assert_close(lse.cpu(), ref_lse, atol=2e-3, rtol=1e-4)
