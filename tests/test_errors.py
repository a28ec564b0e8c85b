"""Bad input gets a clear ValueError/TypeError naming the argument and what was expected."""

import pytest
import torch

import sglang_flashcore as fc
from cases import make_page_table, random_qkv


@pytest.fixture
def decode_case():
    pt = make_page_table("prefix", [20, 30], 16, seed=1)
    layout = fc.from_sglang(pt.req_to_token, pt.req_pool_indices, pt.seq_lens, 16)
    q, k, v = random_qkv(2, 4, 2, 64, pt.num_slots, torch.float16)
    return pt, layout, q, k, v


def test_attention_errors():
    q = torch.randn(1, 4, 4, 64, dtype=torch.float16)
    k = torch.randn(1, 4, 2, 64, dtype=torch.float16)
    with pytest.raises(TypeError, match=r"k: expected dtype float16"):
        fc.attention(q, k.float(), k)
    with pytest.raises(TypeError, match=r"q: expected dtype"):
        fc.attention(q.int(), k, k)
    with pytest.raises(ValueError, match=r"q: expected 4 dimensions"):
        fc.attention(q[0], k, k)
    big = torch.randn(1, 4, 4, 320, dtype=torch.float16)
    with pytest.raises(ValueError, match=r"q: head dim 320 is not supported, expected 1..256"):
        fc.attention(big, big, big)
    with pytest.raises(ValueError, match=r"q has 4 heads, k has 3.*multiple"):
        fc.attention(q, torch.randn(1, 4, 3, 64, dtype=torch.float16), torch.randn(1, 4, 3, 64, dtype=torch.float16))
    with pytest.raises(ValueError, match=r"q: expected the last dimension to be contiguous"):
        fc.attention(q.transpose(-1, -3).contiguous().transpose(-1, -3), k, k)
    with pytest.raises(ValueError, match=r"k and v disagree on number of keys"):
        fc.attention(q, k, k[:, :3])
    with pytest.raises(TypeError, match=r"q: expected a torch.Tensor"):
        fc.attention([1.0], k, k)
    for bad in (-1.0, 0.0, float("nan"), float("inf"), True, "0.1"):
        with pytest.raises(ValueError, match=r"softmax_scale: expected a positive finite float"):
            fc.attention(q, k, k, softmax_scale=bad)


def test_ragged_attention_errors():
    q = torch.randn(6, 4, 64)
    k = torch.randn(5, 4, 64)
    cu = torch.tensor([0, 2, 6], dtype=torch.int32)
    with pytest.raises(ValueError, match=r"cu_seqlens_q and cu_seqlens_k: pass both"):
        fc.attention(q, k, k, cu_seqlens_q=cu)
    with pytest.raises(ValueError, match=r"cu_seqlens_k: the last offset is 6 but the packed tensor has 5 tokens"):
        fc.attention(q, k, k, cu_seqlens_q=cu, cu_seqlens_k=cu)
    with pytest.raises(ValueError, match=r"cu_seqlens_q: expected non-decreasing"):
        fc.attention(q, k, k, cu_seqlens_q=torch.tensor([0, 4, 2, 6], dtype=torch.int32),
                     cu_seqlens_k=torch.tensor([0, 1, 2, 5], dtype=torch.int32))
    with pytest.raises(ValueError, match=r"cu_seqlens_k: expected length 3"):
        fc.attention(q, k, k, cu_seqlens_q=cu, cu_seqlens_k=torch.tensor([0, 5], dtype=torch.int32))
    with pytest.raises(TypeError, match=r"cu_seqlens_q: expected dtype int32 or int64"):
        fc.attention(q, k, k, cu_seqlens_q=cu.float(), cu_seqlens_k=torch.tensor([0, 2, 5], dtype=torch.int32))


