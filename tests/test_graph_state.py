"""DecodeGraphState.load on CPU: the plan lands in the fixed buffers, and a plan too large for
the workspace is re-cut with longer chunks or refused with a clear error."""

import pytest
import torch

import sglang_flashcore as fc
from cases import make_page_table
from sglang_flashcore.graph import DecodeGraphState


def _layout(lengths, page, pattern="none"):
    pt = make_page_table(pattern, lengths, page, seed=1)
    return fc.from_sglang(pt.req_to_token, pt.req_pool_indices, pt.seq_lens, page), pt


def test_load_copies_the_plan_into_fixed_buffers():
    layout, pt = _layout([300, 40, 700], 16, "prefix")
    state = DecodeGraphState(4, pt.req_to_token.shape[1], 16, num_q_heads=8, head_dim=64, device="cpu")
    ptrs = [b.data_ptr() for b in state.buffers()]
    plan = state.load(layout, num_kv_heads=2, chunk_tokens=64)
    assert int(state.num_work) == plan.num_work_items
    w = plan.num_work_items
    assert torch.equal(state.work_entry_offsets[: w + 1], plan.work_entry_offsets)
    assert torch.equal(state.merge_partials[: plan.num_partials], plan.merge_partials)
    state.load(_layout([5, 9, 1000], 16)[0], num_kv_heads=2, chunk_tokens=64)
    assert [b.data_ptr() for b in state.buffers()] == ptrs  # the addresses a graph captured stay valid


def test_a_plan_too_large_for_the_workspace_gets_longer_chunks():
    layout, pt = _layout([4000, 4000], 16)
    per_partial = 8 * 65 * 4
    state = DecodeGraphState(2, pt.req_to_token.shape[1], 16, 8, 64, "cpu", workspace_bytes=20 * per_partial)
    plan = state.load(layout, num_kv_heads=2, chunk_tokens=64)  # 126 items at 64 tokens: too many
    assert plan.chunk_tokens > 64 and plan.num_partials <= state.max_partials
    tiny = DecodeGraphState(2, pt.req_to_token.shape[1], 16, 8, 64, "cpu", workspace_bytes=2 * per_partial)
    with pytest.raises(ValueError, match="exceeds the CUDA-graph workspace"):
        tiny.load(layout, num_kv_heads=2, chunk_tokens=64)
    with pytest.raises(ValueError, match="the graph state holds 1"):
        DecodeGraphState(1, pt.req_to_token.shape[1], 16, 8, 64, "cpu").load(layout, 2)
