"""PagedLayout / build_layout against plain-Python models, on random page tables."""


import pytest
import torch
from hypothesis import given, settings, strategies as st

from cases import PATTERNS, make_page_table, model_build_layout, model_runs
from sglang_flashcore import build_layout, from_sglang

PAGE_SIZES = (1, 16, 128)


def layout_runs(layout):
    ro = layout.row_offsets.tolist()
    cols, offs, cnts, pos = (t.tolist() for t in (layout.cols, layout.page_offsets, layout.counts, layout.positions))
    return [[(cols[e], offs[e], cnts[e], pos[e]) for e in range(ro[b], ro[b + 1])] for b in range(len(ro) - 1)]


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    pattern=st.sampled_from(PATTERNS),
    page_size=st.sampled_from(PAGE_SIZES),
    lengths=st.lists(st.integers(0, 300), min_size=0, max_size=6),
    seed=st.integers(0, 1000),
)
def test_from_sglang_matches_model(pattern, page_size, lengths, seed):
    pt = make_page_table(pattern, lengths, page_size, seed)
    layout = from_sglang(pt.req_to_token, pt.req_pool_indices, pt.seq_lens, page_size, num_slots=pt.num_slots)
    assert layout_runs(layout) == model_runs(pt.rows, page_size)
    assert layout.seq_lens.tolist() == [len(r) for r in pt.rows]
    assert layout.row_offsets.dtype == torch.int32 and layout.cols.dtype == torch.int32
    assert (layout.staging_ids == -1).all()
    assert all(1 <= c <= page_size for c in layout.counts.tolist())
    # every token's slot is recovered, in order
    rows, slots = layout.token_slots()
    flat = [s for r in pt.rows for s in r]
    assert slots.tolist() == flat
    assert rows.tolist() == [b for b, r in enumerate(pt.rows) for _ in r]


@pytest.mark.parametrize("page_size", PAGE_SIZES)
def test_page_aligned_rows_have_one_run_per_page(page_size):
    pt = make_page_table("prefix", [5 * page_size, 3 * page_size + 1], page_size, seed=3)
    layout = from_sglang(pt.req_to_token, pt.req_pool_indices, pt.seq_lens, page_size)
    if page_size > 1:
        assert layout.row_offsets.tolist() == [0, 5, 9]
        assert layout.counts.tolist() == [page_size] * 8 + [1]
    else:  # page size 1: every token is its own page
        assert layout.nnz == 5 + 4


def test_from_sglang_int32_indices_and_empty_batch():
    pt = make_page_table("none", [7, 0, 3], 1, seed=1)
    layout = from_sglang(pt.req_to_token, pt.req_pool_indices.int(), pt.seq_lens.int(), 1)
    assert layout.seq_lens.tolist() == [7, 0, 3]
    assert layout.row_offsets.tolist() == [0, 7, 7, 10]
    empty = from_sglang(pt.req_to_token, torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64), 16)
    assert empty.batch_size == 0 and empty.nnz == 0 and empty.row_offsets.tolist() == [0]


@st.composite
def seed_streams(draw):
    num_pages = draw(st.integers(1, 12))
    page_tokens = draw(st.sampled_from((1, 2, 4, 16)))
    # the stream: runs of tokens on random pages, each run at most page_tokens long
    stream = []
    for _ in range(draw(st.integers(0, 12))):
        stream += [draw(st.integers(0, num_pages - 1))] * draw(st.integers(1, page_tokens))
    n = len(stream)
    batch = draw(st.integers(0, 5))
    starts, ends = [], []
    for _ in range(batch):
        a = draw(st.integers(0, n))
        b = draw(st.integers(a, n))
        starts.append(a)
        ends.append(b)
    resident = draw(st.lists(st.booleans(), min_size=num_pages, max_size=num_pages))
    return stream, starts, ends, resident, page_tokens, num_pages


def _runs_fit(stream, starts, ends, page_tokens):
    """The seed's contract: a request reads at most page_tokens consecutive tokens of a page."""
    for s, e in zip(starts, ends):
        run = 0
        for t in range(s, e):
            run = run + 1 if t > s and stream[t] == stream[t - 1] else 1
            if run > page_tokens:
                return False
    return True


@settings(max_examples=80, deadline=None, derandomize=True)
@given(seed_streams())
def test_build_layout_matches_model(case):
    stream, starts, ends, resident, page_tokens, num_pages = case
    args = (
        torch.tensor(stream, dtype=torch.int64),
        torch.tensor(starts, dtype=torch.int64),
        torch.tensor(ends, dtype=torch.int64),
        torch.tensor(resident, dtype=torch.bool),
        page_tokens,
        num_pages,
    )
    if not _runs_fit(stream, starts, ends, page_tokens):
        with pytest.raises(ValueError, match="page_tokens"):
            build_layout(*args)
        return
    got = [t.tolist() for t in build_layout(*args)]
    want = list(model_build_layout(stream, starts, ends, resident, page_tokens))
    assert got == [list(w) for w in want]


def test_staging_ids_number_missing_pages_once_by_first_appearance():
    stream = torch.tensor([3, 3, 1, 0, 2, 1, 3])
    row_offsets, cols, counts, staging = build_layout(
        stream, torch.tensor([0, 4, 2]), torch.tensor([4, 7, 6]),
        torch.tensor([True, False, True, False]), 2, 4,
    )
    assert cols.tolist() == [3, 1, 0, 2, 1, 3, 1, 0, 2, 1]
    # page 3 (first seen at entry 0) -> 0, page 1 -> 1; resident pages 0 and 2 -> -1
    assert staging.tolist() == [0, 1, -1, -1, 1, 0, 1, -1, -1, 1]
    assert counts.tolist() == [2] + [1] * 9
    assert row_offsets.tolist() == [0, 3, 6, 10]