def test_paged_decode_errors(decode_case):
    pt, layout, q, k, v = decode_case
    with pytest.raises(ValueError, match=r"q and layout disagree on number of requests: 1 vs 2"):
        fc.paged_decode(q[:1], k, v, layout)
    with pytest.raises(TypeError, match=r"k_cache: expected dtype float16"):
        fc.paged_decode(q, k.float(), v, layout)
    with pytest.raises(ValueError, match=r"k_cache and v_cache: expected the same shape"):
        fc.paged_decode(q, k, v[:-1], layout)
    with pytest.raises(ValueError, match=r"q has 4 heads, k_cache has 3"):
        fc.paged_decode(q, k.new_zeros(k.shape[0], 3, 64), v.new_zeros(k.shape[0], 3, 64), layout)
    with pytest.raises(ValueError, match=r"layout.cols: last KV slot of a page run out of range"):
        fc.paged_decode(q, k[:20], v[:20], layout)
    with pytest.raises(TypeError, match=r"layout: expected a PagedLayout"):
        fc.paged_decode(q, k, v, (layout.row_offsets, layout.cols))
    with pytest.raises(ValueError, match=r"tokens per page"):
        fc.paged_decode(q, k.view(-1, 8, 2, 64).transpose(1, 2), v.view(-1, 8, 2, 64).transpose(1, 2), layout)


def test_paged_extend_errors(decode_case):
    pt, layout, q, k, v = decode_case
    qn = torch.randn(5, 4, 64, dtype=torch.float16)
    kn = torch.randn(5, 2, 64, dtype=torch.float16)
    cu = torch.tensor([0, 2, 5], dtype=torch.int32)
    with pytest.raises(ValueError, match=r"q and k_new disagree on number of new tokens: 5 vs 4"):
        fc.paged_extend(qn, kn[:4], kn[:4], k, v, layout, cu)
    with pytest.raises(ValueError, match=r"q and layout disagree on number of requests: 1 vs 2"):
        fc.paged_extend(qn, kn, kn, k, v, layout, torch.tensor([0, 5], dtype=torch.int32))
    with pytest.raises(ValueError, match=r"k_new and k_cache disagree on KV heads"):
        fc.paged_extend(qn, kn[:, :1], kn[:, :1], k, v, layout, cu)


def test_merge_states_errors():
    v = torch.randn(3, 4, 64)
    s = torch.randn(3, 4)
    with pytest.raises(ValueError, match=r"s_b: expected shape \(3, 4\)"):
        fc.merge_states(v, s, v, s[:2])
    with pytest.raises(TypeError, match=r"s_a: expected dtype float32"):
        fc.merge_states(v, s.double(), v, s)
    with pytest.raises(ValueError, match=r"v_a and v_b: expected the same shape"):
        fc.merge_states(v, s, v[:2], s[:2])


def test_from_sglang_errors():
    pt = make_page_table("none", [5, 7], 4, seed=0)
    r2t, idx, lens = pt.req_to_token, pt.req_pool_indices, pt.seq_lens
    with pytest.raises(ValueError, match=r"req_pool_indices: request pool row out of range"):
        fc.from_sglang(r2t, idx + 100, lens, 4)
    with pytest.raises(ValueError, match=r"seq_lens: sequence length out of range"):
        fc.from_sglang(r2t, idx, lens + 1000, 4)
    with pytest.raises(ValueError, match=r"seq_lens: expected length 2"):
        fc.from_sglang(r2t, idx, lens[:1], 4)
    with pytest.raises(ValueError, match=r"req_to_token: KV slot out of range"):
        fc.from_sglang(r2t, idx, lens, 4, num_slots=3)
    with pytest.raises(ValueError, match=r"page_size: expected a positive int"):
        fc.from_sglang(r2t, idx, lens, 0)
    with pytest.raises(TypeError, match=r"seq_lens: expected dtype int32 or int64"):
        fc.from_sglang(r2t, idx, lens.float(), 4)
    with pytest.raises(ValueError, match=r"req_to_token: expected 2 dimensions"):
        fc.from_sglang(r2t[0], idx, lens, 4)


