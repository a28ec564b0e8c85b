"""Logit soft-cap (SGLang's logit_cap): every op against tanh of the scores computed here."""

import pytest
import torch

import sglang_flashcore as fc
from sglang_flashcore.extend import extend_attention, plan_extend


def _capped_attention(q, k, v, scale, cap, causal=True, window=-1):
    """q [Sq, H, D], k/v [Sk, H, D] float64."""
    sq, sk = q.shape[0], k.shape[0]
    scores = torch.einsum("shd,thd->hst", q, k) * scale
    scores = cap * torch.tanh(scores / cap)
    pos = torch.arange(sq).unsqueeze(1) + (sk - sq)
    j = torch.arange(sk).unsqueeze(0)
    allowed = (j <= pos) if causal else torch.ones(sq, sk, dtype=torch.bool)
    if window >= 0:
        allowed &= j >= pos - window
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.einsum("hst,thd->shd", torch.softmax(scores, -1).nan_to_num(0.0), v)


@pytest.mark.parametrize("cap", [0.3, 5.0, 50.0])
@pytest.mark.parametrize("causal,window", [(False, -1), (True, -1), (True, 6)])
def test_dense_softcap_matches_tanh_of_the_scores(cap, causal, window):
    g = torch.Generator().manual_seed(int(cap * 10))
    q, k, v = (torch.randn(n, 2, 16, generator=g) * 3 for n in (9, 20, 20))
    out, _ = fc.attention(q[None], k[None], v[None], causal=causal, softmax_scale=0.5, softcap=cap, window_left=window)
    want = _capped_attention(q.double(), k.double(), v.double(), 0.5, cap, causal, window)
    torch.testing.assert_close(out[0].double(), want, atol=1e-5, rtol=1e-5)
    plain, _ = fc.attention(q[None], k[None], v[None], causal=causal, softmax_scale=0.5, window_left=window)
    assert not torch.allclose(plain, out, atol=1e-3)


@pytest.mark.parametrize("window", [-1, 10])
def test_decode_softcap_matches_tanh_of_the_scores(window):
    g = torch.Generator().manual_seed(2)
    lens = torch.tensor([5, 33, 1])
    req_to_token = torch.arange(3 * 40, dtype=torch.int32).reshape(3, 40)
    k_cache, v_cache = (torch.randn(120, 2, 16, generator=g) * 3 for _ in range(2))
    q = torch.randn(3, 4, 16, generator=g) * 3
    out, _ = fc.paged_decode_table(q, k_cache, v_cache, req_to_token, torch.arange(3), lens, softcap=2.0,
                                   window_left=window, softmax_scale=0.25)
    for b in range(3):
        n = int(lens[b])
        start = 0 if window < 0 else max(0, n - 1 - window)
        slots = req_to_token[b, start:n].long()
        kb, vb = (c[slots].repeat_interleave(2, dim=1).double() for c in (k_cache, v_cache))
        want = _capped_attention(q[b:b + 1].double(), kb, vb, 0.25, 2.0)
        torch.testing.assert_close(out[b].double(), want[0], atol=1e-5, rtol=1e-5)


def test_extend_softcap_over_a_prefix():
    g = torch.Generator().manual_seed(3)
    req_to_token = torch.arange(2 * 64, dtype=torch.int32).reshape(2, 64)
    prefix, ext = torch.tensor([20, 0]), torch.tensor([5, 7])
    k_cache, v_cache = (torch.randn(128, 1, 16, generator=g) * 3 for _ in range(2))
    loc = torch.cat([req_to_token[0, 20:25], req_to_token[1, :7]]).long()
    q = torch.randn(12, 2, 16, generator=g) * 3
    plan = plan_extend(req_to_token, torch.arange(2), prefix, ext, loc, page_size=1)
    out, _ = extend_attention(q, k_cache[loc], v_cache[loc], k_cache, v_cache, plan, 0.25, softcap=1.5)
    for b, (qs, n) in enumerate(((0, 25), (5, 7))):
        slots = req_to_token[b, :n].long()
        kb, vb = (c[slots].repeat_interleave(2, dim=1).double() for c in (k_cache, v_cache))
        want = _capped_attention(q[qs:qs + int(ext[b])].double(), kb, vb, 0.25, 1.5)
        torch.testing.assert_close(out[qs:qs + int(ext[b])].double(), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bad", [-1.0, float("inf"), float("nan"), True, "1"])
def test_bad_softcaps_are_named(bad):
    q = torch.zeros(1, 2, 2, 16)
    with pytest.raises(ValueError, match="softcap: expected 0"):
        fc.attention(q, q, q, causal=True, softcap=bad)
