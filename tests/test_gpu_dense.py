"""The dense Hopper forward kernel against the float32 reference and SDPA (run on the device)."""

import random

import pytest
import torch
import torch.nn.functional as F

import sglang_flashcore as fc
from sglang_flashcore.reference import attention_ref
from cases import HEAD_DIMS, varlen_qkv

pytestmark = pytest.mark.gpu

TOL = {torch.float16: dict(atol=2e-3, rtol=1e-3), torch.bfloat16: dict(atol=1.5e-2, rtol=1e-2)}


def _random_case(i):
    rng = random.Random(5000 + i)
    d = rng.choice(HEAD_DIMS)
    hkv = rng.choice([1, 2, 4])
    group = rng.choice([1, 4, 8])
    causal = rng.random() < 0.5
    dtype = rng.choice([torch.float16, torch.bfloat16])
    batch = rng.choice([1, 2, 3, 5])
    lq, lk = [], []
    for _ in range(batch):
        k_len = rng.choice([0, 1, 2, 17, 127, 128, 129, rng.randint(1, 700), rng.randint(200, 1500)])
        q_len = rng.choice([k_len, k_len, 1, rng.randint(0, max(1, k_len)), rng.randint(1, 300)])
        lq.append(q_len)
        lk.append(k_len)
    return d, hkv * group, hkv, causal, dtype, lq, lk


def _cu(lengths, device="cuda"):
    out = torch.zeros(len(lengths) + 1, dtype=torch.int32, device=device)
    out[1:] = torch.tensor(lengths, device=device).cumsum(0)
    return out


@pytest.mark.parametrize("i", range(320))
def test_dense_kernel_matches_reference(i):
    d, hq, hkv, causal, dtype, lq, lk = _random_case(i)
    q, k, v, cq, ck = varlen_qkv(lq, lk, hq, hkv, d, dtype, seed=i)
    out, lse = fc.attention(q, k, v, causal=causal, cu_seqlens_q=cq, cu_seqlens_k=ck)
    ref_o, ref_l = attention_ref(q, k, v, causal=causal, cu_seqlens_q=cq, cu_seqlens_k=ck)
    torch.testing.assert_close(out.float(), ref_o, **TOL[dtype])
    seen = torch.isfinite(ref_l)
    assert torch.isneginf(lse[~seen]).all() and (out[~seen] == 0).all()
    torch.testing.assert_close(lse[seen], ref_l[seen], atol=2e-3, rtol=1e-4)


@pytest.mark.parametrize("causal", [False, True])
def test_seed_point_matches_sdpa_fp16(causal):
    """The seed's bar: B=16, H=16, S=2048, D=64, fp16, allclose(rtol=1e-3, atol=2e-3) to SDPA."""
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(16, 2048, 16, 64, device="cuda", generator=g, dtype=torch.float16) for _ in range(3))
    out, _ = fc.attention(q, k, v, causal=causal)
    want = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                          is_causal=causal).transpose(1, 2)
    assert torch.allclose(out, want, rtol=1e-3, atol=2e-3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_batched_gqa_with_sq_below_sk(dtype):
    g = torch.Generator(device="cuda").manual_seed(1)
    q = torch.randn(2, 100, 32, 128, device="cuda", generator=g).to(dtype)
    k = torch.randn(2, 333, 8, 128, device="cuda", generator=g).to(dtype)
    v = torch.randn(2, 333, 8, 128, device="cuda", generator=g).to(dtype)
    out, lse = fc.attention(q, k, v, causal=True)
    ref_o, ref_l = attention_ref(q, k, v, causal=True)
    assert out.shape == q.shape and lse.shape == (2, 100, 32)
    torch.testing.assert_close(out.float(), ref_o, **TOL[dtype])


def test_dense_kernel_is_deterministic():
    g = torch.Generator(device="cuda").manual_seed(2)
    q, k, v = (torch.randn(1, 1000, 8, 128, device="cuda", generator=g, dtype=torch.bfloat16) for _ in range(3))
    a, la = fc.attention(q, k, v, causal=True)
    b, lb = fc.attention(q, k, v, causal=True)
    assert torch.equal(a, b) and torch.equal(la, lb)


def test_dense_kernel_errors_name_the_argument():
    q = torch.randn(1, 4, 2, 72, device="cuda", dtype=torch.float16)
    with pytest.raises(ValueError, match="dense attention kernel supports head dims 64 to 256 in multiples of 16"):
        fc.attention(q, q, q)
    with pytest.raises(TypeError, match="dense attention kernel takes float16 or bfloat16"):
        fc.attention(q[..., :64].float(), q[..., :64].float(), q[..., :64].float())


@pytest.mark.parametrize("causal", [False, True])
def test_ragged_batch_with_empty_rows_is_exact_and_repeatable(causal):
    """A ragged batch of many more work tiles than SMs, with requests that have no query, no key
    or one of each (rows that see no key give 0 and -inf): the persistent schedule, the list of
    non-empty tiles and the half-width last key tile must cover every row once, bit for bit the
    same from launch to launch."""
    lq, lk = [300, 129, 0, 1, 200, 640], [300, 500, 7, 1, 50, 700]
    g = torch.Generator(device="cuda").manual_seed(7)
    q = torch.randn(sum(lq), 32, 64, device="cuda", generator=g).to(torch.bfloat16)
    k = torch.randn(sum(lk), 8, 64, device="cuda", generator=g).to(torch.bfloat16)
    v = torch.randn(sum(lk), 8, 64, device="cuda", generator=g).to(torch.bfloat16)
    cq, ck = _cu(lq), _cu(lk)
    run = lambda: fc.attention(q, k, v, causal=causal, cu_seqlens_q=cq, cu_seqlens_k=ck)  # noqa: E731
    out, lse = run()
    ref_o, ref_l = attention_ref(q, k, v, causal=causal, cu_seqlens_q=cq, cu_seqlens_k=ck)
    torch.testing.assert_close(out.float(), ref_o, **TOL[torch.bfloat16])
    seen = torch.isfinite(ref_l)
    assert torch.isneginf(lse[~seen]).all() and (out.float()[~seen] == 0).all()
    torch.testing.assert_close(lse[seen], ref_l[seen].float(), atol=1e-3, rtol=1e-3)
    for _ in range(3):
        other, other_lse = run()
        assert torch.equal(other, out) and torch.equal(other_lse, lse)


def test_claim_counter_is_left_zero_for_the_next_launch():
    """The persistent schedule claims work tiles from a counter kept per stream, which each
    launch's last CTA zeroes again (no memset before the kernel). Back-to-back launches on two
    streams and replays of a CUDA graph (captured with a fresh, zeroed counter) give the bits of
    the first launch; a counter left dirty would skip work tiles."""
    g = torch.Generator(device="cuda").manual_seed(11)
    q, k, v = (torch.randn(4, 700, 16, 64, device="cuda", generator=g, dtype=torch.bfloat16) for _ in range(3))
    run = lambda: fc.attention(q, k, v, causal=True)  # noqa: E731  (4 x 6 x 16 work tiles: persistent)
    out, lse = run()
    ref_o, _ = attention_ref(q, k, v, causal=True)
    torch.testing.assert_close(out.float(), ref_o, **TOL[torch.bfloat16])
    results = [run() for _ in range(3)]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        results += [run() for _ in range(2)]
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = run()
    torch.cuda.current_stream().wait_stream(side)
    for _ in range(2):
        graph.replay()
        torch.cuda.synchronize()
        results.append(tuple(t.clone() for t in captured))
    results.append(run())
    for other, other_lse in results:
        assert torch.equal(other, out) and torch.equal(other_lse, lse)