def test_build_layout_errors():
    ttp = torch.tensor([0, 0, 1, 2])
    ok = (torch.tensor([0]), torch.tensor([4]), torch.ones(3, dtype=torch.bool), 4, 3)
    fc.build_layout(ttp, *ok)
    with pytest.raises(ValueError, match=r"seq_starts/seq_ends: request 0 starts at 3 after it ends at 1"):
        fc.build_layout(ttp, torch.tensor([3]), torch.tensor([1]), *ok[2:])
    with pytest.raises(ValueError, match=r"token_to_page: page id out of range at 3: got 5"):
        fc.build_layout(torch.tensor([0, 0, 1, 5]), *ok)
    with pytest.raises(ValueError, match=r"seq_ends: end offset out of range"):
        fc.build_layout(ttp, torch.tensor([0]), torch.tensor([9]), *ok[2:])
    with pytest.raises(ValueError, match=r"page_resident_bitmap: expected length 3"):
        fc.build_layout(ttp, ok[0], ok[1], torch.ones(2, dtype=torch.bool), 4, 3)
    with pytest.raises(ValueError, match=r"request 0 reads more than page_tokens=1"):
        fc.build_layout(ttp, ok[0], ok[1], ok[2], 1, 3)
    with pytest.raises(ValueError, match=r"seq_ends: expected length 1"):
        fc.build_layout(ttp, ok[0], torch.tensor([4, 4]), *ok[2:])
    with pytest.raises(ValueError, match=r"seq_starts: expected non-negative"):
        fc.build_layout(ttp, torch.tensor([-1]), ok[1], *ok[2:])


def test_plan_errors(decode_case):
    _, layout, *_ = decode_case
    with pytest.raises(ValueError, match=r"chunk_tokens: expected a positive int"):
        fc.plan_sharing(layout, 0)


def test_from_sglang_never_truncates_slots():
    pt = make_page_table("none", [5, 7], 4, seed=0)
    r2t = pt.req_to_token.to(torch.int64)
    r2t[int(pt.req_pool_indices[1]), 2] = 2**32 + 9  # would wrap to slot 9 as int32
    with pytest.raises(ValueError, match=r"req_to_token: KV slot out of range .* got 4294967305, "
                                         r"expected a value in \[0, 2147483648\)"):
        fc.from_sglang(r2t, pt.req_pool_indices, pt.seq_lens, 4)
    with pytest.raises(ValueError, match=r"req_to_token: KV slot out of range .* got 4294967305"):
        fc.from_sglang(r2t, pt.req_pool_indices, pt.seq_lens, 4, validate=False)  # CPU: checked anyway
    with pytest.raises(ValueError, match=r"num_slots: 4294967296 slots do not fit"):
        fc.from_sglang(r2t, pt.req_pool_indices, pt.seq_lens, 4, num_slots=2**32)
    with pytest.raises(ValueError, match=r"num_slots: expected a non-negative int, got -1"):
        fc.from_sglang(r2t, pt.req_pool_indices, pt.seq_lens, 4, num_slots=-1)


def test_from_sglang_unvalidated_cpu_ids_fail_clearly():
    pt = make_page_table("none", [5, 7], 4, seed=0)
    r2t, idx, lens = pt.req_to_token.clone(), pt.req_pool_indices, pt.seq_lens
    r2t[int(idx[0]), 1] = -1  # would index the last slot
    with pytest.raises(ValueError, match=r"req_to_token: KV slot out of range .* got -1"):
        fc.from_sglang(r2t, idx, lens, 4, validate=False)
    with pytest.raises(ValueError, match=r"req_pool_indices: request pool row out of range .* got -1"):
        fc.from_sglang(pt.req_to_token, idx - idx - 1, lens, 4, validate=False)
    with pytest.raises(ValueError, match=r"seq_lens: sequence length out of range .* got -2"):
        fc.from_sglang(pt.req_to_token, idx, lens - 7, 4, validate=False)


def test_from_sglang_total_tokens():
    pt = make_page_table("none", [5, 7], 4, seed=0)
    args = (pt.req_to_token, pt.req_pool_indices, pt.seq_lens, 4)
    assert fc.from_sglang(*args, total_tokens=12).nnz == fc.from_sglang(*args).nnz
    with pytest.raises(ValueError, match=r"total_tokens: expected seq_lens.sum\(\) = 12, got 5"):
        fc.from_sglang(*args, total_tokens=5)
    for bad in (-1, 1.5, "12"):
        with pytest.raises(ValueError, match=r"total_tokens: expected a non-negative int"):
            fc.from_sglang(*args, total_tokens=bad)


