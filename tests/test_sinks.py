"""Attention sinks (sinks.py): against a softmax that holds the sink as one more key column."""

import math

import pytest
import torch

import sglang_flashcore as fc
from sglang_flashcore import reference
from sglang_flashcore.sinks import apply_sinks


def _sink_column_reference(q, k, v, sinks, scale, causal):
    """q [S, H, D], k/v [Sk, H, D] (float64): softmax over [scores | sink] with the sink's value 0."""
    scores = torch.einsum("shd,thd->hst", q, k) * scale
    if causal:
        i = torch.arange(q.shape[0]).unsqueeze(1)
        j = torch.arange(k.shape[0]).unsqueeze(0)
        scores = scores.masked_fill(j > i + (k.shape[0] - q.shape[0]), float("-inf"))
    column = sinks.double().view(-1, 1, 1).expand(-1, q.shape[0], 1)
    full = torch.cat([scores, column], dim=-1)
    p = torch.softmax(full, dim=-1)[..., :-1]
    lse = torch.logsumexp(full, dim=-1)
    return torch.einsum("hst,thd->shd", p, v), lse.transpose(0, 1)


@pytest.mark.parametrize("sq,sk,causal", [(1, 1, False), (1, 37, False), (9, 9, True), (5, 64, True), (16, 3, False)])
def test_sinks_match_the_extra_column_softmax(sq, sk, causal):
    g = torch.Generator().manual_seed(sq * 100 + sk)
    h, d = 4, 16
    q, k, v = (torch.randn(n, h, d, generator=g, dtype=torch.float64) for n in (sq, sk, sk))
    sinks = torch.randn(h, generator=g, dtype=torch.float64) * 3
    out, lse = reference.attention_ref(q[None], k[None], v[None], causal=causal, softmax_scale=d ** -0.5)
    got, got_lse = apply_sinks(out[0], lse[0].float(), sinks.float())
    want, want_lse = _sink_column_reference(q, k, v, sinks, d ** -0.5, causal)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(got_lse.double(), want_lse, atol=1e-5, rtol=1e-6)


def test_a_row_with_no_key_gives_zeros_and_the_sink():
    out = torch.zeros(2, 3, 8, dtype=torch.bfloat16)
    lse = torch.full((2, 3), float("-inf"))
    sinks = torch.tensor([0.5, float("-inf"), -2.0])
    got, got_lse = apply_sinks(out, lse, sinks)
    assert got.dtype == torch.bfloat16 and not got.any()
    assert torch.equal(got_lse, sinks.expand(2, 3))


def test_a_sink_of_minus_infinity_changes_nothing_and_nan_stays_nan():
    out = torch.randn(4, 2, 8)
    lse = torch.randn(4, 2)
    got, got_lse = apply_sinks(out, lse, torch.full((2,), float("-inf")))
    assert torch.equal(got, out) and torch.equal(got_lse, lse)
    lse[1, 0] = float("nan")
    got, _ = apply_sinks(out, lse, torch.zeros(2))
    assert got[1, 0].isnan().all() and not got[0].isnan().any()
    got, _ = apply_sinks(out, torch.randn(4, 2), torch.tensor([float("nan"), 0.0]))
    assert got[:, 0].isnan().all() and not got[:, 1].isnan().any()


def test_a_large_sink_takes_the_mass_it_should():
    out = torch.ones(1, 1, 4)
    got, got_lse = apply_sinks(out, torch.zeros(1, 1), torch.tensor([math.log(3.0)]))
    torch.testing.assert_close(got, torch.full((1, 1, 4), 0.25))
    torch.testing.assert_close(got_lse, torch.full((1, 1), math.log(4.0)))


def test_sinks_after_a_paged_decode_split_into_partials():
    """The sink joins once, after the split-KV merge: small chunks give the same answer."""
    g = torch.Generator().manual_seed(3)
    b, hq, hkv, d, page = 3, 8, 2, 64, 16
    lens = torch.tensor([40, 1, 130])
    pages_per = (lens + page - 1) // page
    k_cache = torch.randn((int(pages_per.sum()) + 2) * page, hkv, d, generator=g)  # SGLang's flat pool
    v_cache = torch.randn_like(k_cache)
    req_to_token = torch.zeros(b, 160, dtype=torch.int64)
    start = 0
    for r in range(b):
        n = int(pages_per[r])
        req_to_token[r, :n * page] = torch.arange(start * page, (start + n) * page)
        start += n
    q = torch.randn(b, hq, d, generator=g)
    sinks = torch.randn(hq, generator=g)
    rows = torch.arange(b)
    one, lse_one = fc.paged_decode_table(q, k_cache, v_cache, req_to_token, rows, lens, page_size=page)
    split, lse_split = fc.paged_decode_table(q, k_cache, v_cache, req_to_token, rows, lens, page_size=page,
                                             chunk_tokens=16)
    a, _ = apply_sinks(one, lse_one, sinks)
    c, _ = apply_sinks(split, lse_split, sinks)
    torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-5)
    # and against the extra-column softmax of each request
    for r in range(b):
        n = int(lens[r])
        slots = req_to_token[r, :n]
        k = k_cache[slots].repeat_interleave(hq // hkv, dim=1).double()
        v = v_cache[slots].repeat_interleave(hq // hkv, dim=1).double()
        want, _ = _sink_column_reference(q[r:r + 1].double(), k, v, sinks, d ** -0.5, False)
        torch.testing.assert_close(a[r].double(), want[0], atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("bad,match", [
    (torch.zeros(3), r"sinks: expected one logit per query head \(2\)"),
    (torch.zeros(2, 1), r"sinks: expected 1 dimensions"),
    (torch.zeros(2, dtype=torch.int32), r"sinks: expected dtype"),
    ("0.5", r"sinks: expected a torch.Tensor"),
])
def test_bad_sinks_are_named(bad, match):
    with pytest.raises((TypeError, ValueError), match=match):
        apply_sinks(torch.zeros(4, 2, 8), torch.zeros(4, 2), bad)


def test_lse_of_the_wrong_shape_is_named():
    with pytest.raises(ValueError, match="out and lse"):
        apply_sinks(torch.zeros(4, 2, 8), torch.zeros(4, 3), torch.zeros(2))
