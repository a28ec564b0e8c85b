"""The CUDA paged decode kernel against the float32 reference (run on the device machine)."""

import random

import pytest
import torch

import sglang_flashcore as fc
from cases import make_page_table, random_decode_case
from sglang_flashcore.reference import paged_decode_ref

pytestmark = pytest.mark.gpu

TOL = {torch.float16: dict(atol=2e-3, rtol=1e-3), torch.bfloat16: dict(atol=1.2e-2, rtol=1e-2)}
def _random_case(i: int):
    rng = random.Random(1000 + i)
    case = random_decode_case(rng)
    return (*case, rng.choice([16, 64, 128, 256, 512, 1024]))


def _run_case(pattern, page, hq, hkv, d, dtype, lengths, chunk, seed=0, head_major=False):
    pt = make_page_table(pattern, lengths, page, seed)
    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(seed)
    q = torch.randn(len(lengths), hq, d, device=dev, generator=g).to(dtype)
    k = torch.randn(pt.num_slots, hkv, d, device=dev, generator=g).to(dtype)
    v = torch.randn(pt.num_slots, hkv, d, device=dev, generator=g).to(dtype)
    layout = fc.from_sglang(pt.req_to_token.to(dev), pt.req_pool_indices.to(dev), pt.seq_lens.to(dev), page)
    ref_o, ref_l = paged_decode_ref(q, k, v, layout)
    if head_major:
        to_pages = lambda t: t.view(-1, page, hkv, d).transpose(1, 2).contiguous()  # noqa: E731
        k, v = to_pages(k), to_pages(v)
    out, lse = fc.paged_decode(q, k, v, layout, chunk_tokens=chunk)
    return out, lse, ref_o, ref_l, layout


@pytest.mark.parametrize("i", range(320))
def test_decode_kernel_matches_reference(i):
    pattern, page, hq, hkv, d, dtype, lengths, chunk = _random_case(i)
    out, lse, ref_o, ref_l, layout = _run_case(pattern, page, hq, hkv, d, dtype, lengths, chunk, seed=i)
    assert out.dtype == dtype and lse.dtype == torch.float32
    torch.testing.assert_close(out.float(), ref_o, **TOL[dtype])
    empty = layout.seq_lens == 0
    assert torch.isneginf(lse[empty]).all() and (out[empty] == 0).all()
    torch.testing.assert_close(lse[~empty], ref_l[~empty], atol=2e-3, rtol=1e-4)


@pytest.mark.parametrize("page", [16, 128])
def test_head_major_pages(page):
    out, lse, ref_o, ref_l, _ = _run_case("prefix", page, 16, 4, 128, torch.bfloat16, [300, 513, 64], 256,
                                         head_major=True)
    torch.testing.assert_close(out.float(), ref_o, **TOL[torch.bfloat16])


def test_decode_is_deterministic():
    args = ("tree", 16, 32, 8, 128, torch.bfloat16, [4000, 3000, 5000, 200], 256)
    a, la, *_ = _run_case(*args, seed=3)
    b, lb, *_ = _run_case(*args, seed=3)
    assert torch.equal(a, b) and torch.equal(la, lb)


def test_one_request_of_128k_tokens_split_across_the_gpu():
    out, lse, ref_o, ref_l, layout = _run_case("none", 128, 32, 8, 128, torch.float16, [131072], 1024)
    assert layout.plan(1024).num_work_items == 128
    torch.testing.assert_close(out.float(), ref_o, **TOL[torch.float16])
    # the LSE sees a dropped or doubled work item (one of 128: log(127/128) = -7.8e-3) where the
    # output, an average, may not
    torch.testing.assert_close(lse, ref_l.float(), atol=1e-3, rtol=0)


def test_many_readers_of_one_shared_prefix():
    # 40 requests x GQA 8 = 320 query rows on the shared chunks: several row groups per work item
    out, lse, ref_o, ref_l, layout = _run_case("prefix", 16, 32, 4, 128, torch.float16, [2048 + i for i in range(40)],
                                             512)
    assert layout.plan(512).max_readers == 40
    torch.testing.assert_close(out.float(), ref_o, **TOL[torch.float16])
    torch.testing.assert_close(lse, ref_l.float(), atol=1e-3, rtol=0)


