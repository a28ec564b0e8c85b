"""The SGLang backend's extend path on the GPU: the per-batch plan, then the dense kernel reading
pages in place (page sizes 16-128, K/V in the pool) or one gather (page 1, K/V passed in),
bottom-right causal varlen, against the float32 ``paged_extend_ref`` over a randomized grid;
and both CTA orders of the paged kernel."""

import random

import pytest
import torch

import sglang_flashcore as fc
from cases import make_extend_case, random_extend_case
from sglang_flashcore.extend import extend_attention, plan_extend
from sglang_flashcore.reference import paged_extend_ref

pytestmark = pytest.mark.gpu

TOL = {torch.float16: dict(atol=2e-3, rtol=1e-3), torch.bfloat16: dict(atol=1.5e-2, rtol=1e-2)}


def _case(i):
    rng = random.Random(12000 + i)
    case = random_extend_case(rng)
    return (*case, rng.choice(["in_cache", "in_cache", "passed", "pool_only"]))


@pytest.mark.parametrize("i", range(200))
def test_extend_plan_on_the_dense_kernel_matches_reference(i):
    page, d, hq, hkv, dtype, prefix, ext, shared, mode = _case(i)
    case = make_extend_case(prefix, ext, page, hq, hkv, d, dtype, device="cuda", seed=i, shared=shared)
    pt = case.table
    prefix_t = torch.tensor(prefix, device="cuda")
    layout = fc.from_sglang(pt.req_to_token.cuda(), pt.req_pool_indices.cuda(), prefix_t, page)
    ref, ref_lse = paged_extend_ref(case.q, case.k_new, case.v_new, case.k_cache, case.v_cache, layout,
                                    case.cu_seqlens_q(), softmax_scale=0.1)
    plan = plan_extend(pt.req_to_token.cuda(), pt.req_pool_indices.cuda(), prefix_t, torch.tensor(ext, device="cuda"),
                       case.out_cache_loc, prefix_lens_cpu=prefix, extend_lens_cpu=ext, page_size=page)
    k_new, v_new = case.k_new, case.v_new
    if mode == "passed":
        case.k_cache[case.out_cache_loc] = float("nan")
        case.v_cache[case.out_cache_loc] = float("nan")
    keep = mode != "pool_only"
    out, lse = extend_attention(case.q, k_new if keep else None, v_new if keep else None, case.k_cache, case.v_cache,
                                plan, 0.1, new_kv_in_cache=mode != "passed", out_cache_loc=case.out_cache_loc)
    assert out.dtype == dtype and lse.dtype == torch.float32
    torch.testing.assert_close(out.float(), ref, **TOL[dtype])
    torch.testing.assert_close(lse, ref_lse.float(), atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("order", [0, 1])
@pytest.mark.parametrize("i", range(0, 200, 10))
def test_paged_kernel_is_exact_in_either_grid_order(i, order):
    page, d, hq, hkv, dtype, prefix, ext, shared, _ = _case(i)
    page = max(page, 16)
    case = make_extend_case(prefix, ext, page, hq, hkv, d, dtype, device="cuda", seed=i, shared=shared)
    pt = case.table
    prefix_t = torch.tensor(prefix, device="cuda")
    plan = plan_extend(pt.req_to_token.cuda(), pt.req_pool_indices.cuda(), prefix_t, torch.tensor(ext, device="cuda"),
                       case.out_cache_loc, prefix_lens_cpu=prefix, extend_lens_cpu=ext, page_size=page)
    if not plan.paged:
        pytest.skip("no prefix: the keys are the new tokens, nothing paged")
    plan.grid_order = torch.tensor([order], dtype=torch.int32, device="cuda")
    out, lse = extend_attention(case.q, case.k_new, case.v_new, case.k_cache, case.v_cache, plan, 0.1)
    layout = fc.from_sglang(pt.req_to_token.cuda(), pt.req_pool_indices.cuda(), prefix_t, page)
    ref, ref_lse = paged_extend_ref(case.q, case.k_new, case.v_new, case.k_cache, case.v_cache, layout,
                                    case.cu_seqlens_q(), softmax_scale=0.1)
    torch.testing.assert_close(out.float(), ref, **TOL[dtype])
    torch.testing.assert_close(lse, ref_lse.float(), atol=1e-3, rtol=1e-3)
