"""The logit soft-cap on the device: the dense kernel (raw-score units, the scale folded into its
exponent) and the decode kernel (log2 units, FP8 pools' widening factor folded in), against the
float32 reference."""

import random

import pytest
import torch

import sglang_flashcore as fc
from cases import HEAD_DIMS
from sglang_flashcore.reference import attention_ref

pytestmark = pytest.mark.gpu

TOL = {torch.float16: dict(atol=2e-3, rtol=1e-3), torch.bfloat16: dict(atol=1.5e-2, rtol=1e-2)}


@pytest.mark.parametrize("i", range(48))
def test_dense_softcap_matches_reference(i):
    rng = random.Random(700 + i)
    d, hkv = rng.choice(HEAD_DIMS), rng.choice([1, 2, 4])
    hq = hkv * rng.choice([1, 4])
    dtype = rng.choice([torch.float16, torch.bfloat16])
    cap = rng.choice([1.0, 20.0, 50.0])
    causal = rng.random() < 0.7
    window = rng.choice([-1, -1, 100]) if causal else -1
    lk = [rng.choice([1, 129, rng.randint(1, 1500)]) for _ in range(rng.choice([1, 3]))]
    lq = [rng.choice([n, 1, rng.randint(1, n)]) for n in lk]
    g = torch.Generator(device="cuda").manual_seed(i)
    # scores of several units, so that the cap bites
    q = (torch.randn(sum(lq), hq, d, device="cuda", generator=g) * 2).to(dtype)
    k = (torch.randn(sum(lk), hkv, d, device="cuda", generator=g) * 2).to(dtype)
    v = torch.randn(sum(lk), hkv, d, device="cuda", generator=g).to(dtype)
    cq = torch.tensor([0] + lq, device="cuda").cumsum(0).int()
    ck = torch.tensor([0] + lk, device="cuda").cumsum(0).int()
    out, lse = fc.attention(q, k, v, causal=causal, cu_seqlens_q=cq, cu_seqlens_k=ck, softcap=cap, window_left=window)
    ref, ref_lse = attention_ref(q, k, v, causal=causal, cu_seqlens_q=cq, cu_seqlens_k=ck, softcap=cap,
                                 window_left=window)
    torch.testing.assert_close(out.float(), ref, **TOL[dtype])
    seen = torch.isfinite(ref_lse)
    torch.testing.assert_close(lse[seen], ref_lse[seen].float(), atol=2e-3, rtol=1e-4)


@pytest.mark.parametrize("kv_dtype", [None, torch.float8_e4m3fn, torch.float8_e5m2], ids=str)
@pytest.mark.parametrize("cap", [2.0, 30.0])
@pytest.mark.parametrize("page", [1, 64])
@pytest.mark.parametrize("d", [128, 256])
def test_decode_softcap_matches_reference(kv_dtype, cap, page, d):
    from cases import make_page_table

    lengths = [1500, 1, 300, 64]
    pt = make_page_table("prefix", lengths, page, seed=int(cap))
    g = torch.Generator(device="cuda").manual_seed(int(cap) + page)
    q = (torch.randn(len(lengths), 32, d, device="cuda", generator=g) * 2).bfloat16()
    k = (torch.randn(pt.num_slots, 8, d, device="cuda", generator=g) * 2).bfloat16()
    v = torch.randn(pt.num_slots, 8, d, device="cuda", generator=g).bfloat16()
    scales = {}
    if kv_dtype is not None:
        k, v = (k / 0.5).to(kv_dtype), (v * 0.5).to(kv_dtype)
        scales = dict(k_scale=0.5, v_scale=2.0)
    r2t, rows, lens = pt.req_to_token.cuda(), pt.req_pool_indices.cuda(), pt.seq_lens.cuda()
    out, lse = fc.paged_decode_table(q, k, v, r2t, rows, lens, page_size=page, softcap=cap, **scales)
    # the float32 reference: FP8 pools as they are (it dequantizes them), 16-bit ones in float32
    kc, vc = (k.cpu(), v.cpu()) if kv_dtype is not None else (k.cpu().float(), v.cpu().float())
    ref, ref_lse = fc.paged_decode_table(q.cpu().float(), kc, vc, r2t.cpu(), rows.cpu(), lens.cpu(),
                                         page_size=page, softcap=cap, **scales)
    torch.testing.assert_close(out.float().cpu(), ref, **TOL[torch.bfloat16])
    torch.testing.assert_close(lse.cpu(), ref_lse, atol=2e-3, rtol=1e-4)
