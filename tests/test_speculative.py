"""Target verify on CPU: the draft-mask extraction from SGLang's layout, the verify plan's sharing
(the planner's Python model), and randomized verify batches against a float64 oracle."""

import random

import pytest
import torch

from sglang_flashcore.decode import plan_table_reference
from sglang_flashcore.speculative import (VerifyBuffers, chain_mask, draft_attention, draft_mask_from_sglang,
                                          plan_verify, tokens_per_request, verify_attention)
from spec_cases import (draft_positions, flat_mask, make_verify_case, random_parents, random_verify_params,
                        tree_visibility, verify_oracle)

SCALE = 0.11


def _plan(case):
    t = case.table
    return plan_verify(t.req_to_token, t.req_pool_indices, torch.tensor(case.prefix), case.num_draft,
                       draft_mask_from_sglang(case.custom_mask(), torch.tensor(case.prefix), case.num_draft))


# ------------------------------------------------------------------ draft masks
def test_draft_mask_is_the_draft_block_of_sglangs_flat_mask():
    rng = random.Random(0)
    prefix, n = [5, 1, 40, 17], 6
    vis = [tree_visibility(random_parents(rng, n)) for _ in prefix]
    got = draft_mask_from_sglang(flat_mask(prefix, vis), torch.tensor(prefix), n)
    assert torch.equal(got, torch.stack(vis))


def test_draft_mask_reads_only_the_draft_columns():
    # a context column set to False must not leak into the draft block, and vice versa
    prefix, n = [3, 4], 3
    vis = [tree_visibility([-1, 0, 0]), tree_visibility([-1, 0, 1])]
    flat = flat_mask(prefix, vis)
    flat_ctx_off = flat.clone().view(-1)
    rows0 = flat_ctx_off[: n * (prefix[0] + n)].view(n, prefix[0] + n)
    rows0[:, :prefix[0]] = False
    assert torch.equal(draft_mask_from_sglang(flat_ctx_off, torch.tensor(prefix), n), torch.stack(vis))


def test_draft_mask_of_padded_graph_rows_is_clamped_and_sees_itself():
    # a CUDA-graph replay pads the batch with requests the mask has no rows for
    prefix, n = [4, 9], 3
    vis = [tree_visibility([-1, 0, 0])] * 2
    got = draft_mask_from_sglang(flat_mask(prefix, vis), torch.tensor(prefix + [1, 1]), n)
    assert got.shape == (4, n, n)
    assert torch.equal(got[:2], torch.stack(vis))
    assert got[2:].diagonal(dim1=1, dim2=2).all()


def test_chain_mask_is_causal():
    m = chain_mask(2, 4, "cpu")
    assert torch.equal(m[1], torch.ones(4, 4, dtype=torch.bool).tril())


