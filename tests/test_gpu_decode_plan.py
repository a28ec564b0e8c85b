"""The GPU page-table planner and the decode kernel's table mode (run on the device machine):
the plan against its Python model, the output against the float32 reference over a randomized
grid, determinism, the chunk policy, workspace limits and corrupt tables."""

import random

import pytest
import torch

import sglang_flashcore as fc
from cases import DECODE_HEADS, make_page_table, random_decode_case
from sglang_flashcore.decode import DecodePlanner, plan_table_reference
from sglang_flashcore.heuristics import DECODE_CTAS_PER_SM, SPLIT_MAX_PARTS, choose_chunk_tokens, target_chunks
from sglang_flashcore.reference import paged_decode_ref

pytestmark = pytest.mark.gpu

TOL = {torch.float16: dict(atol=2e-3, rtol=1e-3), torch.bfloat16: dict(atol=1.2e-2, rtol=1e-2)}
HEADS = DECODE_HEADS + [(64, 1)]


def _random_case(i: int):
    rng = random.Random(7000 + i)
    case = random_decode_case(rng, HEADS, batches=(1, 2, 3, 5, 8, 17, 40))
    return (*case, rng.choice([None, None, 16, 64, 100, 256, 1024, 4096]))


def _inputs(pattern, page, hq, hkv, d, dtype, lengths, seed):
    pt = make_page_table(pattern, lengths, page, seed)
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(len(lengths), hq, d, device="cuda", generator=g).to(dtype)
    k = torch.randn(pt.num_slots, hkv, d, device="cuda", generator=g).to(dtype)
    v = torch.randn(pt.num_slots, hkv, d, device="cuda", generator=g).to(dtype)
    return pt, q, k, v


