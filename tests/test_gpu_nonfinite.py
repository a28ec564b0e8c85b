"""NaN and Inf through the CUDA kernels: the same outputs and LSEs as the float32 reference (whose
semantics follow torch SDPA, see reference.py and tests/test_nonfinite.py), NaN positions included.

One poisoned element per case: NaN in q (one query row and head), NaN in k at one token, NaN in v
at one token, +inf in k (one element: a +inf or -inf score by the sign of q's element; a whole
token: NaN scores from inf - inf). NaN in v sits where every query of its request sees it (no
causal mask between them), as a value at a masked key may reach a query through 0 x NaN in a
tensor-core product, which neither torch SDPA nor the reference rules out.
"""

import pytest
import torch

import sglang_flashcore as fc
from cases import make_page_table
from sglang_flashcore.reference import attention_ref, paged_decode_ref, paged_extend_ref

pytestmark = pytest.mark.gpu

NAN, INF = float("nan"), float("inf")
TOL = {torch.float16: dict(atol=3e-3, rtol=2e-3), torch.bfloat16: dict(atol=2e-2, rtol=1.5e-2)}
CASES = ("q_nan", "k_nan", "v_nan", "k_inf_element", "k_inf_token")


def _poison(case, q, k, v, q_at, kv_at):
    """q_at: (index tuple of a query row, head); kv_at: a key token index (KV head 0)."""
    q, k, v = q.clone(), k.clone(), v.clone()
    if case == "q_nan":
        q[q_at][3] = NAN
    elif case == "k_nan":
        k[kv_at][0, 5] = NAN
    elif case == "v_nan":
        v[kv_at][0, :] = NAN
    elif case == "k_inf_element":
        k[kv_at][0, 0] = INF
    elif case == "k_inf_token":
        k[kv_at][0, :] = INF
    return q, k, v


def _assert_matches(out, lse, ref_o, ref_l, dtype, case):
    torch.testing.assert_close(out.float(), ref_o.float(), equal_nan=True, **TOL[dtype])
    torch.testing.assert_close(lse.float(), ref_l.float(), equal_nan=True, atol=2e-3, rtol=1e-4)
    assert not torch.isfinite(ref_o).all() or case == "k_inf_element", "the case poisons nothing"


