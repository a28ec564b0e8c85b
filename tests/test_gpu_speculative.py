"""Target verify on the GPU (run on the device machine): the decode planner and kernel over the
draft tokens plus the draft-token op, against a float64 oracle over a randomized grid (chains and
trees, shared prefixes, page sizes, GQA); the device plan against its Python model (a shared
context chunk is one work item for every draft token of every sharer); one CUDA-graph capture
replayed for other batches; SGLang's kit runner modes for speculation on CUDA."""

import functools
import os
import random
import unittest

import pytest
import torch

from sglang_flashcore.decode import DecodePlanner, plan_table_reference
from sglang_flashcore.heuristics import DECODE_CTAS_PER_SM, SPLIT_MAX_PARTS
from sglang_flashcore.plugin import BACKEND_NAME
from sglang_flashcore.speculative import VerifyBuffers, draft_mask_from_sglang, plan_verify, verify_attention
from cases import HEAD_DIMS
from spec_cases import draft_positions, make_verify_case, random_verify_params, verify_oracle

pytestmark = pytest.mark.gpu

SCALE = 0.09
TOL = {torch.float16: dict(atol=3e-3, rtol=2e-3), torch.bfloat16: dict(atol=1.5e-2, rtol=1e-2)}


def _case(p, dtype, seed):
    return make_verify_case(p["prefix"], p["num_draft"], p["page"], p["hq"], p["hkv"], p["d"], trees=p["trees"],
                            shared=p["shared"], dtype=dtype, device="cuda", seed=seed)