def test_unchecked_decode_on_cpu_still_checks_ids(decode_case):
    """check_bounds=False is what the backend's CPU decode passes: bad ids still fail clearly."""
    pt, layout, q, k, v = decode_case
    row = int(pt.req_pool_indices[1])
    for bad, msg in ((-1, r"got -1"), (k.shape[0], rf"got {k.shape[0]}"), (2**31 + 5, r"got 2147483653")):
        r2t = pt.req_to_token.to(torch.int64).clone()
        r2t[row, 3] = bad
        with pytest.raises(ValueError, match=r"req_to_token: KV slot out of range .*" + msg):
            fc.paged_decode_table(q, k, v, r2t, pt.req_pool_indices, pt.seq_lens, page_size=16, check_bounds=False)
    with pytest.raises(ValueError, match=r"req_pool_indices: request pool row out of range"):
        fc.paged_decode_table(q, k, v, pt.req_to_token, pt.req_pool_indices + 99, pt.seq_lens, page_size=16,
                              check_bounds=False)
    with pytest.raises(ValueError, match=r"seq_lens: sequence length out of range"):
        fc.paged_decode_table(q, k, v, pt.req_to_token, pt.req_pool_indices, pt.seq_lens - 100, page_size=16,
                              check_bounds=False)
    with pytest.raises(ValueError, match=r"layout.cols: last KV slot of a page run out of range"):
        fc.paged_decode(q, k[:20], v[:20], layout, check_bounds=False)


def test_unchecked_extend_on_cpu_still_checks_ids(decode_case):
    pt, layout, q, k, v = decode_case
    qn, kn = torch.randn(5, 4, 64, dtype=torch.float16), torch.randn(5, 2, 64, dtype=torch.float16)
    cu = torch.tensor([0, 2, 5], dtype=torch.int32)
    with pytest.raises(ValueError, match=r"layout.cols: last KV slot of a page run out of range"):
        fc.paged_extend(qn, kn, kn, k[:20], v[:20], layout, cu, check_bounds=False)


def _layout_fields(layout):
    return dict(page_size=layout.page_size, num_pages=layout.num_pages, row_offsets=layout.row_offsets,
                cols=layout.cols, page_offsets=layout.page_offsets, counts=layout.counts,
                positions=layout.positions, staging_ids=layout.staging_ids, seq_lens=layout.seq_lens)


def test_hand_built_layout_is_checked(decode_case):
    pt, layout, q, k, v = decode_case
    fields = _layout_fields(layout)
    for change, error, msg in (
        (dict(page_size=0), ValueError, r"layout.page_size: expected a positive int, got 0"),
        (dict(num_pages=-3), ValueError, r"layout.num_pages: expected a non-negative int"),
        (dict(cols=layout.cols.float()), TypeError, r"layout.cols: expected dtype int32 or int64"),
        (dict(counts=layout.counts[:-1]), ValueError, r"layout.counts: expected length"),
        (dict(seq_lens=layout.seq_lens[:1]), ValueError, r"layout.seq_lens: expected length 2"),
        (dict(row_offsets=layout.row_offsets[:0]), ValueError, r"layout.row_offsets: expected B\+1 offsets"),
        (dict(cols=layout.cols.reshape(1, -1)), ValueError, r"layout.cols: expected 1 dimensions"),
    ):
        with pytest.raises(error, match=msg):
            fc.PagedLayout(**{**fields, **change})
    bad_values = (
        (dict(counts=layout.counts * 0), r"layout.counts: tokens of a run out of range .* got 0"),
        (dict(page_offsets=layout.page_offsets + 16), r"layout.page_offsets: first slot in the page out of range"),
        (dict(cols=layout.cols - layout.cols - 1), r"layout.cols: page id out of range .* got -1"),
        (dict(seq_lens=layout.seq_lens + 1), r"layout.seq_lens: request 0 has 21 tokens, but its runs hold 20"),
        (dict(row_offsets=layout.row_offsets.flip(0)), r"layout.row_offsets: expected non-decreasing offsets"),
    )
    for change, msg in bad_values:
        hand = fc.PagedLayout(**{**fields, **change})
        for check_bounds in (True, False):  # CPU layouts are checked either way
            with pytest.raises(ValueError, match=msg):
                fc.paged_decode(q, k, v, hand, check_bounds=check_bounds)


