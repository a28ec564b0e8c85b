"""torch.compile(fullgraph=True) traces the public calls the README names: one graph each, no host
read of tensor data inside it, the same results as eager; and the ops' fake implementations agree
with the real ones (torch.library.opcheck)."""

from typing import Callable, List

import pytest
import torch

import sglang_flashcore as fc
from cases import make_page_table, random_qkv

# what a host read of tensor data looks like in a traced graph
HOST_READS = (".item()", "_local_scalar_dense", ".tolist()")


class Recorder:
    """A torch.compile backend that keeps the FX graphs it is given and runs them as they are."""

    def __init__(self):
        self.graphs: List[torch.fx.GraphModule] = []

    def __call__(self, gm: torch.fx.GraphModule, example_inputs):
        self.graphs.append(gm)
        return gm


def compile_and_check(fn: Callable, *calls) -> Recorder:
    """Compiles fn with fullgraph=True, runs it on each argument tuple, compares with eager, and
    checks the single graph holds a flashcore op and reads nothing on the host."""
    torch._dynamo.reset()
    rec = Recorder()
    compiled = torch.compile(fn, fullgraph=True, backend=rec, dynamic=False)
    for args in calls:
        got, want = compiled(*args), fn(*args)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, equal_nan=True, rtol=0, atol=0)
    assert len(rec.graphs) == 1, f"{len(rec.graphs)} graphs: a recompile or a guard on data"
    code = rec.graphs[0].code
    assert "flashcore." in code
    assert not [r for r in HOST_READS if r in code], code
    return rec


def cu(lengths) -> torch.Tensor:
    return torch.tensor([0] + list(torch.tensor(lengths).cumsum(0)), dtype=torch.int32)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("causal", [False, True])
def test_attention_batched(causal):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, s, h, 32, generator=g) for s, h in ((5, 4), (7, 2), (7, 2)))
    compile_and_check(lambda q, k, v: fc.attention(q, k, v, causal=causal), (q, k, v))


@pytest.mark.parametrize("give_max", [False, True])
def test_attention_ragged(give_max):
    """Two batches of the same sizes but other offsets run the same graph: nothing in it depends
    on the offsets' values (without max_seqlen_*, the packed sizes bound them)."""
    g = torch.Generator().manual_seed(1)
    q, k, v = torch.randn(9, 4, 32, generator=g), torch.randn(12, 2, 32, generator=g), torch.randn(12, 2, 32, generator=g)
    extra = dict(max_seqlen_q=9, max_seqlen_k=12) if give_max else {}

    def fn(q, k, v, cq, ck):
        return fc.attention(q, k, v, causal=True, cu_seqlens_q=cq, cu_seqlens_k=ck, **extra)

    compile_and_check(fn, (q, k, v, cu([2, 0, 7]), cu([5, 3, 4])), (q, k, v, cu([9, 0, 0]), cu([4, 4, 4])))


def test_paged_decode_table_default_checks():
    pt = make_page_table("prefix", [20, 30, 0], 16, seed=1)
    q, kc, vc = random_qkv(3, 4, 2, 64, pt.num_slots, torch.float32)

    def fn(q, kc, vc, r2t, idx, lens):
        return fc.paged_decode_table(q, kc, vc, r2t, idx, lens, page_size=16)

    compile_and_check(fn, (q, kc, vc, pt.req_to_token, pt.req_pool_indices, pt.seq_lens),
                      (q, kc, vc, pt.req_to_token, pt.req_pool_indices.flip(0), pt.seq_lens.flip(0)))


def test_paged_decode_table_bad_slot_still_fails_when_compiled():
    """Under compile the table's values are not read while tracing; the CPU reference still
    checks them when the op runs."""
    pt = make_page_table("none", [5, 7], 4, seed=0)
    q, kc, vc = random_qkv(2, 4, 2, 64, pt.num_slots, torch.float32)
    r2t = pt.req_to_token.clone()
    r2t[int(pt.req_pool_indices[0]), 0] = -1
    fn = torch.compile(lambda q, r2t: fc.paged_decode_table(q, kc, vc, r2t, pt.req_pool_indices, pt.seq_lens,
                                                            page_size=4), fullgraph=True, backend="eager")
    with pytest.raises(ValueError, match=r"req_to_token: KV slot out of range .* got -1"):
        fn(q, r2t)


def test_paged_extend():
    pt = make_page_table("prefix", [20, 30], 16, seed=2)
    layout = fc.from_sglang(pt.req_to_token, pt.req_pool_indices, pt.seq_lens, 16)
    q, kc, vc = random_qkv(5, 4, 2, 64, pt.num_slots, torch.float32)
    g = torch.Generator().manual_seed(2)
    kn, vn = torch.randn(5, 2, 64, generator=g), torch.randn(5, 2, 64, generator=g)

    def fn(q, kn, vn, cq):
        return fc.paged_extend(q, kn, vn, kc, vc, layout, cq)

    compile_and_check(fn, (q, kn, vn, cu([2, 3])), (q, kn, vn, cu([5, 0])))


def test_merge_states():
    g = torch.Generator().manual_seed(3)
    va, vb = torch.randn(3, 4, 8, generator=g), torch.randn(3, 4, 8, generator=g)
    sa, sb = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    compile_and_check(fc.merge_states, (va, sa, vb, sb))


def _opcheck_cases():
    g = torch.Generator().manual_seed(4)
    q, k = torch.randn(6, 4, 16, generator=g), torch.randn(9, 2, 16, generator=g)
    pt = make_page_table("prefix", [20, 30], 16, seed=1)
    layout = fc.from_sglang(pt.req_to_token, pt.req_pool_indices, pt.seq_lens, 16)
    qd, kc, vc = random_qkv(2, 4, 2, 16, pt.num_slots, torch.float32)
    L = layout
    ops = torch.ops.flashcore
    pages = torch.tensor([0, 2], dtype=torch.int32)
    return {
        "attention": (ops.attention.default, (q, k, k, cu([2, 4]), cu([5, 4]), 4, 5, True, 0.25)),
        "attention_batched": (ops.attention.default, (q[None], k[None, :6], k[None, :6], None, None, 6, 6, False, 0.5)),
        "paged_prefill": (ops.paged_prefill.default, (q, k, k, cu([2, 4]), cu([5, 4]), kc, vc, pages,
                                                      torch.tensor([0, 1, 2], dtype=torch.int32), 16, 4, True, 0.25)),
        "paged_decode_table": (ops.paged_decode_table.default, (qd, kc, vc, pt.req_to_token, pt.req_pool_indices,
                                                                pt.seq_lens, 16, 0.25, 0)),
        "paged_extend": (ops.paged_extend.default, (q[:5], k[:5], k[:5], kc, vc, L.row_offsets, L.cols,
                                                    L.page_offsets, L.counts, L.seq_lens, cu([2, 3]), 3, 16, 0.25)),
        "merge_states": (ops.merge_states.default, (q, q[..., 0], torch.randn(6, 4, 16, generator=g),
                                                    torch.randn(6, 4, generator=g))),
    }


@pytest.mark.parametrize("name", list(_opcheck_cases()))
def test_fake_implementations_match(name):
    op, args = _opcheck_cases()[name]
    result = torch.library.opcheck(op, args)
    assert set(result.values()) == {"SUCCESS"}, result