def _plan(case, planner, chunk=None):
    t = case.table
    prefix = torch.tensor(case.prefix, device="cuda")
    mask = draft_mask_from_sglang(case.custom_mask(), prefix, case.num_draft)
    hkv = case.k_cache.shape[1]
    return plan_verify(t.req_to_token.cuda(), t.req_pool_indices.cuda(), prefix, case.num_draft, mask,
                       planner=planner, num_kv_heads=hkv, group=case.q.shape[1] // hkv, chunk_tokens=chunk)


def _check(out, lse, case, dtype):
    ref_o, ref_l = verify_oracle(case, SCALE)
    assert out.dtype == dtype and lse.dtype == torch.float32
    torch.testing.assert_close(out.double().cpu(), ref_o, **TOL[dtype])
    torch.testing.assert_close(lse.double().cpu(), ref_l, atol=2e-3, rtol=1e-4)


@pytest.mark.parametrize("i", range(24))
def test_windowed_verify_kernels_match_the_oracle(i):
    """Sliding-window layers: a second planner over each draft token's window, the draft mask cut
    to it; the full layers' plan of the same batch is unchanged."""
    rng = random.Random(9500 + i)
    p = random_verify_params(rng, page_sizes=(1, 16, 64), max_context=rng.choice([300, 3000]))
    dtype = rng.choice([torch.float16, torch.bfloat16])
    window = rng.choice([0, 3, 63, 64, 200, 1000])
    case = _case(p, dtype, seed=i)
    t = case.table
    prefix = torch.tensor(case.prefix, device="cuda")
    mask = draft_mask_from_sglang(case.custom_mask(), prefix, case.num_draft)
    hkv = case.k_cache.shape[1]
    planners = [DecodePlanner(case.q.shape[0], p["hq"], p["d"], "cuda") for _ in range(2)]
    plan = plan_verify(t.req_to_token.cuda(), t.req_pool_indices.cuda(), prefix, case.num_draft, mask,
                       planner=planners[0], num_kv_heads=hkv, group=case.q.shape[1] // hkv, window_left=window,
                       positions=draft_positions(case).cuda(), window_planner=planners[1])
    args = (case.q, case.k_draft, case.v_draft, case.k_cache, case.v_cache, t.req_to_token.cuda(), plan, SCALE)
    out, lse = verify_attention(*args, page_size=p["page"], window=True)
    ref_o, ref_l = verify_oracle(case, SCALE, window=window)
    torch.testing.assert_close(out.double().cpu(), ref_o, **TOL[dtype])
    torch.testing.assert_close(lse.double().cpu(), ref_l, atol=2e-3, rtol=1e-4)
    _check(*verify_attention(*args, page_size=p["page"]), case, dtype)


@pytest.mark.parametrize("i", range(120))
def test_verify_kernels_match_the_oracle(i):
    rng = random.Random(9000 + i)
    p = random_verify_params(rng, page_sizes=(1, 16, 64, 128), head_dims=HEAD_DIMS,
                             max_context=rng.choice([300, 3000]))
    dtype = rng.choice([torch.float16, torch.bfloat16])
    case = _case(p, dtype, seed=i)
    planner = DecodePlanner(case.q.shape[0], p["hq"], p["d"], "cuda")
    plan = _plan(case, planner, rng.choice([None, 64, 256]))
    out, lse = verify_attention(case.q, case.k_draft, case.v_draft, case.k_cache, case.v_cache,
                                case.table.req_to_token.cuda(), plan, SCALE, page_size=p["page"])
    _check(out, lse, case, dtype)


@pytest.mark.parametrize("i", range(40))
def test_draft_kernel_matches_the_float32_draft_op_and_merge(i):
    """kernels.draft_merge against draft_attention + merge_states_ref (what the CPU path runs):
    chains and trees of 1-40 draft tokens, GQA, compiled and padded head dims, soft-caps, context LSEs of
    -inf (no context) among finite ones."""
    from sglang_flashcore import kernels
    from sglang_flashcore.reference import merge_states_ref
    from sglang_flashcore.speculative import chain_mask, draft_attention
    from spec_cases import random_parents, tree_visibility

    rng = random.Random(4000 + i)
    batch, n = rng.choice([1, 2, 5]), rng.choice([1, 2, 4, 7, 16, 40])
    hkv, group, d = rng.choice([1, 2, 8]), rng.choice([1, 4, 8]), rng.choice(HEAD_DIMS)
    dtype, softcap = rng.choice(list(TOL)), rng.choice([0.0, 0.0, 5.0])
    g = torch.Generator(device="cuda").manual_seed(i)
    rows, hq = batch * n, hkv * group
    q = torch.randn(rows, hq, d, device="cuda", generator=g).to(dtype)
    k = torch.randn(rows, hkv, d, device="cuda", generator=g).to(dtype)
    v = torch.randn(rows, hkv, d, device="cuda", generator=g).to(dtype)
    if rng.random() < 0.5:
        mask = chain_mask(batch, n, "cuda")
    else:  # trees: each token sees its ancestors and itself
        mask = torch.stack([tree_visibility(random_parents(rng, n)) for _ in range(batch)]).cuda()
    out_c = torch.randn(rows, hq, d, device="cuda", generator=g).to(dtype)
    lse_c = torch.randn(rows, hq, device="cuda", generator=g) * 3
    lse_c[torch.rand(rows, hq, device="cuda", generator=g) < 0.2] = float("-inf")
    out_c[torch.isneginf(lse_c)] = 0
    out, lse = kernels.draft_merge(q, k, v, mask, out_c, lse_c, SCALE, softcap)
    ref_o, ref_l = merge_states_ref(out_c, lse_c, *draft_attention(q, k, v, mask, SCALE, softcap))
    assert out.dtype == dtype and lse.dtype == torch.float32
    torch.testing.assert_close(out.float(), ref_o.to(dtype).float(), **TOL[dtype])
    torch.testing.assert_close(lse, ref_l.float(), atol=1e-4, rtol=1e-5)


def test_draft_kernel_propagates_nan_and_names_bad_arguments():
    from sglang_flashcore import kernels
    from sglang_flashcore.speculative import chain_mask

    q = torch.randn(8, 4, 128, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(8, 2, 128, device="cuda", dtype=torch.bfloat16)
    mask = chain_mask(2, 4, "cuda")
    lse_c = torch.zeros(8, 4, device="cuda")
    lse_c[3, 1] = float("nan")
    q[5, 2, 0] = float("nan")
    out, lse = kernels.draft_merge(q, k, k, mask, torch.zeros_like(q), lse_c, SCALE)
    bad = torch.zeros(8, 4, dtype=torch.bool)
    bad[3, 1] = bad[5, 2] = True
    assert torch.isnan(lse[bad.cuda()]).all() and torch.isnan(out[bad.cuda()]).all()
    assert torch.isfinite(lse[~bad.cuda()]).all() and torch.isfinite(out[~bad.cuda()]).all()
    with pytest.raises(ValueError, match="draft_mask: expected a contiguous bool"):
        kernels.draft_merge(q, k, k, chain_mask(3, 4, "cuda"), torch.zeros_like(q), lse_c, SCALE)
    with pytest.raises(ValueError, match="lse_ctx: expected contiguous float32"):
        kernels.draft_merge(q, k, k, mask, torch.zeros_like(q), lse_c.double(), SCALE)


@pytest.mark.parametrize("page", [1, 16, 64])
def test_shared_context_chunks_are_one_work_item_for_every_draft_token(page):
    prefix, n, chunk, hq, hkv = [2048, 2048 + 100, 2048 + 700, 2048 + 5], 6, 256, 32, 8
    case = make_verify_case(prefix, n, page, hq, hkv, 128, trees=True, shared=True, dtype=torch.bfloat16,
                            device="cuda", seed=4)
    planner = DecodePlanner(len(prefix) * n, hq, 128, "cuda")
    plan = _plan(case, planner, chunk)
    out, lse = verify_attention(case.q, case.k_draft, case.v_draft, case.k_cache, case.v_cache,
                                case.table.req_to_token.cuda(), plan, SCALE, page_size=page)
    _check(out, lse, case, torch.bfloat16)
    got = planner.snapshot()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    want = plan_table_reference(case.table.req_to_token, plan.draft_rows.cpu(), plan.draft_prefix_lens.cpu(), chunk,
                                hq // hkv, num_kv_heads=hkv, resident_ctas=DECODE_CTAS_PER_SM * sms,
                                grid_work=planner.grid_work, split_parts=SPLIT_MAX_PARTS)
    assert got.work == want.work and got.chunk_base == want.chunk_base and got.tasks == want.tasks
    assert got.unique_tokens == 2048 + sum(p - 2048 for p in prefix)  # each context token loaded once
    shared_items = [w for w in got.work if len(w[3]) == n * len(prefix)]
    assert len(shared_items) == 2048 // chunk


@pytest.mark.parametrize("dtype,page,heads", [(torch.bfloat16, 16, (32, 8)), (torch.float16, 1, (8, 8)),
                                              (torch.bfloat16, 64, (16, 2))])
def test_one_capture_serves_every_verify_batch(dtype, page, heads):
    """Verify captured once (4 requests x 5 draft tokens), replayed for batches with other
    contexts, trees and sharing: the plan and the draft mask go into fixed buffers before each
    replay, as the backend does before SGLang's replays."""
    hq, hkv = heads
    b, n, d = 4, 5, 128
    params = [dict(prefix=[300, 41, 2000, 7], trees=True, shared=False),
              dict(prefix=[777] * 4, trees=True, shared=True),
              dict(prefix=[3000, 3001, 2999, 3500], trees=False, shared=True),
              dict(prefix=[1, 64, 65, 129], trees=True, shared=False)]
    cases = [make_verify_case(q["prefix"], n, page, hq, hkv, d, trees=q["trees"], shared=q["shared"], dtype=dtype,
                              device="cuda", seed=i) for i, q in enumerate(params)]
    max_slots = max(c.k_cache.shape[0] for c in cases)
    max_ctx = max(c.table.req_to_token.shape[1] for c in cases)
    max_rows = max(c.table.req_to_token.shape[0] for c in cases)
    r2t = torch.zeros(max_rows, max_ctx, dtype=torch.int32, device="cuda")
    k_pool = torch.zeros(max_slots, hkv, d, dtype=dtype, device="cuda")
    v_pool = torch.zeros_like(k_pool)
    q, k_new, v_new = (torch.zeros(b * n, h, d, dtype=dtype, device="cuda") for h in (hq, hkv, hkv))
    planner = DecodePlanner(b * n, hq, d, "cuda")
    buffers = VerifyBuffers(b, n, "cuda")

    def load(case):
        r2t.zero_()
        r2t[: case.table.req_to_token.shape[0], : case.table.req_to_token.shape[1]] = case.table.req_to_token.cuda()
        k_pool[: case.k_cache.shape[0]] = case.k_cache
        v_pool[: case.v_cache.shape[0]] = case.v_cache
        q.copy_(case.q), k_new.copy_(case.k_draft), v_new.copy_(case.v_draft)
        prefix = torch.tensor(case.prefix, device="cuda")
        plan = plan_verify(r2t, case.table.req_pool_indices.cuda(), prefix, n,
                           draft_mask_from_sglang(case.custom_mask(), prefix, n), planner=planner, num_kv_heads=hkv,
                           group=hq // hkv)
        return buffers.load(plan)

    plan = load(cases[0])
    verify_attention(q, k_new, v_new, k_pool, v_pool, r2t, plan, SCALE, page_size=page)  # warm up outside
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, lse = verify_attention(q, k_new, v_new, k_pool, v_pool, r2t, plan, SCALE, page_size=page)
    for i, case in enumerate(cases[1:] + cases[:1]):
        load(case)
        graph.replay()
        torch.cuda.synchronize()
        _check(out, lse, case, dtype)


# ------------------------------------------------------------- SGLang's kit on CUDA
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
KIT = dict(max_context_len=256, device="cuda")
VERIFY = [("gqa_page16", (14, 15, 16), (8, 2), 16), ("mha_page1", (2, 7, 33), (4, 4), 1),
          ("mqa_page64", (63, 64, 65), (8, 1), 64)]
SPEC = [(1, "eagle"), (2, "eagle"), (2, "ngram")]


def _kit():
    """SGLang's kit, imported in the test: under SGLang 0.5.17 its runner modes load sgl_kernel,
    which needs libcuda, so a CPU machine could not even collect this file otherwise."""
    if os.environ.get("FLASHCORE_REQUIRE_SGLANG") != "1":
        pytest.importorskip("sglang", reason="SGLang is not installed (pip install -e .[sglang])")
    from sglang.srt.model_executor.forward_batch_info import ForwardMode
    from sglang.test.kits.attention_unittest.attention_methods import dense_attention as kit
    from sglang.test.kits.attention_unittest.runner_modes import speculative_draft_extend_runner as de
    from sglang.test.kits.attention_unittest.runner_modes import speculative_target_verify_runner as tv

    from sglang_flashcore import plugin

    plugin.register()
    return ForwardMode, kit, tv, de


class _NoSkip(unittest.TestCase):
    """The kit skips a case when the backend cannot be built; for us that is a failure."""

    def runTest(self):
        pass

    def skipTest(self, reason):
        pytest.fail(f"the kit could not build {BACKEND_NAME}: {reason}")


def _kit_case(kit, name, mode, prefix, n, heads, page):
    return kit.DenseAttentionCase(name=name, backend=BACKEND_NAME, forward_mode=mode, num_heads=heads[0],
                                  num_kv_heads=heads[1], page_size=page, prefix_lens=tuple(prefix),
                                  extend_lens=(n,) * len(prefix))


@pytest.mark.parametrize("head_dim", [64, 96, 128, 256])
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("topk,kind", SPEC, ids=str)
@pytest.mark.parametrize("name,prefix,heads,page", VERIFY, ids=[c[0] for c in VERIFY])
def test_kit_target_verify_cuda(name, prefix, heads, page, topk, kind, dtype, head_dim, monkeypatch):
    ForwardMode, kit, tv, _ = _kit()
    case = _kit_case(kit, f"verify_{name}", ForwardMode.TARGET_VERIFY, prefix, 4 if topk == 1 else 3, heads, page)
    kw = dict(KIT, head_dim=head_dim, hidden_size=2 * head_dim, dtype=DTYPES[dtype])
    with torch.no_grad():
        tv.run_dense_spec_verify_case(_NoSkip(), case, topk=topk, spec_kind=kind, **kw)
        # the graph mode's eager leg stores the context K/V at contiguous slots (see test_sglang_speculative)
        monkeypatch.setattr(tv, "build_dense_attention_fixture",
                            functools.partial(kit.build_dense_attention_fixture, loc_layout="contiguous"))
        tv.run_dense_spec_verify_cuda_graph_case(_NoSkip(), case, topk=topk, spec_kind=kind,
                                                 cuda_graph_capture_batch_size=8, **kw)


@pytest.mark.parametrize("pad_style", ["small_real", "prod_fill"])
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_kit_draft_extend_v2_cuda(dtype, pad_style):
    ForwardMode, kit, _, de = _kit()
    case = _kit_case(kit, "draft_extend_gqa", ForwardMode.DRAFT_EXTEND_V2, (5, 17, 32), 4, (8, 2), 16)
    with torch.no_grad():
        de.run_dense_draft_extend_v2_cuda_graph_case(_NoSkip(), case, head_dim=128, hidden_size=256,
                                                     dtype=DTYPES[dtype], cuda_graph_capture_batch_size=4,
                                                     pad_style=pad_style, **KIT)
        kit.run_dense_attention_case(_NoSkip(), case, head_dim=128, hidden_size=256, dtype=DTYPES[dtype], **KIT)
