"""References against float64 math and torch SDPA; the public ops on CPU."""

import math

import pytest
import torch
import torch.nn.functional as F

import sglang_flashcore as fc
from cases import make_page_table, random_qkv
from sglang_flashcore.reference import (
    attention_ref,
    merge_states_ref,
    paged_decode_ref,
    paged_extend_ref,
)


def naive_attention(q, k, v, scale, causal):
    """Loops in float64: q [Sq, Hq, D], k/v [Sk, Hkv, D]."""
    sq, hq, d = q.shape
    sk, hkv, _ = k.shape
    out = torch.zeros(sq, hq, d, dtype=torch.float64)
    lse = torch.full((sq, hq), -math.inf, dtype=torch.float64)
    for h in range(hq):
        kh = h // (hq // hkv)
        for i in range(sq):
            keys = [j for j in range(sk) if not causal or j <= i + sk - sq]
            if not keys:
                continue
            s = torch.stack([(q[i, h].double() * k[j, kh].double()).sum() * scale for j in keys])
            m = s.max()
            w = torch.exp(s - m)
            lse[i, h] = m + torch.log(w.sum())
            out[i, h] = sum(w[t] * v[j, kh].double() for t, j in enumerate(keys)) / w.sum()
    return out, lse


@pytest.mark.parametrize("sq,sk", [(1, 1), (5, 9), (9, 5), (7, 7), (3, 0)])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("hq,hkv", [(4, 4), (4, 1), (6, 2)])
def test_attention_ref_matches_float64_loops(sq, sk, causal, hq, hkv):
    g = torch.Generator().manual_seed(sq * 100 + sk)
    q = torch.randn(sq, hq, 16, generator=g)
    k = torch.randn(sk, hkv, 16, generator=g)
    v = torch.randn(sk, hkv, 16, generator=g)
    out, lse = attention_ref(q[None], k[None], v[None], causal=causal, softmax_scale=0.3)
    want_o, want_l = naive_attention(q, k, v, 0.3, causal)
    torch.testing.assert_close(out[0].double(), want_o, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse[0].double(), want_l, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("hq,hkv,d", [(8, 8, 64), (8, 2, 128), (4, 1, 64)])
def test_attention_ref_matches_sdpa(causal, hq, hkv, d):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 33, hq, d, generator=g, dtype=torch.float64)
    k = torch.randn(2, 33, hkv, d, generator=g, dtype=torch.float64)
    v = torch.randn(2, 33, hkv, d, generator=g, dtype=torch.float64)
    out, _ = attention_ref(q, k, v, causal=causal)
    want = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal, enable_gqa=hq != hkv
    ).transpose(1, 2)
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-10)


def test_attention_ragged_equals_per_sequence():
    g = torch.Generator().manual_seed(1)
    lq, lk = [3, 0, 1, 17], [5, 4, 1, 17]
    q = torch.randn(sum(lq), 4, 64, generator=g)
    k = torch.randn(sum(lk), 2, 64, generator=g)
    v = torch.randn(sum(lk), 2, 64, generator=g)
    cq = torch.tensor([0] + list(torch.tensor(lq).cumsum(0)), dtype=torch.int32)
    ck = torch.tensor([0] + list(torch.tensor(lk).cumsum(0)), dtype=torch.int32)
    out, lse = fc.attention(q, k, v, causal=True, cu_seqlens_q=cq, cu_seqlens_k=ck)
    for b in range(4):
        qs, qe, ks, ke = int(cq[b]), int(cq[b + 1]), int(ck[b]), int(ck[b + 1])
        if qe == qs:
            continue
        o, s = attention_ref(q[None, qs:qe], k[None, ks:ke], v[None, ks:ke], causal=True)
        torch.testing.assert_close(out[qs:qe], o[0])
        torch.testing.assert_close(lse[qs:qe], s[0])


def test_causal_rows_that_see_nothing_give_zero_and_minus_inf():
    q = torch.randn(1, 4, 2, 64)
    k = torch.randn(1, 2, 2, 64)
    out, lse = fc.attention(q, k, k, causal=True)  # Sq > Sk: rows 0 and 1 see no key
    assert torch.all(out[0, :2] == 0) and torch.all(torch.isneginf(lse[0, :2]))
    assert torch.isfinite(lse[0, 2:]).all()


@pytest.mark.parametrize("pattern", ["none", "prefix", "tree", "empty_rows"])
@pytest.mark.parametrize("page_size", [1, 16])
def test_paged_decode_equals_dense_sdpa(pattern, page_size):
    pt = make_page_table(pattern, [40, 1, 97, 64], page_size, seed=2)
    layout = fc.from_sglang(pt.req_to_token, pt.req_pool_indices, pt.seq_lens, page_size)
    q, k, v = random_qkv(4, 8, 2, 64, pt.num_slots, torch.float64)
    out, lse = paged_decode_ref(q, k, v, layout)
    for b, row in enumerate(pt.rows):
        if not row:
            assert torch.all(out[b] == 0) and torch.isneginf(lse[b]).all()
            continue
        kb, vb = k[row].transpose(0, 1), v[row].transpose(0, 1)
        want = F.scaled_dot_product_attention(q[b][:, None], kb, vb, enable_gqa=True)[:, 0]
        torch.testing.assert_close(out[b], want, rtol=1e-10, atol=1e-10)


