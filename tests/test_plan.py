"""The sharing plan: coverage, loads-once, determinism of the merge order, and the figures."""

from collections import Counter

import pytest
import torch
from hypothesis import given, settings, strategies as st

from cases import PATTERNS, make_page_table, random_qkv
from sglang_flashcore import decode_bytes, from_sglang, plan_sharing
from sglang_flashcore.reference import paged_decode_planned_ref, paged_decode_ref


def _layout(pattern, lengths, page_size, seed=0, shared=None):
    pt = make_page_table(pattern, lengths, page_size, seed, shared)
    return pt, from_sglang(pt.req_to_token, pt.req_pool_indices, pt.seq_lens, page_size, num_slots=pt.num_slots)


def plan_pairs(plan):
    """(request, unique run) pairs each partial covers, and the runs each work item loads."""
    weo, wro = plan.work_entry_offsets.tolist(), plan.work_reader_offsets.tolist()
    readers = plan.work_readers.tolist()
    pairs, loads = Counter(), Counter()
    for w in range(plan.num_work_items):
        for u in range(weo[w], weo[w + 1]):
            loads[u] += 1
            for p in range(wro[w], wro[w + 1]):
                pairs[(readers[p], u)] += 1
    return pairs, loads


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    pattern=st.sampled_from(PATTERNS),
    page_size=st.sampled_from((1, 16, 128)),
    lengths=st.lists(st.integers(0, 400), min_size=1, max_size=6),
    chunk=st.sampled_from((1, 16, 64, 256)),
    seed=st.integers(0, 100),
)
def test_plan_covers_every_request_run_exactly_once(pattern, page_size, lengths, chunk, seed):
    pt, layout = _layout(pattern, lengths, page_size, seed)
    plan = plan_sharing(layout, chunk)
    pairs, loads = plan_pairs(plan)
    # each unique run is loaded by exactly one work item
    assert all(n == 1 for n in loads.values())
    assert len(loads) == plan.entry_pages.shape[0]
    # the (request, token slot) multiset the plan covers equals the layout's
    ep, eo, ec = plan.entry_pages.tolist(), plan.entry_offsets.tolist(), plan.entry_counts.tolist()
    covered = Counter()
    for (r, u), n in pairs.items():
        assert n == 1
        for i in range(ec[u]):
            covered[(r, ep[u] * page_size + eo[u] + i)] += 1
    want = Counter((b, s) for b, row in enumerate(pt.rows) for s in row)
    assert covered == want
    # work items stay within the chunk size
    weo = plan.work_entry_offsets.tolist()
    for w in range(plan.num_work_items):
        assert sum(ec[weo[w]:weo[w + 1]]) <= max(chunk, page_size)
    # each request's partials are listed in token order
    mo = plan.merge_offsets.tolist()
    mp = plan.merge_partials.tolist()
    wr = plan.work_readers.tolist()
    for b in range(layout.batch_size):
        assert all(wr[p] == b for p in mp[mo[b]:mo[b + 1]])
    assert sorted(mp) == list(range(plan.num_partials))


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("page_size", (1, 16))
def test_planned_reference_equals_direct(pattern, page_size):
    pt, layout = _layout(pattern, [130, 70, 257, 33], page_size, seed=5)
    q, k, v = random_qkv(4, 8, 2, 64, pt.num_slots, torch.float64, seed=1)
    plan = plan_sharing(layout, 32)
    o1, l1 = paged_decode_ref(q, k, v, layout)
    o2, l2 = paged_decode_planned_ref(q, k, v, layout, plan)
    torch.testing.assert_close(o2, o1, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(l2, l1, rtol=1e-12, atol=1e-12)


def test_shared_prefix_is_loaded_once_and_read_by_all():
    page = 16
    pt, layout = _layout("prefix", [1024 + 40, 1024 + 7, 1024 + 99, 1024 + 1], page, shared=1024)
    plan = plan_sharing(layout, 256)
    # the 1024-token prefix: 4 work items of 256 tokens, each read by all 4 requests
    shared_items = [w for w in range(plan.num_work_items)
                    if plan.work_reader_offsets[w + 1] - plan.work_reader_offsets[w] == 4]
    assert len(shared_items) == 4
    assert plan.unique_tokens == 1024 + 40 + 7 + 99 + 1
    assert plan.total_tokens == 4 * 1024 + 40 + 7 + 99 + 1
    assert plan.unique_pages == 1024 // page + 3 + 1 + 7 + 1
    s = plan.stats(num_kv_heads=8, head_dim=128, num_q_heads=32)
    assert s["bytes_dense"] == decode_bytes(plan.total_tokens, 4, 8, 32, 128)
    assert s["bytes_shared"] < s["bytes_dense"]
    assert s["bytes_dense"] == (2 * plan.total_tokens * 8 + 2 * 4 * 32) * 128 * 2


def test_tree_sharing_groups_branches():
    pt, layout = _layout("tree", [96, 96, 96, 96], 16, shared=32)
    plan = plan_sharing(layout, 1024)
    sizes = sorted((plan.work_reader_offsets[1:] - plan.work_reader_offsets[:-1]).tolist())
    # root read by 4, two branches read by 2 each, four private tails
    assert sizes == [1, 1, 1, 1, 2, 2, 4]
    assert plan.max_readers == 4


def test_identical_rows_make_one_chain():
    pt, layout = _layout("identical", [300] * 5, 1)
    plan = plan_sharing(layout, 100)
    assert plan.num_work_items == 3
    assert plan.num_partials == 15
    assert plan.unique_tokens == 300


def test_split_kv_of_one_long_request():
    pt, layout = _layout("none", [128 * 1024], 128)
    plan = plan_sharing(layout, 256)
    assert plan.num_work_items == 512  # enough work items for 132 SMs
    assert plan.merge_offsets.tolist() == [0, 512]


def test_plan_is_deterministic():
    pt, layout = _layout("tree", [500, 300, 700, 20, 0], 16, seed=9)
    a, b = plan_sharing(layout, 64), plan_sharing(layout, 64)
    for name in ("entry_pages", "work_entry_offsets", "work_readers", "merge_partials", "readers"):
        assert torch.equal(getattr(a, name), getattr(b, name))


def test_transpose_lists_readers_in_order():
    pt, layout = _layout("prefix", [64, 64, 64], 16, shared=32)
    plan = plan_sharing(layout, 256)
    ro, rd = plan.reader_offsets.tolist(), plan.readers.tolist()
    groups = [rd[ro[u]:ro[u + 1]] for u in range(len(ro) - 1)]
    assert sorted(map(tuple, groups)) == sorted([(0, 1, 2)] * 2 + [(0,)] * 2 + [(1,)] * 2 + [(2,)] * 2)
    assert all(g == sorted(g) for g in groups)


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("page_size", (1, 16))
def test_transpose_is_indexed_like_the_entries(pattern, page_size):
    # run k's readers are exactly the requests whose layout rows hold run k (entry_* order)
    pt, layout = _layout(pattern, [70, 33, 150, 1, 96], page_size, seed=4)
    plan = plan_sharing(layout, 32)
    runs_of = Counter()
    ro, cols = layout.row_offsets.tolist(), layout.cols.tolist()
    offs, counts, pos = layout.page_offsets.tolist(), layout.counts.tolist(), layout.positions.tolist()
    for b in range(layout.batch_size):
        for e in range(ro[b], ro[b + 1]):
            runs_of[(cols[e], offs[e], counts[e], pos[e])] += 1
    readers_at, rd = plan.reader_offsets.tolist(), plan.readers.tolist()
    assert readers_at[-1] == layout.nnz and len(readers_at) == plan.entry_pages.numel() + 1
    for k in range(plan.entry_pages.numel()):
        key = (int(plan.entry_pages[k]), int(plan.entry_offsets[k]), int(plan.entry_counts[k]))
        readers = rd[readers_at[k]:readers_at[k + 1]]
        assert readers == sorted(readers)
        for r in readers:
            assert any((cols[e], offs[e], counts[e]) == key for e in range(ro[r], ro[r + 1]))
        matching = [n for (c, o, n_, p), n in runs_of.items() if (c, o, n_) == key]
        assert len(readers) == sum(matching)
