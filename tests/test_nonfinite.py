"""NaN and Inf on CPU: the reference (the CPU path and the tests' oracle) propagates them as torch
SDPA's math backend does, and every public op agrees with it; empty rows stay (0, -inf)."""

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import sglang_flashcore as fc
from cases import make_page_table

NAN, INF = float("nan"), float("inf")
SCALE = 0.3


def sdpa_math(q, k, v, causal):
    """SDPA (math backend, float64) on [S, H, D] inputs with a bottom-right causal mask."""
    sq, sk = q.shape[0], k.shape[0]
    mask = None
    if causal:
        i, j = torch.arange(sq).unsqueeze(1), torch.arange(sk).unsqueeze(0)
        mask = j <= i + (sk - sq)
    with sdpa_kernel([SDPBackend.MATH]):
        out = F.scaled_dot_product_attention(*(t.double().transpose(0, 1) for t in (q, k, v)), attn_mask=mask,
                                             scale=SCALE, enable_gqa=q.shape[1] != k.shape[1])
    return out.transpose(0, 1)


def lse_of_scores(q, k, causal):
    """LSE from the scores in float64: +inf (a +inf score) counts as undefined, NaN."""
    sq, sk = q.shape[0], k.shape[0]
    group = q.shape[1] // k.shape[1]
    s = torch.einsum("qhd,khd->hqk", q.double(), k.double().repeat_interleave(group, 1)) * SCALE
    if causal:
        i, j = torch.arange(sq).unsqueeze(1), torch.arange(sk).unsqueeze(0)
        s = s.masked_fill(j > i + (sk - sq), -INF)
    lse = torch.logsumexp(s, -1).transpose(0, 1)
    return torch.where(lse == INF, torch.full_like(lse, NAN), lse)


def poison(name, q, k, v):
    """One non-finite value: NaN in q (row 1, head 0), in k or v at token 2 (KV head 0), +inf in k."""
    q, k, v = q.clone(), k.clone(), v.clone()
    if name == "q_nan":
        q[1, 0, 3] = NAN
    elif name == "k_nan":
        k[2, 0, 5] = NAN
    elif name == "v_nan":
        v[2, 0, :] = NAN
    elif name == "v_inf":
        v[2, 0, 1] = INF
    elif name == "k_inf_element":  # +inf or -inf scores, by the sign of q's element
        k[2, 0, 0] = INF
    elif name == "k_inf_token":  # mixed signs: NaN scores
        k[2, 0, :] = INF
    elif name == "k_neg_inf_scores":  # every score of KV head 0's query heads is -inf: no key counts
        q[:, :2, :] = 0
        q[:, :2, 0] = 1
        k[:, 0, 0] = -INF
    return q, k, v


CASES = ["q_nan", "k_nan", "v_nan", "v_inf", "k_inf_element", "k_inf_token", "k_neg_inf_scores"]


def dense_inputs(sq=5, sk=7, hq=4, hkv=2, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(sq, hq, d, generator=g), torch.randn(sk, hkv, d, generator=g),
            torch.randn(sk, hkv, d, generator=g))


def assert_same(got, want):
    torch.testing.assert_close(got.double(), want.double(), rtol=1e-5, atol=1e-5, equal_nan=True)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("case", CASES)
def test_attention_matches_sdpa(case, causal):
    q, k, v = poison(case, *dense_inputs())
    out, lse = fc.attention(q[None], k[None], v[None], causal=causal, softmax_scale=SCALE)
    assert_same(out[0], sdpa_math(q, k, v, causal))
    assert_same(lse[0], lse_of_scores(q, k, causal))
    if case == "k_neg_inf_scores":  # no key weighs anything: the rows are empty, 0 and -inf
        assert (out[0, :, :2] == 0).all() and (lse[0, :, :2] == -INF).all()
    else:
        assert not torch.isfinite(out).all()


@pytest.mark.parametrize("case", ["q_nan", "k_nan", "k_inf_token"])
def test_nan_scores_give_nan_lse_and_leave_other_heads(case):
    q, k, v = poison(case, *dense_inputs())
    out, lse = fc.attention(q[None], k[None], v[None], softmax_scale=SCALE)
    rows = [1] if case == "q_nan" else list(range(5))
    heads = [0] if case == "q_nan" else [0, 1]  # KV head 0 serves query heads 0 and 1
    assert torch.isnan(lse[0][rows][:, heads]).all() and torch.isnan(out[0][rows][:, heads]).all()
    clean = torch.ones(5, 4, dtype=torch.bool)
    clean[torch.tensor(rows).unsqueeze(1), torch.tensor(heads)] = False
    assert torch.isfinite(lse[0][clean]).all() and torch.isfinite(out[0][clean]).all()


def test_nan_value_leaves_lse_finite():
    q, k, v = poison("v_nan", *dense_inputs())
    out, lse = fc.attention(q[None], k[None], v[None], softmax_scale=SCALE)
    assert torch.isfinite(lse).all()
    assert torch.isnan(out[0, :, :2]).all() and torch.isfinite(out[0, :, 2:]).all()


def test_empty_rows_are_zero_with_neg_inf_lse():
    """No key at all, or none left by the causal mask: 0 and -inf. SDPA gives the same 0 for a
    fully masked row (its math backend since torch 2.5; earlier releases gave NaN) and has no LSE."""
    q, k, v = dense_inputs(sq=6, sk=3)
    out, lse = fc.attention(q[None], k[None], v[None], causal=True, softmax_scale=SCALE)
    assert (out[0, :3] == 0).all() and (lse[0, :3] == -INF).all()
    assert_same(out[0], sdpa_math(q, k, v, causal=True))
    out, lse = fc.attention(q[None], k[None, :0], v[None, :0], softmax_scale=SCALE)
    assert (out == 0).all() and (lse == -INF).all()