def _randn(*shape, dtype, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return torch.randn(*shape, device="cuda", generator=g).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("d", [64, 96, 128, 256])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("case", CASES)
def test_dense_kernel_nonfinite(case, causal, d, dtype):
    if case == "v_nan" and causal:
        pytest.skip("a NaN value at a causally masked key may reach the query (0 x NaN); see the module doc")
    q, k, v = (_randn(2, s, h, d, dtype=dtype, seed=i) for i, (s, h) in enumerate(((200, 4), (260, 2), (260, 2))))
    # batch 1: query row 150 head 1; key token 140 (seen by every query causally past row 80)
    q, k, v = _poison(case, q, k, v, (1, 150, 1), (1, 140))
    out, lse = fc.attention(q, k, v, causal=causal)
    ref_o, ref_l = attention_ref(q, k, v, causal=causal)
    _assert_matches(out, lse, ref_o, ref_l, dtype, case)
    assert torch.isfinite(out[0]).all() and torch.isfinite(lse[0]).all()  # batch 0 untouched


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", CASES)
def test_dense_kernel_nonfinite_ragged(case, dtype):
    lens_q, lens_k = [37, 0, 129, 300], [37, 5, 200, 300]
    q = _randn(sum(lens_q), 8, 128, dtype=dtype, seed=1)
    k, v = _randn(sum(lens_k), 2, 128, dtype=dtype, seed=2), _randn(sum(lens_k), 2, 128, dtype=dtype, seed=3)
    cq = torch.tensor([0] + lens_q, device="cuda").cumsum(0).int()
    ck = torch.tensor([0] + lens_k, device="cuda").cumsum(0).int()
    # request 2: its query row 100 head 2; its key token 180 (after every query's mask edge)
    q, k, v = _poison(case, q, k, v, (int(cq[2]) + 100, 2), (int(ck[2]) + 60,))
    out, lse = fc.attention(q, k, v, cu_seqlens_q=cq, cu_seqlens_k=ck)
    ref_o, ref_l = attention_ref(q, k, v, cu_seqlens_q=cq, cu_seqlens_k=ck)
    _assert_matches(out, lse, ref_o, ref_l, dtype, case)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("chunk", [None, 64])
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("case", CASES)
def test_decode_kernel_nonfinite(case, shared, chunk, dtype):
    """A poisoned token of the shared prefix (read by every request: the shared-chunk path) or of
    request 1's own tokens; a fixed 64-token chunk splits rows, so the merge kernel combines a
    poisoned partial with clean ones."""
    page, hkv = 16, 2
    pt = make_page_table("prefix", [300, 700, 50, 129], page, seed=4, shared=48)
    q = _randn(4, 8, 128, dtype=dtype, seed=5)
    k, v = _randn(pt.num_slots, hkv, 128, dtype=dtype, seed=6), _randn(pt.num_slots, hkv, 128, dtype=dtype, seed=7)
    slot = pt.rows[1][20 if shared else 500]
    q, k, v = _poison(case, q, k, v, (1, 2), (slot,))
    dev = lambda t: t.to("cuda")  # noqa: E731
    layout = fc.from_sglang(dev(pt.req_to_token), dev(pt.req_pool_indices), dev(pt.seq_lens), page)
    ref_o, ref_l = paged_decode_ref(q, k, v, layout)
    for out, lse in (fc.paged_decode(q, k, v, layout, chunk_tokens=chunk),
                     fc.paged_decode_table(q, k, v, dev(pt.req_to_token), dev(pt.req_pool_indices),
                                           dev(pt.seq_lens), page_size=page, chunk_tokens=chunk)):
        _assert_matches(out, lse, ref_o, ref_l, dtype, case)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("page", [1, 16])
@pytest.mark.parametrize("where", ["prefix", "new"])
@pytest.mark.parametrize("case", CASES)
def test_extend_kernel_nonfinite(case, where, page, dtype):
    """Page 16 reads prefix pages in place, page 1 gathers them. A poisoned value (v_nan) sits in
    the prefix, which every new token sees; other cases also poison a new token."""
    if case == "v_nan" and where == "new":
        pytest.skip("a NaN value at a causally masked key may reach the query (0 x NaN); see the module doc")
    prefix, ext = [64, 160, 0], [30, 70, 9]
    pt = make_page_table("prefix", [p + e for p, e in zip(prefix, ext)], page, seed=8, shared=64)
    k_cache = _randn(pt.num_slots, 2, 128, dtype=dtype, seed=9)
    v_cache = _randn(pt.num_slots, 2, 128, dtype=dtype, seed=10)
    q = _randn(sum(ext), 8, 128, dtype=dtype, seed=11)
    new_slots = torch.tensor([s for row, p in zip(pt.rows, prefix) for s in row[p:]], device="cuda")
    k_new, v_new = k_cache[new_slots].clone(), v_cache[new_slots].clone()
    cu = torch.tensor([0] + ext, device="cuda").cumsum(0).int()
    if where == "prefix":  # request 1's prefix position 100 (past the shared part)
        q, k_cache, v_cache = _poison(case, q, k_cache, v_cache, (int(cu[1]) + 40, 3), (pt.rows[1][100],))
    else:  # request 1's new token 10, seen by its new tokens 10..69
        q, k_new, v_new = _poison(case, q, k_new, v_new, (int(cu[1]) + 40, 3), (int(cu[1]) + 10,))
    dev = lambda t: t.to("cuda")  # noqa: E731
    layout = fc.from_sglang(dev(pt.req_to_token), dev(pt.req_pool_indices), torch.tensor(prefix, device="cuda"), page)
    out, lse = fc.paged_extend(q, k_new, v_new, k_cache, v_cache, layout, cu)
    ref_o, ref_l = paged_extend_ref(q, k_new, v_new, k_cache, v_cache, layout, cu)
    _assert_matches(out, lse, ref_o, ref_l, dtype, case)


def test_compiled_calls_on_the_gpu():
    """attention (ragged, no max_seqlen) and paged_decode_table trace as one graph on CUDA and give
    the eager results."""
    lens = [37, 129, 0]
    q = _randn(sum(lens), 8, 128, dtype=torch.bfloat16, seed=12)
    k, v = _randn(sum(lens), 2, 128, dtype=torch.bfloat16, seed=13), _randn(sum(lens), 2, 128, dtype=torch.bfloat16, seed=14)
    cu = torch.tensor([0] + lens, device="cuda").cumsum(0).int()
    dense = lambda q, k, v, cu: fc.attention(q, k, v, causal=True, cu_seqlens_q=cu, cu_seqlens_k=cu)  # noqa: E731
    pt = make_page_table("prefix", [300, 70], 16, seed=15)
    qd = _randn(2, 8, 128, dtype=torch.bfloat16, seed=16)
    kc = _randn(pt.num_slots, 2, 128, dtype=torch.bfloat16, seed=17)
    vc = _randn(pt.num_slots, 2, 128, dtype=torch.bfloat16, seed=18)
    table = (pt.req_to_token.cuda(), pt.req_pool_indices.cuda(), pt.seq_lens.cuda())
    decode = lambda q, r2t, idx, lens: fc.paged_decode_table(q, kc, vc, r2t, idx, lens, page_size=16)  # noqa: E731
    for fn, args in ((dense, (q, k, v, cu)), (decode, (qd, *table))):
        torch._dynamo.reset()
        got = torch.compile(fn, fullgraph=True)(*args)
        want = fn(*args)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, equal_nan=True)