def test_empty_batch():
    q = torch.zeros(0, 8, 128, device="cuda", dtype=torch.float16)
    k = torch.zeros(16, 8, 128, device="cuda", dtype=torch.float16)
    empty = fc.from_sglang(torch.zeros(1, 4, dtype=torch.int32, device="cuda"),
                           torch.zeros(0, dtype=torch.int64, device="cuda"),
                           torch.zeros(0, dtype=torch.int64, device="cuda"), 16)
    out, lse = fc.paged_decode(q, k, k, empty)
    assert out.shape == (0, 8, 128) and lse.shape == (0, 8)


def test_cuda_kernel_errors_name_the_argument():
    pt = make_page_table("none", [10], 16)
    layout = fc.from_sglang(pt.req_to_token.cuda(), pt.req_pool_indices.cuda(), pt.seq_lens.cuda(), 16)
    q = torch.randn(1, 4, 128, device="cuda")
    k = torch.randn(pt.num_slots, 4, 128, device="cuda")
    with pytest.raises(TypeError, match="q: the CUDA decode kernel takes float16 or bfloat16"):
        fc.paged_decode(q, k, k, layout)
    q, k = q[..., :72].half().contiguous(), k[..., :72].half().contiguous()  # (not a multiple of 16)
    with pytest.raises(ValueError, match="head dims 64 to 256 in multiples of 16, got 72"):
        fc.paged_decode(q, k, k, layout)
    q64, k64 = torch.randn(1, 4, 64, device="cuda").half(), k[..., :64].contiguous()
    with pytest.raises(ValueError, match="chunk_tokens: expected a positive int"):
        fc.paged_decode(q64, k64, k64, layout, chunk_tokens=0)
    # the planner reads a chunk's slots from the table: chunks longer than a SharingPlan's bound are fine
    out, lse = fc.paged_decode(q64, k64, k64, layout, chunk_tokens=4096)
    ref_o, ref_l = paged_decode_ref(q64, k64, k64, layout)
    torch.testing.assert_close(out.float(), ref_o, **TOL[torch.float16])
    torch.testing.assert_close(lse, ref_l, atol=2e-3, rtol=1e-4)


def test_deterministic_mode_is_batch_invariant():
    """DecodePlanner(deterministic=True): one request's output and LSE are bit-identical alone and
    in batches of 2, 17 and 64 with other requests, some sharing its prefix."""
    from sglang_flashcore.decode import DecodePlanner

    hq, hkv, d, page = 32, 8, 128, 16
    lengths = [7000] + [random.Random(i).randint(1, 9000) for i in range(63)]
    pt = make_page_table("prefix", lengths, page, seed=4, shared=4096)
    g = torch.Generator(device="cuda").manual_seed(4)
    q = torch.randn(64, hq, d, device="cuda", generator=g).to(torch.bfloat16)
    k = torch.randn(pt.num_slots, hkv, d, device="cuda", generator=g).to(torch.bfloat16)
    v = torch.randn(pt.num_slots, hkv, d, device="cuda", generator=g).to(torch.bfloat16)
    r2t = pt.req_to_token.cuda().to(torch.int32)
    rows, lens = pt.req_pool_indices.cuda(), pt.seq_lens.cuda()
    planner = DecodePlanner(64, hq, d, "cuda", deterministic=True)
    results = []
    for batch in (1, 2, 17, 64):
        planner.plan(r2t, rows[:batch], lens[:batch], hkv, hq // hkv)
        out, lse = planner.run(q[:batch], k, v, d ** -0.5, page)
        results.append((out[0].clone(), lse[0].clone()))
    for out, lse in results[1:]:
        assert torch.equal(out, results[0][0]) and torch.equal(lse, results[0][1])
    layout = fc.from_sglang(r2t, rows[:1], lens[:1], page)
    ref_o, _ = paged_decode_ref(q[:1], k, v, layout)
    torch.testing.assert_close(results[0][0].float(), ref_o[0], **TOL[torch.bfloat16])
