"""FP8 KV pools (float8_e4m3fn, float8_e5m2) with per-pool scales, on CPU: argument checks, the
ops over an FP8 pool against the same ops over its dequantized values, and the SGLang backend
storing into and reading from an FP8 pool the way SGLang's pool keeps it."""

import math
import os

import pytest
import torch

import sglang_flashcore as fc
from cases import make_page_table
from sglang_flashcore.extend import extend_attention, plan_extend, widened_page_plan
from sglang_flashcore.reference import paged_decode_ref

FP8 = (torch.float8_e4m3fn, torch.float8_e5m2)


def _quantized_pool(num_slots, hkv, d, fp8, scale, seed=0):
    """A pool of random values / scale stored as FP8, and the values it stands for (float32)."""
    g = torch.Generator().manual_seed(seed)
    stored = (torch.randn(num_slots, hkv, d, generator=g) / scale).to(fp8)
    return stored, stored.float() * scale


@pytest.mark.parametrize("fp8", FP8, ids=str)
@pytest.mark.parametrize("pattern,page", [("prefix", 16), ("none", 1), ("tree", 64)])
def test_decode_over_fp8_pool_equals_decode_over_its_values(fp8, pattern, page):
    pt = make_page_table(pattern, [70, 130, 9, 64], page, seed=3)
    k8, k = _quantized_pool(pt.num_slots, 2, 64, fp8, 0.25, seed=1)
    v8, v = _quantized_pool(pt.num_slots, 2, 64, fp8, 3.0, seed=2)
    q = torch.randn(4, 8, 64, generator=torch.Generator().manual_seed(4))
    args = (pt.req_to_token, pt.req_pool_indices, pt.seq_lens)
    out, lse = fc.paged_decode_table(q, k8, v8, *args, page_size=page, k_scale=0.25, v_scale=torch.tensor([3.0]))
    ref_o, ref_l = fc.paged_decode_table(q, k, v, *args, page_size=page)
    torch.testing.assert_close(out, ref_o, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse, ref_l, atol=1e-5, rtol=1e-5)
    # the layout API passes the scales through
    layout = fc.from_sglang(*args, page)
    out2, lse2 = fc.paged_decode(q, k8, v8, layout, k_scale=0.25, v_scale=3.0)
    torch.testing.assert_close(out2, ref_o, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse2, ref_l, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fp8", FP8, ids=str)
def test_extend_over_fp8_pool_equals_extend_over_its_values(fp8):
    pt = make_page_table("prefix", [48, 32, 0], 16, seed=5)
    k8, k = _quantized_pool(pt.num_slots, 2, 64, fp8, 0.5, seed=6)
    v8, v = _quantized_pool(pt.num_slots, 2, 64, fp8, 2.0, seed=7)
    layout = fc.from_sglang(pt.req_to_token, pt.req_pool_indices, pt.seq_lens, 16)
    cu = torch.tensor([0, 5, 6, 13], dtype=torch.int32)
    g = torch.Generator().manual_seed(8)
    q, kn, vn = (torch.randn(13, h, 64, generator=g) for h in (4, 2, 2))
    out, lse = fc.paged_extend(q, kn, vn, k8, v8, layout, cu, k_scale=0.5, v_scale=2.0)
    ref_o, ref_l = fc.paged_extend(q, kn, vn, k, v, layout, cu)
    torch.testing.assert_close(out, ref_o, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse, ref_l, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fp8", FP8, ids=str)
@pytest.mark.parametrize("pattern", ["prefix", "tree", "identical", "none"])
def test_widened_page_plan_widens_each_distinct_page_once(fp8, pattern):
    """A paged plan over an FP8 pool reads a compact widened copy of its distinct pages: the same
    answer as a gathered plan over the pool's values, each shared page copied once."""
    page, ext = 16, [6, 1, 9, 3]
    pt = make_page_table(pattern, [70, 53, 96, 40], page, seed=4, shared=48)
    lengths = pt.seq_lens.tolist()
    ext = [min(e, n) for e, n in zip(ext, lengths)]
    prefix = [n - e for n, e in zip(lengths, ext)]
    rows = pt.req_pool_indices
    new_slots = torch.cat([pt.req_to_token[r, p:p + e] for r, p, e in zip(rows.tolist(), prefix, ext)])
    k8, k = _quantized_pool(pt.num_slots, 2, 64, fp8, 0.5, seed=6)
    v8, v = _quantized_pool(pt.num_slots, 2, 64, fp8, 2.0, seed=7)

    def plan(paged):
        return plan_extend(pt.req_to_token, rows, torch.tensor(prefix), torch.tensor(ext), new_slots,
                           page_size=page, paged=paged)

    paged = plan(None)
    assert paged.paged
    wide = widened_page_plan(paged)
    pool_pages = paged.key_pages.to(torch.int64)
    assert torch.equal(wide.widen_pages, torch.unique(pool_pages))
    assert torch.equal(wide.widen_pages[wide.key_pages.to(torch.int64)], pool_pages)
    if pattern != "none":
        assert wide.widen_pages.numel() < pool_pages.numel(), "a shared page is widened once"
    assert widened_page_plan(wide) is wide and widened_page_plan(plan(False)).widen_pages is None
    q = torch.randn(sum(ext), 4, 64, generator=torch.Generator().manual_seed(8))
    with pytest.raises(ValueError, match="plan: .*widened_page_plan"):
        extend_attention(q, None, None, k8, v8, paged, 0.125, out_cache_loc=new_slots, k_scale=0.5, v_scale=2.0)
    out, lse = extend_attention(q, None, None, k8, v8, wide, 0.125, out_cache_loc=new_slots, k_scale=0.5,
                                v_scale=2.0)
    ref_o, ref_l = extend_attention(q, None, None, k, v, plan(False), 0.125, out_cache_loc=new_slots)
    torch.testing.assert_close(out, ref_o, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse, ref_l, atol=1e-5, rtol=1e-5)


def _decode_args(fp8=torch.float8_e4m3fn):
    pt = make_page_table("none", [10, 3], 1)
    k8, _ = _quantized_pool(pt.num_slots, 2, 64, fp8, 1.0)
    q = torch.randn(2, 4, 64)
    return q, k8, pt


@pytest.mark.parametrize("name,value,error,match", [
    ("k_scale", torch.ones(2), ValueError, r"k_scale: expected one scale for the whole pool, got a tensor of shape \(2,\)"),
    ("v_scale", torch.ones(1, dtype=torch.int32), TypeError, "v_scale: expected a floating-point scale"),
    ("k_scale", float("nan"), ValueError, "k_scale: expected a finite positive scale"),
    ("v_scale", 0.0, ValueError, "v_scale: expected a finite positive scale"),
    ("k_scale", -2.0, ValueError, "k_scale: expected a finite positive scale"),
    ("k_scale", True, TypeError, "k_scale: expected a float or a one-element tensor"),
    ("v_scale", "1.0", TypeError, "v_scale: expected a float or a one-element tensor"),
])
def test_bad_scales_name_the_argument(name, value, error, match):
    q, k8, pt = _decode_args()
    with pytest.raises(error, match=match):
        fc.paged_decode_table(q, k8, k8, pt.req_to_token, pt.req_pool_indices, pt.seq_lens, **{name: value})


def test_pools_of_other_dtypes_are_refused_by_name():
    q, k8, pt = _decode_args()
    args = (pt.req_to_token, pt.req_pool_indices, pt.seq_lens)
    with pytest.raises(TypeError, match="k_cache: expected dtype float32 or float8_e4m3fn or float8_e5m2, got torch.uint8"):
        fc.paged_decode_table(q, k8.view(torch.uint8), k8.view(torch.uint8), *args)
    with pytest.raises(TypeError, match="k_cache and v_cache: expected one dtype"):
        fc.paged_decode_table(q, k8, k8.view(torch.float8_e5m2), *args)
    # the dense attention ops take no FP8 operands
    with pytest.raises(TypeError, match="k: expected dtype float32"):
        fc.attention(q.unsqueeze(0), k8[:10].unsqueeze(0), k8[:10].unsqueeze(0))


# ------------------------------------------------------------------ the SGLang backend
if os.environ.get("FLASHCORE_REQUIRE_SGLANG") != "1":
    sglang = pytest.importorskip("sglang", reason="SGLang is not installed (pip install -e .[sglang])")

from sglang.srt.model_executor.forward_batch_info import ForwardMode  # noqa: E402
from sglang.test.kits.attention_unittest.attention_methods import dense_attention as kit  # noqa: E402

from sglang_flashcore import plugin  # noqa: E402
from sglang_flashcore.sglang_backend import FlashCoreBackend  # noqa: E402
from test_sglang_backend import _NoSkip, _run  # noqa: E402

plugin.register()


def _fp8_fixture(mode, prefix, extend, fp8, k_scale, v_scale, page=16):
    """SGLang's kit fixture with its pool turned into an FP8 pool as SGLang builds one for
    --kv-cache-dtype fp8_*: float8 values stored as uint8, the layer's scales set."""
    case = kit.DenseAttentionCase(name="fp8", backend=plugin.BACKEND_NAME, forward_mode=mode, num_heads=8,
                                  num_kv_heads=2, page_size=page, prefix_lens=tuple(prefix), extend_lens=tuple(extend))
    fixture = _run(kit.build_dense_attention_fixture, _NoSkip(), case, head_dim=64, hidden_size=128,
                   max_context_len=512, dtype=torch.float32, device="cpu", loc_layout="shuffled_pages")
    pool, runner = fixture.runner.token_to_kv_pool, fixture.runner
    for bufs, scale in ((pool.k_buffer, k_scale), (pool.v_buffer, v_scale)):
        for i, buf in enumerate(bufs):
            bufs[i] = (buf.float() / scale).to(fp8).view(torch.uint8)
    pool.dtype, pool.store_dtype = fp8, torch.uint8
    runner.kv_cache_dtype = fp8
    attn = fixture.actual_module.attn
    attn.k_scale, attn.v_scale = torch.tensor(k_scale), torch.tensor(v_scale)
    attn.k_scale_float, attn.v_scale_float = k_scale, v_scale
    backend = FlashCoreBackend(runner)
    return kit.replace_backend(fixture, backend), backend, attn


def _exactly_fp8(shape, fp8, scale, seed):
    """Values that FP8 holds exactly after division by ``scale`` (so storing them loses nothing)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) / scale).to(fp8).float() * scale


def _expected(q, keys, values, scale, causal_tail):
    """Softmax attention of q [n, Hq, D] over keys/values [m, Hkv, D]; the last ``causal_tail``
    keys are the queries' own tokens (causal)."""
    group = q.shape[1] // keys.shape[1]
    k, v = keys.repeat_interleave(group, 1), values.repeat_interleave(group, 1)
    s = torch.einsum("qhd,khd->hqk", q, k) * scale
    n, m = q.shape[0], k.shape[0]
    visible = torch.arange(m).unsqueeze(0) <= (m - causal_tail + torch.arange(n)).unsqueeze(1)
    s = s.masked_fill(~visible, -math.inf)
    return torch.einsum("hqk,khd->qhd", s.softmax(-1), v)


@pytest.mark.parametrize("fp8", FP8, ids=str)
@pytest.mark.parametrize("mode", ["decode", "extend"])
def test_backend_stores_and_reads_an_fp8_pool(fp8, mode):
    k_scale, v_scale = 0.5, 4.0
    prefix, extend = ([20, 37], [1, 1]) if mode == "decode" else ([20, 33], [5, 3])
    fmode = ForwardMode.DECODE if mode == "decode" else ForwardMode.EXTEND
    fixture, backend, attn = _fp8_fixture(fmode, prefix, extend, fp8, k_scale, v_scale)
    fb = fixture.forward_batch
    n = sum(extend)
    q = torch.randn(n, 8 * 64, generator=torch.Generator().manual_seed(11))
    k = _exactly_fp8((n, 2, 64), fp8, k_scale, 12)  # as RadixAttention hands them over
    v = _exactly_fp8((n, 2, 64), fp8, v_scale, 13)
    k_in, v_in = k.clone(), v.clone()
    _run(backend.init_forward_metadata, fb)
    run = backend.forward_decode if mode == "decode" else backend.forward_extend
    out = _run(run, q, k, v, attn, fb)
    assert torch.equal(k, k_in) and torch.equal(v, v_in), "the caller's k/v must not be scaled in place"
    pool = fixture.runner.token_to_kv_pool
    k_pool, v_pool = pool.get_key_buffer(attn.layer_id), pool.get_value_buffer(attn.layer_id)
    assert k_pool.dtype == fp8
    loc = fb.out_cache_loc.to(torch.int64)
    torch.testing.assert_close(k_pool[loc].float() * k_scale, k, atol=0, rtol=0)
    torch.testing.assert_close(v_pool[loc].float() * v_scale, v, atol=0, rtol=0)
    r2t = backend.req_to_token_pool.req_to_token
    q3, start = q.view(n, 8, 64), 0
    for b, (p, e) in enumerate(zip(prefix, extend)):
        row = int(fb.req_pool_indices[b])
        slots = r2t[row, :p + e].to(torch.int64)
        keys, values = k_pool[slots].float() * k_scale, v_pool[slots].float() * v_scale
        want = _expected(q3[start:start + e], keys, values, attn.scaling, e)
        got = out.view(n, 8, 64)[start:start + e]
        torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5)
        start += e


def test_backend_accepts_fp8_kv_at_construction_and_refuses_others():
    from test_sglang_backend import _fake_runner

    from sglang_flashcore.sglang_backend import UnsupportedFeatureError

    for fp8 in FP8:
        assert FlashCoreBackend(_fake_runner(kv_cache_dtype=fp8)).fp8_kv
    with pytest.raises(UnsupportedFeatureError, match="KV cache"):
        FlashCoreBackend(_fake_runner(kv_cache_dtype=torch.uint8))
