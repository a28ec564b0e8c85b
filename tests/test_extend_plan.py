"""The per-batch extend plan (sglang_flashcore/extend_plan.py) on CPU: its key slots against the
page table, its page lists (paged plans), and one layer of extend attention against
``paged_extend_ref`` — with and without prefixes, shared prefixes, new K/V read from the pool or
passed in, page sizes 1 and 16, paged and gathered plans."""

import random

import pytest
import torch

import sglang_flashcore as fc
from cases import make_extend_case
from sglang_flashcore.extend import can_page, extend_attention, plan_extend
from sglang_flashcore.reference import paged_extend_ref


def _plan(case, host_lengths=True, paged=None):
    dev = case.q.device
    pt = case.table
    return plan_extend(
        pt.req_to_token.to(dev), pt.req_pool_indices.to(dev), torch.tensor(case.prefix, device=dev),
        torch.tensor(case.extend, device=dev), case.out_cache_loc,
        prefix_lens_cpu=case.prefix if host_lengths else None, extend_lens_cpu=case.extend if host_lengths else None,
        page_size=pt.page_size, paged=paged,
    )


def _reference(case, scale):
    dev = case.q.device
    pt = case.table
    layout = fc.from_sglang(pt.req_to_token.to(dev), pt.req_pool_indices.to(dev), torch.tensor(case.prefix, device=dev),
                            pt.page_size)
    return paged_extend_ref(case.q, case.k_new, case.v_new, case.k_cache, case.v_cache, layout, case.cu_seqlens_q(),
                            softmax_scale=scale)[0]


def test_key_slots_are_prefix_then_new_tokens():
    case = make_extend_case([5, 0, 32], [3, 4, 1], 16, 2, 2, 8, seed=1)
    plan = _plan(case, paged=False)
    want = [s for row, p, e in zip(case.table.rows, case.prefix, case.extend) for s in row[: p + e]]
    assert plan.key_slots.tolist() == want
    assert plan.cu_seqlens_k.tolist() == [0, 8, 12, 45] and plan.cu_seqlens_q.tolist() == [0, 3, 7, 8]
    assert plan.max_seqlen_q == 4 and plan.max_seqlen_k == 33
    # each new token's key position among the packed keys
    assert plan.new_key_index.tolist() == [5, 6, 7, 8, 9, 10, 11, 44]
    assert plan.key_slots[plan.new_key_index].tolist() == case.out_cache_loc.tolist()