def _planned(pt, q, k, chunk, **kw):
    planner = DecodePlanner(q.shape[0], q.shape[1], q.shape[2], "cuda", **kw)
    planner.plan(pt.req_to_token.cuda(), pt.req_pool_indices.cuda(), pt.seq_lens.cuda(), k.shape[1],
                 q.shape[1] // k.shape[1], chunk)
    return planner


def _check(out, lse, q, k, v, pt, page, dtype):
    layout = fc.from_sglang(pt.req_to_token.cuda(), pt.req_pool_indices.cuda(), pt.seq_lens.cuda(), page)
    ref_o, ref_l = paged_decode_ref(q, k, v, layout, softmax_scale=0.1)
    assert out.dtype == dtype and lse.dtype == torch.float32
    torch.testing.assert_close(out.float(), ref_o, **TOL[dtype])
    empty = layout.seq_lens == 0
    assert torch.isneginf(lse[empty]).all() and (out[empty] == 0).all()
    torch.testing.assert_close(lse[~empty], ref_l[~empty], atol=2e-3, rtol=1e-4)


@pytest.mark.parametrize("i", range(320))
def test_table_decode_matches_reference_and_plan_matches_model(i):
    pattern, page, hq, hkv, d, dtype, lengths, chunk = _random_case(i)
    pt, q, k, v = _inputs(pattern, page, hq, hkv, d, dtype, lengths, seed=i)
    planner = _planned(pt, q, k, chunk)
    out, lse = planner.run(q, k, v, 0.1, page)
    _check(out, lse, q, k, v, pt, page, dtype)
    _check_plan(planner, pt, hq, hkv)


def _check_plan(planner, pt, hq, hkv):
    """The device plan against its Python model, the tail split included."""
    got = planner.snapshot()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    want = plan_table_reference(pt.req_to_token, pt.req_pool_indices, pt.seq_lens, got.chunk_tokens, hq // hkv,
                                num_kv_heads=hkv, resident_ctas=DECODE_CTAS_PER_SM * sms, grid_work=planner.grid_work,
                                split_parts=SPLIT_MAX_PARTS)
    assert got.work == want.work and got.chunk_base == want.chunk_base and got.tasks == want.tasks
    assert got.split == want.split
    assert got.unique_tokens == want.unique_tokens and got.clamped == 0
    return got


@pytest.mark.parametrize("pattern,page,hq,hkv,dtype,lengths,chunk", [
    ("none", 64, 64, 16, torch.bfloat16, [8192] * 16, 1024),        # 128 tasks: the last wave's 25 items cut
    ("none", 16, 64, 16, torch.float16, [3001, 5000, 77, 4100], 100),  # ragged; 100-token chunks: 2 tiles, 2 parts
    ("prefix", 64, 64, 16, torch.float16, [6000 + 37 * i for i in range(12)], 256),  # shared chunks stay whole
    ("tree", 1, 64, 32, torch.bfloat16, [2500, 2600, 2700, 4000, 1], 128),  # MHA-like group 2, a wave of 13
    ("none", 128, 32, 32, torch.bfloat16, [20000, 9000], 512),       # group 1
    ("none", 64, 32, 8, torch.bfloat16, [8192] * 16, 1024),  # a wave of 50: the last 50 items' guided split
    ("none", 16, 32, 8, torch.float16, [131072, 40000], 2675),  # 64 tasks: 50 items' last quarters
])
def test_tail_split_matches_reference_and_is_deterministic(pattern, page, hq, hkv, dtype, lengths, chunk):
    d = 128
    pt, q, k, v = _inputs(pattern, page, hq, hkv, d, dtype, lengths, seed=11)
    planner = _planned(pt, q, k, chunk)
    out, lse = planner.run(q, k, v, 0.1, page)
    _check(out, lse, q, k, v, pt, page, dtype)
    got = _check_plan(planner, pt, hq, hkv)
    assert got.split, "this batch is meant to be cut by the tail split"
    readers = {w[3][0]: len(w[3]) for w in got.work}
    assert all(readers[chunk_index] == 1 for chunk_index, _ in got.split)  # only one-reader items
    again, lse_again = planner.run(q, k, v, 0.1, page)
    assert torch.equal(out, again) and torch.equal(lse, lse_again)


@pytest.mark.parametrize("page", [16, 128])
def test_head_major_pages(page):
    pt, q, k, v = _inputs("prefix", page, 16, 4, 128, torch.bfloat16, [300, 513, 64], seed=1)
    to_pages = lambda t: t.view(-1, page, 4, 128).transpose(1, 2).contiguous()  # noqa: E731
    out, lse = _planned(pt, q, k, 64).run(q, to_pages(k), to_pages(v), 0.1, page)
    _check(out, lse, q, k, v, pt, page, torch.bfloat16)


def test_deterministic_with_many_readers_per_chunk():
    # 70 requests x GQA 8 on the shared prefix: 560 rows, 18 32-row tasks per shared chunk
    pt, q, k, v = _inputs("prefix", 16, 32, 4, 128, torch.bfloat16, [3000 + 7 * i for i in range(70)], seed=2)
    planner = _planned(pt, q, k, 256)
    a, la = planner.run(q, k, v, 0.1, 16)
    for _ in range(3):
        planner.plan(pt.req_to_token.cuda(), pt.req_pool_indices.cuda(), pt.seq_lens.cuda(), 4, 8, 256)
        b, lb = planner.run(q, k, v, 0.1, 16)
        assert torch.equal(a, b) and torch.equal(la, lb)
    _check(a, la, q, k, v, pt, 16, torch.bfloat16)


@pytest.mark.parametrize("pattern,lengths", [
    ("none", [131072]), ("none", [100] * 4), ("none", [4096] * 64), ("none", [1] * 3),
    ("none", [8192] * 32),                          # the wave-filling move: 2731-token chunks
    ("none", [9000, 8192, 0, 7000, 12000] * 6),     # ragged, with empty requests
    ("prefix", [8192] * 32), ("identical", [5000] * 4),  # shared first slots: the power of two
])
def test_automatic_chunk_matches_the_python_policy(pattern, lengths):
    pt, q, k, v = _inputs(pattern, 128 if max(lengths) > 4096 else 16, 32, 8, 128, torch.float16, lengths, seed=3)
    planner = _planned(pt, q, k, None)
    meta = planner.meta()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    firsts = pt.req_to_token[pt.req_pool_indices.long(), 0].tolist()
    want = choose_chunk_tokens(lengths, planner.max_chunks, target=target_chunks(8, q.device), first_slots=firsts,
                               num_kv_heads=8, tasks_per_chunk=1, slots=DECODE_CTAS_PER_SM * sms)
    assert meta["chunk_tokens"] == want and meta["tasks"] >= 1
    if lengths == [8192] * 32 and pattern == "none" and sms == 132:
        assert want == 2731
    out, lse = planner.run(q, k, v, 0.1, 128 if max(lengths) > 4096 else 16)
    _check(out, lse, q, k, v, pt, 128 if max(lengths) > 4096 else 16, torch.float16)


def test_automatic_chunk_on_one_long_request():
    # one request of 128K tokens is split into enough work for every SM
    pt, q, k, v = _inputs("none", 128, 32, 8, 128, torch.float16, [131072], seed=4)
    planner = _planned(pt, q, k, None)
    assert planner.meta()["work_items"] * 8 >= 132
    out, lse = planner.run(q, k, v, 0.1, 128)
    _check(out, lse, q, k, v, pt, 128, torch.float16)


def test_small_workspace_makes_chunks_longer():
    pt, q, k, v = _inputs("tree", 16, 8, 2, 64, torch.float16, [5000, 3000, 4000, 10], seed=5)
    per_partial = 8 * 65 * 4
    planner = _planned(pt, q, k, 64, workspace_bytes=12 * per_partial)
    meta = planner.meta()
    assert meta["chunks"] <= 12 and meta["chunk_tokens"] > 64
    out, lse = planner.run(q, k, v, 0.1, 16)
    _check(out, lse, q, k, v, pt, 16, torch.float16)


def test_corrupt_table_is_clamped_not_a_crash():
    pt, q, k, v = _inputs("none", 1, 8, 8, 64, torch.float16, [50, 60], seed=6)
    r2t = pt.req_to_token.cuda()
    r2t[pt.req_pool_indices[0], 10] = 10**8  # a slot far past the pool
    planner = DecodePlanner(3, 8, 64, "cuda")
    lens = pt.seq_lens.cuda().clone()
    lens[1] = 10**6  # longer than a req_to_token row
    idx = torch.cat([pt.req_pool_indices.cuda(), torch.tensor([10**5], device="cuda")])  # a row past the pool
    planner.plan(r2t, idx, torch.cat([lens, lens[:1]]), 8, 1)
    out, lse = planner.run(torch.cat([q, q[:1]]), k, v, 0.1, 1)
    torch.cuda.synchronize()
    assert planner.meta()["clamped"] == 2
    assert torch.isfinite(out).all() and torch.isneginf(lse[2]).all()


def test_empty_batch_and_errors():
    planner = DecodePlanner(4, 8, 128, "cuda")
    r2t = torch.zeros(2, 8, dtype=torch.int32, device="cuda")
    none = torch.zeros(0, dtype=torch.int64, device="cuda")
    k = torch.zeros(16, 8, 128, device="cuda", dtype=torch.float16)
    planner.plan(r2t, none, none, 8, 1)
    out, lse = planner.run(torch.zeros(0, 8, 128, device="cuda", dtype=torch.float16), k, k, 0.1)
    assert out.shape == (0, 8, 128) and lse.shape == (0, 8)
    with pytest.raises(ValueError, match="q: 1 requests, the last plan has 0"):
        planner.run(torch.zeros(1, 8, 128, device="cuda", dtype=torch.float16), k, k, 0.1)
    with pytest.raises(ValueError, match="seq_lens: 5 requests, the planner holds 4"):
        lens = torch.ones(5, dtype=torch.int64, device="cuda")
        planner.plan(r2t, torch.zeros(5, dtype=torch.int64, device="cuda"), lens, 8, 1)
    with pytest.raises(TypeError, match="float16 or bfloat16"):
        planner.run(torch.zeros(0, 8, 128, device="cuda"), k.float(), k.float(), 0.1)


def test_paged_decode_table_public_call():
    pt, q, k, v = _inputs("tree", 16, 32, 8, 128, torch.bfloat16, [700, 800, 900, 3], seed=8)
    out, lse = fc.paged_decode_table(q, k, v, pt.req_to_token.cuda(), pt.req_pool_indices.cuda(), pt.seq_lens.cuda(),
                                     page_size=16, softmax_scale=0.1)
    _check(out, lse, q, k, v, pt, 16, torch.bfloat16)


@pytest.mark.parametrize("lengths", [[40000, 0, 9000], [9000, 0] * 12])
def test_merge_lane_groups_match_reference(lengths):
    # the binding picks 16 lane groups for few (request, head) blocks (3 x 32 heads) and 4 for many
    # (24 x 32 heads); each merges requests with hundreds of partials (and empty ones) correctly and
    # deterministically
    pt, q, k, v = _inputs("none", 64, 32, 8, 128, torch.bfloat16, lengths, seed=12)
    planner = _planned(pt, q, k, 128)
    out, lse = planner.run(q, k, v, 0.1, 64)
    _check(out, lse, q, k, v, pt, 64, torch.bfloat16)
    again, lse_again = planner.run(q, k, v, 0.1, 64)
    assert torch.equal(out, again) and torch.equal(lse, lse_again)


# SGLang's pool takes the copy loop's short address path (paged_decode.cu, load_tile: linear_rows);
# head-major pages of the same K/V take the general slot -> (page, offset) path: the same bytes,
# the same math, so bit-equal results.
@pytest.mark.parametrize("pattern,page,hq,hkv,d,dtype,lengths,chunk", [
    ("none", 1, 32, 8, 128, torch.bfloat16, [1000, 17, 1, 0, 333], 64),
    ("tree", 16, 64, 4, 64, torch.float16, [3000, 2900, 2800, 17], None),
    ("prefix", 64, 32, 32, 128, torch.float16, [700, 650, 900], 256),
])
def test_short_address_path_is_bit_equal(pattern, page, hq, hkv, d, dtype, lengths, chunk):
    pt, q, k, v = _inputs(pattern, page, hq, hkv, d, dtype, lengths, seed=41)
    planner = _planned(pt, q, k, chunk)
    out, lse = planner.run(q, k, v, 0.1, page)
    _check(out, lse, q, k, v, pt, page, dtype)
    to_pages = lambda t: t.view(-1, page, hkv, d).transpose(1, 2).contiguous()  # noqa: E731
    general, general_lse = planner.run(q, to_pages(k), to_pages(v), 0.1, page)
    assert torch.equal(out, general) and torch.equal(lse, general_lse)
