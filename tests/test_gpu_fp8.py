"""Decode and extend over FP8 KV pools (float8_e4m3fn, float8_e5m2, with scales) on the GPU,
against the float32 reference over the same FP8 values (run on the device machine)."""

import random

import pytest
import torch

import sglang_flashcore as fc
from cases import make_page_table, random_decode_case, random_extend_case
from sglang_flashcore.decode import DecodePlanner
from sglang_flashcore.reference import dequantize, paged_decode_ref, paged_extend_ref

pytestmark = pytest.mark.gpu

FP8 = (torch.float8_e4m3fn, torch.float8_e5m2)
TOL = {torch.float16: dict(atol=2e-3, rtol=1e-3), torch.bfloat16: dict(atol=1.2e-2, rtol=1e-2)}
SCALES = (1.0, 0.5, 0.037, 3.0, 12.5)  # non-powers of two too: the kernel folds them into its own scales


def _fp8_pool(num_slots, hkv, d, fp8, scale, g):
    return (torch.randn(num_slots, hkv, d, device="cuda", generator=g) / scale).to(fp8)


def _decode(pattern, page, hq, hkv, d, dtype, lengths, chunk, fp8, k_scale, v_scale, seed, head_major=False):
    pt = make_page_table(pattern, lengths, page, seed)
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(len(lengths), hq, d, device="cuda", generator=g).to(dtype)
    k = _fp8_pool(pt.num_slots, hkv, d, fp8, k_scale, g)
    v = _fp8_pool(pt.num_slots, hkv, d, fp8, v_scale, g)
    layout = fc.from_sglang(pt.req_to_token.cuda(), pt.req_pool_indices.cuda(), pt.seq_lens.cuda(), page)
    ref_o, ref_l = paged_decode_ref(q, k, v, layout, None, k_scale, v_scale)
    if head_major:
        to_pages = lambda t: t.view(-1, page, hkv, d).transpose(1, 2).contiguous()  # noqa: E731
        k, v = to_pages(k), to_pages(v)
    out, lse = fc.paged_decode(q, k, v, layout, chunk_tokens=chunk, k_scale=k_scale, v_scale=v_scale)
    return out, lse, ref_o, ref_l, layout


def _check(out, lse, ref_o, ref_l, layout, dtype, lse_atol=2e-3):
    assert out.dtype == dtype and lse.dtype == torch.float32
    torch.testing.assert_close(out.float(), ref_o, **TOL[dtype])
    empty = layout.seq_lens == 0
    assert torch.isneginf(lse[empty]).all() and (out[empty] == 0).all()
    torch.testing.assert_close(lse[~empty], ref_l[~empty], atol=lse_atol, rtol=1e-4)


@pytest.mark.parametrize("i", range(160))
def test_fp8_decode_matches_reference(i):
    rng = random.Random(5000 + i)
    pattern, page, hq, hkv, d, dtype, lengths = random_decode_case(rng)
    chunk = rng.choice([None, 64, 256, 1024])
    fp8 = FP8[i % 2]
    k_scale, v_scale = rng.choice(SCALES), rng.choice(SCALES)
    _check(*_decode(pattern, page, hq, hkv, d, dtype, lengths, chunk, fp8, k_scale, v_scale, seed=i), dtype)


@pytest.mark.parametrize("fp8", FP8, ids=str)
def test_fp8_decode_of_128k_tokens_split_across_the_gpu(fp8):
    out, lse, ref_o, ref_l, layout = _decode("none", 128, 32, 8, 128, torch.bfloat16, [131072], 1024, fp8, 0.5, 2.0, 7)
    assert layout.plan(1024).num_work_items == 128
    # the LSE sees a dropped or doubled work item (log(127/128) = -7.8e-3)
    _check(out, lse, ref_o, ref_l, layout, torch.bfloat16, lse_atol=1e-3)


@pytest.mark.parametrize("fp8", FP8, ids=str)
@pytest.mark.parametrize("pattern,page,lengths", [
    ("prefix", 16, [2048 + i for i in range(40)]),  # 40 readers x GQA 8 of one shared prefix
    ("identical", 64, [5000] * 8),
    ("tree", 1, [700, 900, 1300, 64, 2]),
])
def test_fp8_decode_with_sharing(fp8, pattern, page, lengths):
    out, lse, ref_o, ref_l, layout = _decode(pattern, page, 32, 4, 128, torch.float16, lengths, None, fp8, 0.25, 4.0, 3)
    _check(out, lse, ref_o, ref_l, layout, torch.float16, lse_atol=1e-3)


@pytest.mark.parametrize("page", [16, 128])
def test_fp8_head_major_pages(page):
    _check(*_decode("prefix", page, 16, 4, 64, torch.bfloat16, [300, 513, 64], 256, torch.float8_e4m3fn, 2.0, 0.5, 1,
                    head_major=True), torch.bfloat16)