def test_paged_plan_lists_each_requests_whole_prefix_pages():
    case = make_extend_case([16, 0, 40], [3, 20, 1], 8, 2, 2, 8, seed=3)
    plan = _plan(case)
    rows = case.table.rows
    assert plan.paged and plan.key_slots is None  # prefixes end on page boundaries: nothing to gather
    assert plan.key_pages.tolist() == [rows[0][0] // 8, rows[0][8] // 8] + [rows[2][j] // 8 for j in range(0, 40, 8)]
    assert plan.key_page_offsets.tolist() == [0, 2, 2, 7]
    assert plan.cu_seqlens_k.tolist() == plan.cu_seqlens_q.tolist() == [0, 3, 23, 24]
    assert plan.max_seqlen_k == 41 and plan.grid_order.tolist() == [0]


def test_a_partial_prefix_page_is_packed_before_the_new_tokens():
    case = make_extend_case([20, 5], [3, 2], 8, 2, 2, 8, seed=6)
    plan = _plan(case)
    rows = case.table.rows
    assert plan.key_page_offsets.tolist() == [0, 2, 2]
    assert plan.key_slots.tolist() == rows[0][16:23] + rows[1][:7]
    assert plan.cu_seqlens_k.tolist() == [0, 7, 14]
    assert plan.key_slots[plan.new_key_index].tolist() == case.out_cache_loc.tolist()


@pytest.mark.parametrize("shared,want", [(True, 1), (False, 0)])
def test_grid_order_flags_requests_that_share_prefix_pages(shared, want):
    case = make_extend_case([32, 32, 32], [5, 1, 9], 16, 2, 2, 8, seed=4, shared=shared)
    assert _plan(case).grid_order.tolist() == [want]


def test_page_sizes_the_kernel_cannot_read_in_place_are_gathered():
    assert [can_page(p) for p in (1, 4, 8, 16, 24, 64, 128)] == [False, False, True, True, True, True, True]
    case = make_extend_case([5, 3], [2, 2], 1, 2, 2, 8, seed=5)
    assert not _plan(case).paged
    with pytest.raises(ValueError, match="page_size"):
        _plan(case, paged=True)


def test_no_prefix_needs_no_gather():
    case = make_extend_case([0, 0], [3, 9], 1, 2, 2, 8)
    plan = _plan(case)
    assert not plan.has_prefix and plan.cu_seqlens_k.tolist() == [0, 3, 12] and plan.max_seqlen_k == 9


def test_host_lengths_are_optional():
    case = make_extend_case([7, 20], [2, 5], 1, 2, 2, 8, seed=2)
    a, b = _plan(case), _plan(case, host_lengths=False)
    assert torch.equal(a.key_slots, b.key_slots) and a.max_seqlen_k == b.max_seqlen_k
    case = make_extend_case([7, 20], [2, 5], 8, 2, 2, 8, seed=2)
    a, b = _plan(case), _plan(case, host_lengths=False)
    assert torch.equal(a.key_pages, b.key_pages) and torch.equal(a.key_page_offsets, b.key_page_offsets)


def _random_case(i):
    rng = random.Random(500 + i)
    page = rng.choice([1, 16, 8])
    batch = rng.randint(1, 5)
    shared = rng.random() < 0.5
    prefix = [rng.choice([0, 1, page, rng.randint(0, 70)]) for _ in range(batch)]
    if shared:
        prefix = [(rng.randint(0, 70) // page) * page] * batch
    ext = [rng.choice([1, 2, 9, rng.randint(1, 40)]) for _ in range(batch)]
    hq, hkv = rng.choice([(4, 4), (8, 2), (6, 3)])
    return prefix, ext, page, hq, hkv, shared


@pytest.mark.parametrize("mode", ["in_cache", "passed", "pool_only"])
@pytest.mark.parametrize("i", range(12))
def test_extend_attention_matches_reference(i, mode):
    prefix, ext, page, hq, hkv, shared = _random_case(i)
    case = make_extend_case(prefix, ext, page, hq, hkv, 16, torch.float64, seed=i, shared=shared)
    ref = _reference(case, 0.25)
    plan = _plan(case)
    assert plan.paged == (can_page(page) and sum(prefix) > 0)
    k_new, v_new = case.k_new, case.v_new
    if mode == "passed":  # new K/V not in the pool: poison their slots, the call must not read them
        case.k_cache[case.out_cache_loc] = float("nan")
        case.v_cache[case.out_cache_loc] = float("nan")
    out, _ = extend_attention(case.q, None if mode == "pool_only" else k_new, None if mode == "pool_only" else v_new,
                              case.k_cache, case.v_cache, plan, 0.25, new_kv_in_cache=mode != "passed",
                              out_cache_loc=case.out_cache_loc)
    torch.testing.assert_close(out, ref.to(out.dtype), atol=1e-10, rtol=1e-10)


def test_errors_name_the_argument():
    case = make_extend_case([4, 0], [2, 3], 1, 2, 2, 8)
    pt = case.table
    args = (pt.req_to_token, pt.req_pool_indices, torch.tensor(case.prefix), torch.tensor(case.extend))
    with pytest.raises(ValueError, match="out_cache_loc"):
        plan_extend(*args, case.out_cache_loc[:-1])
    with pytest.raises(ValueError, match="extend_lens"):
        plan_extend(*args[:3], torch.tensor([2]), case.out_cache_loc)
    with pytest.raises(TypeError, match="out_cache_loc"):
        plan_extend(*args, case.out_cache_loc.float())
    with pytest.raises(ValueError, match="req_to_token"):
        plan_extend(*args[:2], torch.tensor([10**6, 0]), args[3], case.out_cache_loc, prefix_lens_cpu=[10**6, 0])
    plan = _plan(case)
    with pytest.raises(ValueError, match="k_new"):
        extend_attention(case.q, None, None, case.k_cache, case.v_cache, plan, 0.1, new_kv_in_cache=False)
