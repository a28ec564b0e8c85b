"""The key packing of the public ``paged_extend`` CUDA path (a page table, ``plan_extend`` and
``extend_attention``, as the backend runs them), on CPU: the dense ops run their float64
reference, so what is checked is which keys go where — whole prefix pages left in the
pool (and listed) when the layout's pages are aligned, the rest packed after them — against
``paged_extend_ref``."""

import pytest
import torch

import sglang_flashcore as fc
from cases import make_extend_case
from sglang_flashcore import extend, ops
from sglang_flashcore.reference import paged_extend_ref


@pytest.fixture
def kernels_on_cpu(monkeypatch):
    """The extend path as it runs on a GPU (``use_kernels``), its two dense ops recorded; on CPU
    tensors they run the float64 reference."""
    calls = []
    real_prefill, real_dense = ops.paged_prefill_op, ops.attention_op

    def prefill(*args):
        calls.append(("paged", args[7].tolist(), args[8].tolist()))
        return real_prefill(*args)

    def dense(*args):
        calls.append(("packed",))
        return real_dense(*args)

    monkeypatch.setattr(ops, "paged_prefill_op", prefill)
    monkeypatch.setattr(ops, "attention_op", dense)
    monkeypatch.setattr(extend.config, "use_kernels", lambda device: True)
    return calls


def _run(case, scale=0.3, reverse_first_page=False):
    pt = case.table
    table = pt.req_to_token.clone()
    if reverse_first_page:  # request 0's first page holds its tokens backwards: not page-aligned
        row = int(pt.req_pool_indices[0])
        table[row, : pt.page_size] = table[row, : pt.page_size].flip(0)
    layout = fc.from_sglang(table, pt.req_pool_indices, torch.tensor(case.prefix), pt.page_size)
    cu_q = case.cu_seqlens_q()
    out, lse = extend._paged_extend_cuda(case.q, case.k_new, case.v_new, case.k_cache, case.v_cache, layout.row_offsets,
                                         layout.cols, layout.page_offsets, layout.counts, layout.seq_lens, cu_q,
                                         max(case.extend), pt.page_size, scale)
    ref, ref_lse = paged_extend_ref(case.q, case.k_new, case.v_new, case.k_cache, case.v_cache, layout, cu_q,
                                    softmax_scale=scale)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(lse, ref_lse.float(), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("prefix,ext", [([16, 0, 40], [3, 20, 1]), ([20, 5, 8], [3, 2, 9]), ([64, 64], [1, 7])])
def test_whole_prefix_pages_stay_in_the_pool(kernels_on_cpu, prefix, ext):
    case = make_extend_case(prefix, ext, 8, 4, 2, 16, torch.float64, seed=sum(prefix), shared=len(set(prefix)) == 1)
    _run(case)
    kind, pages, offsets = kernels_on_cpu[-1]
    rows = case.table.rows
    assert kind == "paged" and offsets[-1] == sum(p // 8 for p in prefix)
    assert pages == [rows[b][j] // 8 for b, p in enumerate(prefix) for j in range(0, p - p % 8, 8)]


def test_page_size_one_and_short_prefixes_are_packed(kernels_on_cpu):
    _run(make_extend_case([5, 9], [3, 2], 1, 4, 2, 16, torch.float64, seed=1))
    _run(make_extend_case([5, 7], [3, 2], 8, 4, 2, 16, torch.float64, seed=2))  # no whole page
    assert [c[0] for c in kernels_on_cpu] == ["packed", "packed"]


def test_a_layout_that_is_not_page_aligned_falls_back_to_packing(kernels_on_cpu):
    case = make_extend_case([16, 24], [2, 3], 8, 4, 2, 16, torch.float64, seed=3)
    _run(case, reverse_first_page=True)
    assert kernels_on_cpu[-1] == ("packed",)


@pytest.mark.parametrize("fp8", [torch.float8_e4m3fn, torch.float8_e5m2], ids=str)
def test_an_fp8_pool_reads_a_widened_copy_of_its_distinct_pages(kernels_on_cpu, fp8):
    """Shared prefix pages are listed once in the copy (its page numbers stay below the distinct
    count, the requests that share a page share its number), and the answer is the reference's
    over the pool's values times its scales."""
    case = make_extend_case([40, 40, 40], [3, 1, 6], 8, 4, 2, 16, torch.float32, seed=4, shared=True)
    pt, scales = case.table, (0.5, 2.0)
    k8, v8 = ((pool / s).to(fp8) for pool, s in zip((case.k_cache, case.v_cache), scales))
    k_values, v_values = (pool.float() * s for pool, s in zip((k8, v8), scales))
    layout = fc.from_sglang(pt.req_to_token, pt.req_pool_indices, torch.tensor(case.prefix), pt.page_size)
    cu_q = case.cu_seqlens_q()
    out, lse = extend._paged_extend_cuda(case.q, case.k_new, case.v_new, k8, v8, layout.row_offsets, layout.cols,
                                         layout.page_offsets, layout.counts, layout.seq_lens, cu_q, max(case.extend),
                                         pt.page_size, 0.3, *scales)
    kind, pages, offsets = kernels_on_cpu[-1]
    assert kind == "paged" and offsets == [0, 5, 10, 15]
    assert sorted(pages[:5]) == [0, 1, 2, 3, 4] and pages == pages[:5] * 3, "the same five widened pages each"
    ref, ref_lse = paged_extend_ref(case.q, case.k_new, case.v_new, k_values, v_values, layout, cu_q,
                                    softmax_scale=0.3)
    torch.testing.assert_close(out, ref.float(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse, ref_lse.float(), atol=1e-5, rtol=1e-5)
