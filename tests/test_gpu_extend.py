"""paged_extend on the GPU (prefix pages through the layout + causal new tokens) vs the reference."""

import random

import pytest
import torch

import sglang_flashcore as fc
from cases import make_page_table, random_extend_case
from sglang_flashcore.reference import paged_extend_ref

pytestmark = pytest.mark.gpu

TOL = {torch.float16: dict(atol=2e-3, rtol=1e-3), torch.bfloat16: dict(atol=1.5e-2, rtol=1e-2)}


def _case(i):
    page, d, hq, hkv, dtype, prefix, ext, shared = random_extend_case(random.Random(9000 + i))
    return page, d, hq, hkv, dtype, prefix, ext, "prefix" if shared else "none"


@pytest.mark.parametrize("i", range(220))
def test_paged_extend_kernel_matches_reference(i):
    page, d, hq, hkv, dtype, prefix, ext, pattern = _case(i)
    pt = make_page_table(pattern, [p + e for p, e in zip(prefix, ext)], page, seed=i, shared=min(prefix, default=0))
    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(i)
    k_cache = torch.randn(pt.num_slots, hkv, d, device=dev, generator=g).to(dtype)
    v_cache = torch.randn(pt.num_slots, hkv, d, device=dev, generator=g).to(dtype)
    q = torch.randn(sum(ext), hq, d, device=dev, generator=g).to(dtype)
    new_slots = torch.tensor([s for row, p in zip(pt.rows, prefix) for s in row[p:]], dtype=torch.long, device=dev)
    k_new, v_new = k_cache[new_slots], v_cache[new_slots]
    layout = fc.from_sglang(pt.req_to_token.to(dev), pt.req_pool_indices.to(dev), torch.tensor(prefix, device=dev), page)
    cu = torch.zeros(len(ext) + 1, dtype=torch.int32, device=dev)
    cu[1:] = torch.tensor(ext, device=dev).cumsum(0)
    out, lse = fc.paged_extend(q, k_new, v_new, k_cache, v_cache, layout, cu)
    ref_o, ref_l = paged_extend_ref(q, k_new, v_new, k_cache, v_cache, layout, cu)
    torch.testing.assert_close(out.float(), ref_o, **TOL[dtype])
    torch.testing.assert_close(lse, ref_l.float(), atol=2e-3, rtol=1e-4)