# ----------------------------------------------------- randomized verify batches
@pytest.mark.parametrize("i", range(40))
def test_random_verify_matches_float64_oracle(i):
    p = random_verify_params(random.Random(500 + i), head_dims=(16, 64))
    case = make_verify_case(p["prefix"], p["num_draft"], p["page"], p["hq"], p["hkv"], p["d"], trees=p["trees"],
                            shared=p["shared"], seed=i)
    plan = _plan(case)
    out, lse = verify_attention(case.q, case.k_draft, case.v_draft, case.k_cache, case.v_cache,
                                case.table.req_to_token, plan, SCALE, page_size=p["page"])
    ref_o, ref_l = verify_oracle(case, SCALE)
    torch.testing.assert_close(out.double(), ref_o, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(lse.double(), ref_l, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("window", [0, 2, 7, 30, 1000])
@pytest.mark.parametrize("trees", [False, True])
def test_windowed_layers_verify_over_each_draft_tokens_own_window(trees, window):
    """A windowed layer's draft token at position P + depth sees the context from position
    P + depth - window on and the draft tokens of its mask within the window; the full layers of
    the same plan keep the whole context."""
    case = make_verify_case([40, 0, 90, 3], 6, 16, 8, 2, 64, trees=trees, shared=True, seed=window)
    t = case.table
    prefix = torch.tensor(case.prefix)
    plan = plan_verify(t.req_to_token, t.req_pool_indices, prefix, case.num_draft,
                       draft_mask_from_sglang(case.custom_mask(), prefix, case.num_draft),
                       window_left=window, positions=draft_positions(case))
    args = (case.q, case.k_draft, case.v_draft, case.k_cache, case.v_cache, t.req_to_token, plan, SCALE)
    out, lse = verify_attention(*args, page_size=16, window=True)
    ref_o, ref_l = verify_oracle(case, SCALE, window=window)
    torch.testing.assert_close(out.double(), ref_o, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(lse.double(), ref_l, atol=2e-5, rtol=2e-5)
    full, _ = verify_attention(*args, page_size=16)
    torch.testing.assert_close(full.double(), verify_oracle(case, SCALE)[0], atol=2e-5, rtol=2e-5)
    if window < 30:
        assert not torch.allclose(full, out, atol=1e-3)


def test_windowed_verify_buffers_keep_their_addresses_and_refill_the_cut_mask():
    case = make_verify_case([20, 33], 4, 1, 4, 2, 16, trees=True, shared=False, seed=5)
    t = case.table
    prefix = torch.tensor(case.prefix)
    buffers = VerifyBuffers(3, 4, "cpu", window_width=6, table_dtype=t.req_to_token.dtype)
    mask = draft_mask_from_sglang(case.custom_mask(), prefix, 4)
    plan = plan_verify(t.req_to_token, t.req_pool_indices, prefix, 4, mask, window_left=5,
                       positions=draft_positions(case), window_out=buffers.window_out())
    loaded = buffers.load(plan)
    assert loaded.window.table.data_ptr() == buffers.window[0].data_ptr()
    assert loaded.window.draft_mask.data_ptr() == buffers.window[3].data_ptr()
    out, _ = verify_attention(case.q, case.k_draft, case.v_draft, case.k_cache, case.v_cache, t.req_to_token, loaded,
                              SCALE, window=True)
    torch.testing.assert_close(out.double(), verify_oracle(case, SCALE, window=5)[0], atol=2e-5, rtol=2e-5)
    with pytest.raises(ValueError, match="planned into these buffers"):
        buffers.load(plan_verify(t.req_to_token, t.req_pool_indices, prefix, 4, mask, window_left=5,
                                 positions=draft_positions(case)))
    with pytest.raises(TypeError, match="positions: expected a torch.Tensor"):
        plan_verify(t.req_to_token, t.req_pool_indices, prefix, 4, mask, window_left=5)


@pytest.mark.parametrize("trees", [False, True])
def test_verify_with_a_logit_softcap_matches_the_oracle(trees):
    case = make_verify_case([40, 0, 90], 6, 16, 8, 2, 64, trees=trees, shared=True, seed=11)
    out, lse = verify_attention(case.q * 8, case.k_draft, case.v_draft, case.k_cache, case.v_cache,
                                case.table.req_to_token, _plan(case), SCALE, page_size=16, softcap=1.5)
    case.q = case.q * 8  # scores of several units, so that the cap bites
    ref_o, ref_l = verify_oracle(case, SCALE, softcap=1.5)
    torch.testing.assert_close(out.double(), ref_o, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(lse.double(), ref_l, atol=2e-5, rtol=2e-5)
    plain_o, _ = verify_oracle(case, SCALE)
    assert not torch.allclose(plain_o, ref_o, atol=1e-3)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_verify_in_half_precision_matches_the_oracle(dtype):
    case = make_verify_case([33, 70, 70], 5, 16, 8, 2, 64, trees=True, shared=True, dtype=dtype, seed=3)
    out, lse = verify_attention(case.q, case.k_draft, case.v_draft, case.k_cache, case.v_cache,
                                case.table.req_to_token, _plan(case), SCALE, page_size=16)
    assert out.dtype == dtype and lse.dtype == torch.float32
    ref_o, ref_l = verify_oracle(case, SCALE)
    tol = 1e-2 if dtype == torch.bfloat16 else 2e-3
    torch.testing.assert_close(out.double(), ref_o, atol=tol, rtol=tol)
    torch.testing.assert_close(lse.double(), ref_l, atol=1e-4, rtol=1e-4)


def test_verify_reads_draft_kv_from_the_pool_when_not_passed():
    case = make_verify_case([20, 9], 4, 1, 4, 2, 16, trees=True, shared=False, seed=8)
    plan = _plan(case)
    args = (case.k_cache, case.v_cache, case.table.req_to_token, plan, SCALE)
    passed = verify_attention(case.q, case.k_draft, case.v_draft, *args)
    pooled = verify_attention(case.q, None, None, *args, out_cache_loc=case.out_cache_loc)
    torch.testing.assert_close(pooled, passed, atol=0, rtol=0)
    with pytest.raises(ValueError, match="out_cache_loc"):
        verify_attention(case.q, None, None, *args)


def test_tree_and_chain_differ():
    # the same batch through a chain mask must not match the tree's oracle (the mask matters)
    case = make_verify_case([30, 30], 4, 16, 4, 4, 16, trees=True, shared=True, seed=11)
    case.visibility = [tree_visibility([-1, 0, 0, 0])] * 2
    t = case.table
    chain = plan_verify(t.req_to_token, t.req_pool_indices, torch.tensor(case.prefix), 4, chain_mask(2, 4, "cpu"))
    out, _ = verify_attention(case.q, case.k_draft, case.v_draft, case.k_cache, case.v_cache, t.req_to_token, chain,
                              SCALE)
    ref_o, _ = verify_oracle(case, SCALE)
    assert (out.double() - ref_o).abs().max() > 1e-3


# ------------------------------------------------------------------ sharing
@pytest.mark.parametrize("page", [1, 16, 64])
def test_each_context_chunk_is_one_work_item_for_all_draft_tokens_of_all_sharers(page):
    """The decode planner's model on the verify rows: a chunk of a shared context is one work item
    whose readers are every draft token of every request that shares it."""
    prefix, n, chunk = [512, 512 + 40, 512 + 300], 4, 128
    case = make_verify_case(prefix, n, page, 8, 2, 16, trees=False, shared=True, seed=1)
    plan = _plan(case)
    model = plan_table_reference(case.table.req_to_token, plan.draft_rows, plan.draft_prefix_lens, chunk)
    shared_chunks = 512 // chunk
    assert model.tokens == n * sum(prefix)
    # shared chunks once; each request's own chunks once for its n draft tokens
    assert model.unique_tokens == 512 + sum(p - 512 for p in prefix)
    readers = sorted((len(w[3]) for w in model.work), reverse=True)
    assert readers[:shared_chunks] == [n * len(prefix)] * shared_chunks
    assert all(r == n for r in readers[shared_chunks:])


# ------------------------------------------------------------------ graph buffers
def test_verify_buffers_keep_their_addresses_and_refuse_oversized_batches():
    case = make_verify_case([12, 30], 3, 16, 4, 2, 16, trees=True, shared=False, seed=2)
    buffers = VerifyBuffers(4, 3, "cpu")
    loaded = buffers.load(_plan(case))
    assert loaded.draft_mask.data_ptr() == buffers.draft_mask.data_ptr()
    assert torch.equal(loaded.draft_mask, case.draft_mask())
    out, _ = verify_attention(case.q, case.k_draft, case.v_draft, case.k_cache, case.v_cache,
                              case.table.req_to_token, loaded, SCALE, page_size=16)
    ref_o, _ = verify_oracle(case, SCALE)
    torch.testing.assert_close(out.double(), ref_o, atol=2e-5, rtol=2e-5)
    with pytest.raises(ValueError, match="exceeds the 1 sized at init_cuda_graph_state"):
        VerifyBuffers(1, 3, "cpu").load(_plan(case))
    with pytest.raises(ValueError, match="plan: 3 draft tokens per request, these buffers hold 2"):
        VerifyBuffers(4, 2, "cpu").load(_plan(case))


# ------------------------------------------------------------------ bad input
def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="spec_info: expected a positive draft_token_num"):
        tokens_per_request(object())
    with pytest.raises(ValueError, match="custom_mask: empty for a batch of 2 requests"):
        draft_mask_from_sglang(torch.zeros(0, dtype=torch.bool), torch.tensor([3, 4]), 2)
    with pytest.raises(ValueError, match="num_draft"):
        chain_mask(2, 0, "cpu")
    case = make_verify_case([8, 8], 2, 1, 4, 2, 16, trees=False, shared=False)
    t = case.table
    with pytest.raises(ValueError, match=r"draft_mask: expected shape \(2, 2, 2\)"):
        plan_verify(t.req_to_token, t.req_pool_indices, torch.tensor(case.prefix), 2, chain_mask(2, 3, "cpu"))
    with pytest.raises(ValueError, match="prefix_lens"):
        plan_verify(t.req_to_token, t.req_pool_indices, torch.tensor([8]), 2, chain_mask(2, 2, "cpu"))
    with pytest.raises(ValueError, match="q: expected length 6"):
        draft_attention(case.q, case.k_draft, case.v_draft, chain_mask(3, 2, "cpu"), SCALE)
    with pytest.raises(ValueError, match="k: 3 KV heads do not divide q's 4 heads"):
        draft_attention(case.q, case.k_draft[:, :1].expand(-1, 3, -1), case.v_draft, chain_mask(2, 2, "cpu"), SCALE)


def test_tokens_per_request_prefers_the_steps_own_width():
    class Spec:
        draft_token_num = 8
        num_tokens_per_req = 5

    assert tokens_per_request(Spec()) == 5
    Spec.num_tokens_per_req = -1
    assert tokens_per_request(Spec()) == 8


# ------------------------------------------------------------------ shipped drafts
@pytest.mark.parametrize("target", ["tiny_llama", "llama3_8b"])
def test_shipped_eagle3_drafts_match_their_targets(target):
    """SGLang's LlamaForCausalLMEagle3 concatenates the target's hidden states with its own
    embeddings and reads config.draft_vocab_size; a draft must share its target's widths."""
    import json

    from sglang_flashcore.serve import config_dir

    def load(name):
        with open(f"{config_dir(name)}/config.json") as f:
            return json.load(f)

    tgt, draft = load(target), load(f"{target}_eagle3")
    assert draft["architectures"] == ["LlamaForCausalLMEagle3"] and draft["num_hidden_layers"] == 1
    for key in ("hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim", "vocab_size",
                "max_position_embeddings", "rope_theta", "torch_dtype"):
        assert draft[key] == tgt[key], key
    assert draft["draft_vocab_size"] == tgt["vocab_size"]  # no draft-to-target token map with dummy weights


@pytest.mark.parametrize("batch", [1, 3])
def test_draft_rows_are_contiguous_for_the_planner_binding(batch):
    """The decode planner's binding takes contiguous 1-D rows and lengths; for one request, the
    expanded view reshaped keeps stride 0 (a single-request verify batch failed so on the GPU)."""
    from sglang_flashcore.speculative import _draft_rows

    rows, lens = _draft_rows(torch.arange(batch, dtype=torch.int32) + 3, torch.full((batch,), 281), 10)
    assert rows.is_contiguous() and lens.is_contiguous()
    assert rows.tolist() == [3 + b for b in range(batch) for _ in range(10)] and lens.tolist() == [281] * 10 * batch
