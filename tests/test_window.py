"""Sliding-window attention on the CPU path: the dense op, decode through window tables, and
extend plans that start at the window, against masks built here in float64."""

import random

import pytest
import torch

import sglang_flashcore as fc
from sglang_flashcore.extend import extend_attention, plan_extend
from sglang_flashcore.window import extend_key_start, window_table


def _masked_attention(q, k, v, scale, window_left):
    """q [Sq, H, D], k/v [Sk, H, D] float64: causal bottom-right with an explicit window mask."""
    sq, sk = q.shape[0], k.shape[0]
    pos = torch.arange(sq).unsqueeze(1) + (sk - sq)
    j = torch.arange(sk).unsqueeze(0)
    allowed = (j <= pos) & (j >= pos - window_left)
    scores = torch.einsum("shd,thd->hst", q, k) * scale
    scores = scores.masked_fill(~allowed, float("-inf"))
    p = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    return torch.einsum("hst,thd->shd", p, v)


@pytest.mark.parametrize("sq,sk,window", [(1, 1, 0), (5, 5, 0), (7, 7, 2), (3, 40, 4), (16, 16, 100), (9, 30, 9),
                                          (1, 64, 63), (20, 20, 1)])
def test_attention_window_matches_an_explicit_mask(sq, sk, window):
    g = torch.Generator().manual_seed(sq * 31 + sk + window)
    h, d = 2, 16
    q, k, v = (torch.randn(n, h, d, generator=g) for n in (sq, sk, sk))
    out, lse = fc.attention(q[None], k[None], v[None], causal=True, window_left=window, softmax_scale=0.3)
    want = _masked_attention(q.double(), k.double(), v.double(), 0.3, window)
    torch.testing.assert_close(out[0].double(), want, atol=1e-5, rtol=1e-5)
    if window + 1 < sk:  # the window changes the answer
        full, _ = fc.attention(q[None], k[None], v[None], causal=True, softmax_scale=0.3)
        assert not torch.allclose(full, out)


def test_ragged_attention_window_is_per_request():
    g = torch.Generator().manual_seed(1)
    lq, lk, window = [3, 0, 6], [10, 4, 6], 3
    q = torch.randn(sum(lq), 4, 8, generator=g)
    k, v = (torch.randn(sum(lk), 2, 8, generator=g) for _ in range(2))
    cq = torch.tensor([0, 3, 3, 9], dtype=torch.int32)
    ck = torch.tensor([0, 10, 14, 20], dtype=torch.int32)
    out, _ = fc.attention(q, k, v, causal=True, window_left=window, cu_seqlens_q=cq, cu_seqlens_k=ck)
    for b in range(3):
        if lq[b] == 0:
            continue
        kb = k[ck[b]:ck[b + 1]].repeat_interleave(2, dim=1).double()
        vb = v[ck[b]:ck[b + 1]].repeat_interleave(2, dim=1).double()
        want = _masked_attention(q[cq[b]:cq[b + 1]].double(), kb, vb, 8 ** -0.5, window)
        torch.testing.assert_close(out[cq[b]:cq[b + 1]].double(), want, atol=1e-5, rtol=1e-5)