def test_paged_decode_head_major_pages_equal_slot_major():
    page = 16
    pt = make_page_table("prefix", [50, 77], page, seed=4)
    layout = fc.from_sglang(pt.req_to_token, pt.req_pool_indices, pt.seq_lens, page)
    q, k, v = random_qkv(2, 4, 2, 64, pt.num_slots)
    pages = lambda t: t.view(-1, page, 2, 64).transpose(1, 2).contiguous()  # noqa: E731
    a = fc.paged_decode(q, k, v, layout)
    b = fc.paged_decode(q, pages(k), pages(v), layout)
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("page_size", [1, 16])
def test_paged_extend_equals_causal_attention_over_the_whole_sequence(page_size):
    prefix_lens, ext_lens = [32, 0, 16, 48], [5, 9, 1, 0]
    pt = make_page_table("prefix", [p + e for p, e in zip(prefix_lens, ext_lens)], page_size, seed=7, shared=16)
    layout = fc.from_sglang(pt.req_to_token, pt.req_pool_indices, torch.tensor(prefix_lens), page_size)
    q_all, k, v = random_qkv(1, 4, 2, 64, pt.num_slots, torch.float64)
    g = torch.Generator().manual_seed(3)
    q = torch.randn(sum(ext_lens), 4, 64, generator=g, dtype=torch.float64)
    new_slots = [s for row, p in zip(pt.rows, prefix_lens) for s in row[p:]]
    cu = torch.tensor([0, 5, 14, 15, 15], dtype=torch.int32)
    out, lse = paged_extend_ref(q, k[new_slots], v[new_slots], k, v, layout, cu)
    for b, row in enumerate(pt.rows):
        qs, qe = int(cu[b]), int(cu[b + 1])
        if qe == qs:
            continue
        want, wl = attention_ref(q[None, qs:qe], k[row][None], v[row][None], causal=True)
        torch.testing.assert_close(out[qs:qe], want[0])
        torch.testing.assert_close(lse[qs:qe], wl[0])


def test_merge_states_equals_attention_over_the_union():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 3, 4, 32, generator=g, dtype=torch.float64)
    k = torch.randn(1, 20, 4, 32, generator=g, dtype=torch.float64)
    v = torch.randn(1, 20, 4, 32, generator=g, dtype=torch.float64)
    o_a, s_a = attention_ref(q, k[:, :7], v[:, :7])
    o_b, s_b = attention_ref(q, k[:, 7:], v[:, 7:])
    o, s = merge_states_ref(o_a, s_a, o_b, s_b)
    want_o, want_s = attention_ref(q, k, v)
    torch.testing.assert_close(o, want_o)
    torch.testing.assert_close(s, want_s)
    # an empty part changes nothing; two empty parts stay empty
    ninf = torch.full_like(s_a, -math.inf)
    o2, s2 = merge_states_ref(o_a, s_a, torch.zeros_like(o_b), ninf)
    torch.testing.assert_close(o2, o_a)
    torch.testing.assert_close(s2, s_a)
    o3, s3 = merge_states_ref(torch.zeros_like(o_a), ninf, torch.zeros_like(o_b), ninf)
    assert torch.all(o3 == 0) and torch.isneginf(s3).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_public_ops_keep_dtype_and_return_float32_lse(dtype):
    pt = make_page_table("prefix", [20, 30], 16, seed=1)
    layout = fc.from_sglang(pt.req_to_token, pt.req_pool_indices, pt.seq_lens, 16)
    q, k, v = random_qkv(2, 4, 2, 64, pt.num_slots, dtype)
    out, lse = fc.paged_decode(q, k, v, layout)
    assert out.dtype == dtype and lse.dtype == torch.float32
    ref, _ = paged_decode_ref(q.double(), k.double(), v.double(), layout)
    tol = {torch.float16: 2e-3, torch.bfloat16: 1e-2, torch.float32: 1e-5}[dtype]
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol)
    o, s = fc.merge_states(out, lse, out, lse)
    torch.testing.assert_close(o, out)
    torch.testing.assert_close(s, lse + math.log(2))


def test_ops_are_registered_custom_ops_with_fake_impls():
    q = torch.randn(2, 7, 4, 64)
    k = torch.randn(2, 9, 2, 64)
    torch.library.opcheck(
        torch.ops.flashcore.attention.default, (q, k, k, None, None, 7, 9, True, 0.125),
        test_utils=("test_schema", "test_faketensor"),
    )
    with torch._subclasses.fake_tensor.FakeTensorMode():
        fq, fk = torch.empty(2, 7, 4, 64), torch.empty(2, 9, 2, 64)
        out, lse = torch.ops.flashcore.attention(fq, fk, fk, None, None, 7, 9, True, 0.125)
        assert out.shape == (2, 7, 4, 64) and lse.shape == (2, 7, 4)
    for name in ("attention", "paged_prefill", "paged_decode_table", "paged_extend", "merge_states"):
        assert hasattr(torch.ops.flashcore, name)


def test_attention_compiles_with_torch_compile():
    q = torch.randn(1, 5, 2, 64)

    @torch.compile(backend="eager", fullgraph=True)
    def f(q):
        return torch.ops.flashcore.attention(q, q, q, None, None, 5, 5, True, 0.125)[0] * 2

    torch.testing.assert_close(f(q), fc.attention(q, q, q, causal=True, softmax_scale=0.125)[0] * 2)