def test_sizes_of_reports_must_be_positive(decode_case):
    _, layout, *_ = decode_case
    plan = layout.plan()
    assert plan.stats(num_kv_heads=2, head_dim=64, num_q_heads=4)["bytes_dense"] > 0
    for bad in (dict(num_kv_heads=-1), dict(head_dim=0), dict(num_q_heads=2.5), dict(elem_bytes=True)):
        args = {**dict(num_kv_heads=2, head_dim=64, num_q_heads=4), **bad}
        name = next(iter(bad))
        with pytest.raises(ValueError, match=rf"{name}: expected a positive int"):
            plan.stats(**args)
        with pytest.raises(ValueError, match=rf"{name}: expected a positive int"):
            fc.decode_bytes(10, 2, **args)
    with pytest.raises(ValueError, match=r"kv_tokens: expected a non-negative int, got -10"):
        fc.decode_bytes(-10, 2, 2, 4, 64)


def test_merge_states_needs_heads_and_dims():
    for shape in ((), (8,)):
        v, s = torch.randn(shape), torch.randn(shape[:-1])
        with pytest.raises(ValueError, match=r"v_a: expected \[\.\.\., H, D\]"):
            fc.merge_states(v, s, v, s)


def test_max_seqlen_is_checked():
    q, k = torch.randn(6, 4, 64), torch.randn(5, 4, 64)
    cq, ck = torch.tensor([0, 2, 6], dtype=torch.int32), torch.tensor([0, 1, 5], dtype=torch.int32)
    out, _ = fc.attention(q, k, k, cu_seqlens_q=cq, cu_seqlens_k=ck, max_seqlen_q=6, max_seqlen_k=4)
    torch.testing.assert_close(out, fc.attention(q, k, k, cu_seqlens_q=cq, cu_seqlens_k=ck)[0])
    with pytest.raises(ValueError, match=r"max_seqlen_q: 3 is below the longest sequence of the batch, 4"):
        fc.attention(q, k, k, cu_seqlens_q=cq, cu_seqlens_k=ck, max_seqlen_q=3)
    for bad in (-1, 2.5, None.__class__):
        with pytest.raises(ValueError, match=r"max_seqlen_k: expected a non-negative int"):
            fc.attention(q, k, k, cu_seqlens_q=cq, cu_seqlens_k=ck, max_seqlen_k=bad)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(softmax_scale=float("nan")), ValueError, "softmax_scale: expected a positive finite float"),
    (dict(softmax_scale=-1.0), ValueError, "softmax_scale"),
    (dict(page_size=0), ValueError, "page_size"),
    (dict(k_scale=float("inf")), ValueError, "k_scale: expected a finite positive scale"),
    (dict(v_scale=torch.ones(3)), ValueError, "v_scale: expected one scale"),
])
def test_decode_planner_run_validates_its_scalars(kwargs, error, match):
    """DecodePlanner.run (the backend's per-layer call) checks what it is given before any kernel
    sees it (built without __init__: the planner itself needs a GPU)."""
    from sglang_flashcore.decode import DecodePlanner

    planner = DecodePlanner.__new__(DecodePlanner)
    planner._batch, planner._group = 1, 4
    q = torch.zeros(1, 8, 128, dtype=torch.bfloat16)
    k = torch.zeros(16, 2, 128, dtype=torch.bfloat16)
    args = dict(softmax_scale=0.1, page_size=1)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        planner.run(q, k, k, **args)
