"""Decode captured once in a CUDA graph, replayed for batches with other lengths and sharing:
the planner runs before each replay, into the buffers the captured launch reads."""

import pytest
import torch

import sglang_flashcore as fc
from cases import make_page_table
from sglang_flashcore.decode import DecodePlanner
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
    # one req_to_token, one req_pool_indices and one seq_lens buffer, as SGLang's graph runner keeps them
    r2t = torch.zeros(8, max_ctx, dtype=torch.int32, device="cuda")
    idx = torch.zeros(4, dtype=torch.int64, device="cuda")
    lens = torch.zeros(4, dtype=torch.int64, device="cuda")

    def load(t):
        r2t.zero_()
        r2t[: t.req_to_token.shape[0], : t.req_to_token.shape[1]] = t.req_to_token.cuda()
        idx.copy_(t.req_pool_indices)
        lens.copy_(t.seq_lens)

    planner = DecodePlanner(8, hq, 128, "cuda")
    q_static = torch.randn(4, hq, 128, device="cuda", dtype=dtype)
    load(tables[0])
    planner.plan(r2t, idx, lens, hkv, hq // hkv)
    planner.run(q_static, k, v, 0.088, page)  # build and warm up outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, lse = planner.run(q_static, k, v, 0.088, page)
    for i, t in enumerate(tables):
        q_static.copy_(torch.randn(4, hq, 128, device="cuda", generator=g).to(dtype))
        load(t)
        planner.plan(r2t, idx, lens, hkv, hq // hkv)
        graph.replay()
        layout = fc.from_sglang(r2t, idx, lens, page)
        ref_o, ref_l = paged_decode_ref(q_static, k, v, layout, softmax_scale=0.088)
        tol = dict(atol=2e-3, rtol=1e-3) if dtype == torch.float16 else dict(atol=1.2e-2, rtol=1e-2)
        torch.testing.assert_close(out.float(), ref_o, **tol, msg=lambda m: f"batch {i}: {m}")
        seen = layout.seq_lens > 0
        torch.testing.assert_close(lse[seen], ref_l[seen].float(), atol=2e-3, rtol=1e-4)
        assert torch.isneginf(lse[~seen]).all()