def _paged_problem(case, page_size=4):
    """One request over 7 cached tokens and the same problem densely."""
    pt = make_page_table("none", [7], page_size, seed=5)
    q, k, v = poison(case, *dense_inputs(sq=5, sk=7))
    slots = torch.tensor(pt.rows[0])
    kc = torch.zeros(pt.num_slots, 2, 16)
    vc = torch.zeros(pt.num_slots, 2, 16)
    kc[slots], vc[slots] = k, v
    return pt, q, k, v, kc, vc


@pytest.mark.parametrize("case", CASES)
def test_paged_decode_agrees_with_attention(case):
    pt, q, k, v, kc, vc = _paged_problem(case)
    qd = q[1:2]  # the poisoned row of q_nan
    want_o, want_l = fc.attention(qd[None], k[None], v[None], softmax_scale=SCALE)
    layout = fc.from_sglang(pt.req_to_token, pt.req_pool_indices, pt.seq_lens, 4)
    for out, lse in (fc.paged_decode(qd, kc, vc, layout, softmax_scale=SCALE),
                     fc.paged_decode_table(qd, kc, vc, pt.req_to_token, pt.req_pool_indices, pt.seq_lens,
                                           page_size=4, softmax_scale=SCALE, check_bounds=False)):
        assert_same(out, want_o[0])
        assert_same(lse, want_l[0])


@pytest.mark.parametrize("case", CASES)
def test_paged_extend_agrees_with_attention(case):
    """The 7 keys as 4 cached ones and 3 new ones; the 5 queries are the last 3 positions'."""
    pt = make_page_table("none", [4], 4, seed=6)
    q, k, v = poison(case, *dense_inputs(sq=3, sk=7))
    slots = torch.tensor(pt.rows[0])
    kc, vc = torch.zeros(pt.num_slots, 2, 16), torch.zeros(pt.num_slots, 2, 16)
    kc[slots], vc[slots] = k[:4], v[:4]
    layout = fc.from_sglang(pt.req_to_token, pt.req_pool_indices, pt.seq_lens, 4)
    cq = torch.tensor([0, 3], dtype=torch.int32)
    out, lse = fc.paged_extend(q, k[4:], v[4:], kc, vc, layout, cq, softmax_scale=SCALE)
    want_o, want_l = fc.attention(q[None], k[None], v[None], causal=True, softmax_scale=SCALE)
    assert_same(out, want_o[0])
    assert_same(lse, want_l[0])


def _states(seed=7):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(3, 2, 4, generator=g), torch.randn(3, 2, generator=g),
            torch.randn(3, 2, 4, generator=g), torch.randn(3, 2, generator=g))


@pytest.mark.parametrize("where", ["s_a", "s_b", "v_a", "v_b"])
def test_merge_states_nan_input_gives_nan(where):
    v_a, s_a, v_b, s_b = _states()
    t = {"s_a": s_a, "s_b": s_b, "v_a": v_a, "v_b": v_b}[where]
    t[1, 0] = NAN
    v, s = fc.merge_states(v_a, s_a, v_b, s_b)
    assert torch.isnan(v[1, 0]).all()
    assert torch.isnan(s[1, 0]) == where.startswith("s")
    assert torch.isfinite(v[[0, 2]]).all() and torch.isfinite(v[1, 1]).all() and torch.isfinite(s[[0, 2]]).all()


def test_merge_states_empty_and_inf_parts():
    v_a, s_a, v_b, s_b = _states()
    s_a[0], s_b[0] = -INF, -INF  # both empty: a zero row
    s_a[1] = -INF  # one empty: the other part as it is
    s_b[2, 0] = INF  # a +inf LSE: undefined, like a +inf score
    v, s = fc.merge_states(v_a, s_a, v_b, s_b)
    assert (v[0] == 0).all() and (s[0] == -INF).all()
    torch.testing.assert_close(v[1], v_b[1]) and torch.testing.assert_close(s[1], s_b[1])
    assert torch.isnan(v[2, 0]).all() and torch.isnan(s[2, 0])
    assert torch.isfinite(v[2, 1]).all()


def test_merge_of_split_keys_equals_whole_with_nan():
    """Merging the two halves' results gives the whole row's, NaN rows included."""
    q, k, v = poison("k_nan", *dense_inputs(sk=8))
    whole = fc.attention(q[None], k[None], v[None], softmax_scale=SCALE)
    a = fc.attention(q[None], k[None, :4], v[None, :4], softmax_scale=SCALE)
    b = fc.attention(q[None], k[None, 4:], v[None, 4:], softmax_scale=SCALE)
    v_m, s_m = fc.merge_states(a[0], a[1], b[0], b[1])
    assert_same(v_m, whole[0])
    assert_same(s_m, whole[1])


@pytest.mark.parametrize("scale", [NAN, INF, -INF, 0.0, -1.0])
def test_nonfinite_scale_is_refused_everywhere(scale):
    pt, q, k, v, kc, vc = _paged_problem("none")
    layout = fc.from_sglang(pt.req_to_token, pt.req_pool_indices, pt.seq_lens, 4)
    calls = [
        lambda: fc.attention(q[None], k[None], v[None], softmax_scale=scale),
        lambda: fc.paged_decode(q[:1], kc, vc, layout, softmax_scale=scale),
        lambda: fc.paged_decode_table(q[:1], kc, vc, pt.req_to_token, pt.req_pool_indices, pt.seq_lens,
                                      page_size=4, softmax_scale=scale, check_bounds=False),
        lambda: fc.paged_extend(q, k[:5], v[:5], kc, vc, layout, torch.tensor([0, 5]), softmax_scale=scale),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=r"softmax_scale: expected a positive finite float"):
            call()

