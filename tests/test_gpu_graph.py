"""Decode captured once in a CUDA graph, replayed for batches with other lengths and sharing."""

import pytest
import torch

import sglang_flashcore as fc
from cases import make_page_table
from sglang_flashcore.graph import DecodeGraphState
from sglang_flashcore.reference import paged_decode_ref

pytestmark = pytest.mark.gpu

BATCHES = [  # (pattern, lengths): the same batch size, different work lists
    ("prefix", [300, 41, 2000, 7]),
    ("none", [5000, 1, 64, 129]),
    ("tree", [3000, 3000, 2500, 2900]),
    ("identical", [777] * 4),
    ("empty_rows", [100, 0, 9000, 3]),
]


@pytest.mark.parametrize("dtype,page,heads", [(torch.bfloat16, 16, (32, 8)), (torch.float16, 1, (8, 8)),
                                              (torch.bfloat16, 128, (16, 2))])
def test_one_capture_serves_every_batch(dtype, page, heads):
    hq, hkv = heads
    tables = [make_page_table(p, lens, page, seed=i) for i, (p, lens) in enumerate(BATCHES)]
    num_slots = max(t.num_slots for t in tables)
    max_ctx = max(t.req_to_token.shape[1] for t in tables)
    g = torch.Generator(device="cuda").manual_seed(0)
    k = torch.randn(num_slots, hkv, 128, device="cuda", generator=g).to(dtype)
    v = torch.randn(num_slots, hkv, 128, device="cuda", generator=g).to(dtype)
    layouts = [fc.from_sglang(t.req_to_token.cuda(), t.req_pool_indices.cuda(), t.seq_lens.cuda(), page)
               for t in tables]
    state = DecodeGraphState(4, max_ctx, page, hq, 128, "cuda")
    q_static = torch.randn(4, hq, 128, device="cuda", dtype=dtype)
    state.load(layouts[0], hkv)
    state.run(q_static, k, v, page, 0.088)  # build and warm up outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, lse = state.run(q_static, k, v, page, 0.088)
    for i, layout in enumerate(layouts):
        q_static.copy_(torch.randn(4, hq, 128, device="cuda", generator=g).to(dtype))
        plan = state.load(layout, hkv)
        graph.replay()
        ref_o, ref_l = paged_decode_ref(q_static, k, v, layout, softmax_scale=0.088)
        tol = dict(atol=2e-3, rtol=1e-3) if dtype == torch.float16 else dict(atol=1.2e-2, rtol=1e-2)
        torch.testing.assert_close(out.float(), ref_o, **tol, msg=lambda m: f"batch {i} ({plan.num_work_items} items): {m}")
        seen = layout.seq_lens > 0
        torch.testing.assert_close(lse[seen], ref_l[seen].float(), atol=2e-3, rtol=1e-4)
        assert torch.isneginf(lse[~seen]).all()