def _pool_case(seed, batch, page, max_len, shared=0, min_width=0):
    """A flat pool and a page table whose rows may share their first ``shared`` slots."""
    rng = random.Random(seed)
    lens = [rng.randint(1, max_len) for _ in range(batch)]
    if shared:
        lens = [max(n, shared + 1) for n in lens]
    width = max(max(lens), min_width) + page
    slots_per_row = (width + page - 1) // page * page
    req_to_token = torch.zeros(batch + 2, slots_per_row, dtype=torch.int32)
    perm = torch.randperm((batch + 1) * slots_per_row // page, generator=torch.Generator().manual_seed(seed))
    for b in range(batch):
        pages = perm[b * (slots_per_row // page):(b + 1) * (slots_per_row // page)]
        req_to_token[b + 1] = (pages.unsqueeze(1) * page + torch.arange(page)).reshape(-1)[:slots_per_row].int()
        if shared and b:
            req_to_token[b + 1, :shared] = req_to_token[1, :shared]
    rows = torch.arange(1, batch + 1)
    return req_to_token, rows, torch.tensor(lens), len(perm) * page


@pytest.mark.parametrize("window", [0, 1, 7, 16, 33, 500])
@pytest.mark.parametrize("page", [1, 16])
def test_decode_window_reads_the_last_window_plus_one_keys(window, page):
    req_to_token, rows, lens, num_slots = _pool_case(window * 7 + page, 5, page, 90, shared=20)
    g = torch.Generator().manual_seed(window)
    hq, hkv, d = 8, 2, 32
    k_cache, v_cache = (torch.randn(num_slots, hkv, d, generator=g) for _ in range(2))
    q = torch.randn(5, hq, d, generator=g)
    out, lse = fc.paged_decode_table(q, k_cache, v_cache, req_to_token, rows, lens, page_size=page,
                                     window_left=window)
    for b in range(5):
        n = int(lens[b])
        slots = req_to_token[rows[b], max(0, n - 1 - window):n].long()
        kb = k_cache[slots].repeat_interleave(hq // hkv, dim=1).double()
        vb = v_cache[slots].repeat_interleave(hq // hkv, dim=1).double()
        want = _masked_attention(q[b:b + 1].double(), kb, vb, d ** -0.5, window)
        torch.testing.assert_close(out[b].double(), want[0], atol=1e-5, rtol=1e-5)


def test_window_table_rows_maps_and_buffers():
    req_to_token = torch.arange(40, dtype=torch.int32).reshape(2, 20) + 100
    lens = torch.tensor([3, 20])
    rows = torch.tensor([1, 0])
    table, keys = window_table(req_to_token, rows, lens, 4)
    assert keys.tolist() == [3, 5]
    assert table.tolist() == [[120, 121, 122, 0, 0], [115, 116, 117, 118, 119]]
    slot_map = torch.arange(200) * 2
    mapped, _ = window_table(req_to_token, rows, lens, 4, slot_map=slot_map)
    assert mapped.tolist() == [[240, 242, 244, 0, 0], [230, 232, 234, 236, 238]]
    out = torch.full((4, 5), -1, dtype=torch.int32)
    out_lens = torch.zeros(4, dtype=torch.int64)
    view, view_lens = window_table(req_to_token, rows, lens, 4, out=out, out_lens=out_lens)
    assert view.data_ptr() == out.data_ptr() and torch.equal(view, table) and view_lens.tolist() == [3, 5]
    with pytest.raises(ValueError, match="out: expected"):
        window_table(req_to_token, rows, lens, 5, out=out, out_lens=out_lens)
    wide, wide_keys = window_table(req_to_token, rows, lens, 1000)  # no wider than the table
    assert wide.shape == (2, 20) and wide_keys.tolist() == [3, 20]


@pytest.mark.parametrize("page,paged", [(1, False), (16, False), (16, True), (8, True)])
@pytest.mark.parametrize("window", [0, 5, 16, 40, 300])
def test_extend_from_the_window_start_equals_extend_over_the_whole_prefix(page, paged, window):
    """Starting each request's keys at its first query's window (and, paged, at that page) gives
    the answer of the full prefix under the same window mask: the kernel's masks are relative."""
    req_to_token, rows, _, num_slots = _pool_case(window + page, 4, page, 120, min_width=120)
    prefix = torch.tensor([0, 37, 64, 100])
    ext = torch.tensor([5, 1, 19, 8])
    total = int(ext.sum())
    g = torch.Generator().manual_seed(window)
    hq, hkv, d = 4, 2, 16
    k_cache, v_cache = (torch.randn(num_slots, hkv, d, generator=g) for _ in range(2))
    q = torch.randn(total, hq, d, generator=g)
    out_loc = torch.cat([req_to_token[rows[b], prefix[b]:prefix[b] + ext[b]] for b in range(4)]).long()
    k_new, v_new = k_cache[out_loc], v_cache[out_loc]
    kwargs = dict(prefix_lens_cpu=prefix.tolist(), extend_lens_cpu=ext.tolist(), page_size=page, paged=paged)
    full = plan_extend(req_to_token, rows, prefix, ext, out_loc, **kwargs)
    start = extend_key_start(prefix, window)
    windowed = plan_extend(req_to_token, rows, prefix, ext, out_loc, key_start=start,
                           key_start_cpu=start.tolist(), **kwargs)
    a, lse_a = extend_attention(q, k_new, v_new, k_cache, v_cache, full, d ** -0.5, window_left=window)
    b, lse_b = extend_attention(q, k_new, v_new, k_cache, v_cache, windowed, d ** -0.5, window_left=window)
    torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(lse_b, lse_a, atol=1e-5, rtol=1e-6)
    assert windowed.max_seqlen_k <= full.max_seqlen_k
    if window < 30:
        assert windowed.max_seqlen_k < full.max_seqlen_k  # the prefix before the window is not read
    # and the windowed rows against an explicit mask over each request's keys
    cq = torch.cat([torch.zeros(1, dtype=torch.long), ext.cumsum(0)])
    for r in range(4):
        n = int(prefix[r] + ext[r])
        slots = req_to_token[rows[r], :n].long()
        kb = k_cache[slots].repeat_interleave(hq // hkv, dim=1).double()
        vb = v_cache[slots].repeat_interleave(hq // hkv, dim=1).double()
        want = _masked_attention(q[cq[r]:cq[r + 1]].double(), kb, vb, d ** -0.5, window)
        torch.testing.assert_close(b[cq[r]:cq[r + 1]].double(), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bad,match", [(-2, "window_left: expected -1"), (True, "window_left: expected -1"),
                                       (1.5, "window_left: expected -1")])
def test_bad_windows_are_named(bad, match):
    q = torch.zeros(1, 2, 2, 16)
    with pytest.raises(ValueError, match=match):
        fc.attention(q, q, q, causal=True, window_left=bad)


def test_a_window_needs_causal_attention():
    q = torch.zeros(1, 2, 2, 16)
    with pytest.raises(ValueError, match="window_left: a sliding window needs causal=True"):
        fc.attention(q, q, q, causal=False, window_left=4)


def test_key_start_outside_the_prefix_is_refused():
    req_to_token = torch.zeros(2, 16, dtype=torch.int32)
    with pytest.raises(ValueError, match="key_start: expected 0 <= key_start <= prefix_lens"):
        plan_extend(req_to_token, torch.tensor([0]), torch.tensor([4]), torch.tensor([2]), torch.zeros(2, dtype=torch.long),
                    key_start=torch.tensor([5]))