def test_fp8_decode_in_a_cuda_graph_replays_new_batches():
    """One planner, captured once over an FP8 pool; replays after re-planning other batches."""
    hq, hkv, d, page, fp8 = 32, 8, 128, 16, torch.float8_e4m3fn
    pt = make_page_table("prefix", [600, 900, 40, 3000], page, seed=2)
    g = torch.Generator(device="cuda").manual_seed(2)
    k = _fp8_pool(pt.num_slots, hkv, d, fp8, 0.5, g)
    v = _fp8_pool(pt.num_slots, hkv, d, fp8, 2.0, g)
    r2t = pt.req_to_token.cuda().to(torch.int32)
    planner = DecodePlanner(r2t.shape[0], hq, d, "cuda")
    q = torch.randn(4, hq, d, device="cuda", generator=g).to(torch.bfloat16)
    rows, lens = pt.req_pool_indices.cuda(), pt.seq_lens.cuda().clone()
    planner.plan(r2t, rows, lens, hkv, hq // hkv)
    planner.run(q, k, v, d ** -0.5, page, 0.5, 2.0)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, lse = planner.run(q, k, v, d ** -0.5, page, 0.5, 2.0)
    for step, new_lens in enumerate(([600, 900, 40, 3000], [1, 17, 40, 2999], [512, 512, 512, 512])):
        lens.copy_(torch.tensor(new_lens, device="cuda"))
        q.copy_(torch.randn(q.shape, device="cuda", generator=g).to(q.dtype))
        planner.plan(r2t, rows, lens, hkv, hq // hkv)
        graph.replay()
        layout = fc.from_sglang(r2t, rows, lens, page)
        ref_o, ref_l = paged_decode_ref(q, k, v, layout, d ** -0.5, 0.5, 2.0)
        torch.testing.assert_close(out.float(), ref_o, **TOL[torch.bfloat16], msg=f"replay {step}")
        torch.testing.assert_close(lse, ref_l, atol=2e-3, rtol=1e-4, msg=f"replay {step}")


def test_fp8_decode_is_deterministic():
    args = ("tree", 16, 32, 8, 128, torch.bfloat16, [4000, 3000, 5000, 200], 256, torch.float8_e5m2, 0.3, 1.7)
    a, la, *_ = _decode(*args, seed=3)
    b, lb, *_ = _decode(*args, seed=3)
    assert torch.equal(a, b) and torch.equal(la, lb)


@pytest.mark.parametrize("i", range(60))
def test_fp8_extend_matches_reference(i):
    page, d, hq, hkv, dtype, prefix, ext, shared = random_extend_case(random.Random(9500 + i))
    fp8, k_scale, v_scale = FP8[i % 2], SCALES[i % 5], SCALES[(i + 2) % 5]
    pt = make_page_table("prefix" if shared else "none", [p + e for p, e in zip(prefix, ext)], page, seed=i,
                         shared=min(prefix, default=0))
    g = torch.Generator(device="cuda").manual_seed(i)
    k_cache = _fp8_pool(pt.num_slots, hkv, d, fp8, k_scale, g)
    v_cache = _fp8_pool(pt.num_slots, hkv, d, fp8, v_scale, g)
    q = torch.randn(sum(ext), hq, d, device="cuda", generator=g).to(dtype)
    k_new = torch.randn(sum(ext), hkv, d, device="cuda", generator=g).to(dtype)
    v_new = torch.randn(sum(ext), hkv, d, device="cuda", generator=g).to(dtype)
    layout = fc.from_sglang(pt.req_to_token.cuda(), pt.req_pool_indices.cuda(), torch.tensor(prefix, device="cuda"),
                            page)
    cu = torch.zeros(len(ext) + 1, dtype=torch.int32, device="cuda")
    cu[1:] = torch.tensor(ext, device="cuda").cumsum(0)
    out, lse = fc.paged_extend(q, k_new, v_new, k_cache, v_cache, layout, cu, k_scale=k_scale, v_scale=v_scale)
    # what paged_extend promises: the prefix rows widened to the model dtype times their scale (one
    # rounding there: 12.5 or 0.037 times an FP8 value needs more bits than bf16 has), then float32
    # attention over them
    k_deq, v_deq = dequantize(k_cache, k_scale, dtype), dequantize(v_cache, v_scale, dtype)
    ref_o, ref_l = paged_extend_ref(q, k_new, v_new, k_deq, v_deq, layout, cu)
    torch.testing.assert_close(out.float(), ref_o, **TOL[dtype])
    torch.testing.assert_close(lse, ref_l.float(), atol=2e-3, rtol=1e-4)


def test_fp8_pool_errors_name_the_argument():
    pt = make_page_table("none", [10], 16)
    r2t, rows, lens = pt.req_to_token.cuda(), pt.req_pool_indices.cuda(), pt.seq_lens.cuda()
    q = torch.randn(1, 8, 128, device="cuda", dtype=torch.bfloat16)
    k8 = torch.zeros(pt.num_slots, 2, 128, device="cuda", dtype=torch.float8_e4m3fn)
    with pytest.raises(TypeError, match="k_cache: expected dtype bfloat16 or float8_e4m3fn or float8_e5m2"):
        fc.paged_decode_table(q, k8.view(torch.uint8), k8.view(torch.uint8), r2t, rows, lens, page_size=16)
    with pytest.raises(ValueError, match="k_scale: expected one scale for the whole pool"):
        fc.paged_decode_table(q, k8, k8, r2t, rows, lens, page_size=16, k_scale=torch.ones(2, device="cuda"))
    # a CUDA scale tensor is read on the host (one sync) and works
    out, _ = fc.paged_decode_table(q, k8, k8, r2t, rows, lens, page_size=16, k_scale=torch.ones(1, device="cuda"))
    assert torch.isfinite(out).all()
