"""flashcore_sparse in SGLang's speculative batches, on CPU: SGLang's own attention kit runner modes
(target verify, its CUDA-graph runner, draft extend v2 in CUDA graphs), our verify cases on SGLang's
real pools (shared prefixes, random trees), the backend's CUDA-graph buffers, and what SGLang's
draft-worker plumbing does with a plugin backend."""

import functools
import os
import random
from types import SimpleNamespace

import pytest
import torch

if os.environ.get("FLASHCORE_REQUIRE_SGLANG") != "1":
    pytest.importorskip("sglang", reason="SGLang is not installed (pip install -e .[sglang])")

from sglang.srt.model_executor.forward_batch_info import ForwardMode  # noqa: E402
from sglang.srt.model_executor.forward_context import ForwardContext, forward_context  # noqa: E402
from sglang.test.kits.attention_unittest.attention_methods import dense_attention as kit  # noqa: E402

from sglang_flashcore import plugin  # noqa: E402
from spec_cases import flat_mask, random_parents, tree_visibility  # noqa: E402
from test_sglang_backend import NAME, _assert_close, _build, _NoSkip  # noqa: E402

plugin.register()


def _runner_mode(name: str):
    """A module of SGLang's kit runner modes; SGLang 0.5.17's load sgl_kernel, which needs libcuda."""
    import importlib

    try:
        return importlib.import_module(f"sglang.test.kits.attention_unittest.runner_modes.{name}")
    except ImportError as exc:
        if torch.cuda.is_available():
            raise
        pytest.skip(f"this SGLang's kit runner modes do not import without a GPU: {str(exc).strip()[:200]}")


MAX_CTX = 256  # the kit's default (64) is below some of our cases' contexts


def _case(name, mode, prefix, n, heads=(4, 2), page=16):
    return kit.DenseAttentionCase(name=name, backend=NAME, forward_mode=mode, num_heads=heads[0],
                                  num_kv_heads=heads[1], page_size=page, prefix_lens=tuple(prefix),
                                  extend_lens=(n,) * len(prefix))


# (name, prefix lens, heads, page): draft widths come from topk (the kit's tree has 3 tokens)
KIT_VERIFY = [
    ("mha_page16_page_edges", (14, 15, 16), (4, 4), 16),
    ("gqa_page1", (2, 7, 33), (4, 2), 1),
    ("mqa_page64", (63, 64, 65), (4, 1), 64),
    ("gqa8_page32_bs1", (31,), (8, 1), 32),
]
SPEC_KINDS = [(1, "eagle"), (2, "eagle"), (1, "ngram"), (2, "ngram"), (1, "frozen_kv_mtp"), (2, "frozen_kv_mtp"),
              (1, "dflash")]


def _kit_verify_case(name, prefix, heads, page, topk):
    return _case(f"verify_{name}_topk{topk}", ForwardMode.TARGET_VERIFY, prefix, 4 if topk == 1 else 3, heads, page)


# ------------------------------------------------------- SGLang's kit runner modes
@pytest.mark.parametrize("topk,kind", SPEC_KINDS, ids=lambda x: str(x))
@pytest.mark.parametrize("name,prefix,heads,page", KIT_VERIFY, ids=[c[0] for c in KIT_VERIFY])
def test_kit_target_verify_runner(name, prefix, heads, page, topk, kind):
    tv = _runner_mode("speculative_target_verify_runner")
    with torch.no_grad():
        tv.run_dense_spec_verify_case(_NoSkip(), _kit_verify_case(name, prefix, heads, page, topk), topk=topk,
                                      spec_kind=kind, device="cpu", dtype=torch.float32, max_context_len=MAX_CTX)


@pytest.mark.parametrize("capture_bs", [4, 8])
@pytest.mark.parametrize("topk,kind", [(1, "eagle"), (2, "eagle"), (2, "ngram")], ids=lambda x: str(x))
@pytest.mark.parametrize("name,prefix,heads,page", KIT_VERIFY, ids=[c[0] for c in KIT_VERIFY])
def test_kit_target_verify_cuda_graph_runner(name, prefix, heads, page, topk, kind, capture_bs, monkeypatch):
    """Captured at ``capture_bs`` requests, replayed with this batch padded up to it. The mode's
    eager leg stores the context K/V at the contiguous layout's slots (its ``prepare_inputs``)
    over a fixture built with the default shuffled pages, so no backend that reads
    ``req_to_token`` could pass it; the fixture is built contiguous here, as its other batches are."""
    tv = _runner_mode("speculative_target_verify_runner")
    monkeypatch.setattr(tv, "build_dense_attention_fixture",
                        functools.partial(kit.build_dense_attention_fixture, loc_layout="contiguous"))
    with torch.no_grad():
        tv.run_dense_spec_verify_cuda_graph_case(
            _NoSkip(), _kit_verify_case(name, prefix, heads, page, topk), topk=topk, spec_kind=kind, device="cpu",
            dtype=torch.float32, max_context_len=MAX_CTX, cuda_graph_capture_batch_size=capture_bs)


KIT_DRAFT_EXTEND = [
    ("gqa_page16", (5, 17, 32), 4, (4, 2), 16),
    ("mha_page1", (1, 9), 3, (4, 4), 1),
    ("mqa_page64_bs4", (60, 64, 70, 129), 2, (4, 1), 64),
]


@pytest.mark.parametrize("pad_style", ["small_real", "prod_fill"])
@pytest.mark.parametrize("name,prefix,n,heads,page", KIT_DRAFT_EXTEND, ids=[c[0] for c in KIT_DRAFT_EXTEND])
def test_kit_draft_extend_v2_cuda_graph_runner(name, prefix, n, heads, page, pad_style):
    de = _runner_mode("speculative_draft_extend_runner")
    case = _case(f"draft_extend_{name}", ForwardMode.DRAFT_EXTEND_V2, prefix, n, heads, page)
    with torch.no_grad():
        de.run_dense_draft_extend_v2_cuda_graph_case(_NoSkip(), case, device="cpu", dtype=torch.float32,
                                                     max_context_len=MAX_CTX, cuda_graph_capture_batch_size=4,
                                                     pad_style=pad_style)


@pytest.mark.parametrize("loc_layout", ["shuffled_pages", "interleaved_pages", "non_monotonic_extend"])
@pytest.mark.parametrize("name,prefix,n,heads,page", KIT_DRAFT_EXTEND, ids=[c[0] for c in KIT_DRAFT_EXTEND])
def test_kit_eager_draft_extend_v2_goes_through_the_extend_path(name, prefix, n, heads, page, loc_layout):
    case = _case(f"draft_extend_{name}", ForwardMode.DRAFT_EXTEND_V2, prefix, n, heads, page)
    with torch.no_grad():
        kit.run_dense_attention_case(_NoSkip(), case, device="cpu", dtype=torch.float32, max_context_len=MAX_CTX,
                                     loc_layout=loc_layout)


# --------------------------------------------------- our cases on SGLang's pools
def _verify_batch(fixture, case, visibility):
    """Turns the fixture's batch into SGLang's TARGET_VERIFY form: seq_lens are the contexts, the
    draft mask in SGLang's flattened layout."""
    fb = fixture.forward_batch
    prefix = list(case.prefix_lens)
    fb.seq_lens = torch.tensor(prefix, dtype=torch.int32)
    fb.seq_lens_cpu = fb.seq_lens.clone()
    fb.seq_lens_sum = sum(prefix)
    n = visibility[0].shape[0]
    fb.spec_info = SimpleNamespace(draft_token_num=n, num_tokens_per_req=n, custom_mask=flat_mask(prefix, visibility))
    return fb


def _verify_expected(fixture, case, visibility):
    masks = [torch.cat([torch.ones(v.shape[0], p, dtype=torch.bool), v], dim=1)
             for p, v in zip(case.prefix_lens, visibility)]
    inputs = kit.dense_fixture_inputs(fixture)
    with torch.no_grad():
        return kit.dense_attention_reference_with_custom_mask(fixture.reference_module, case, inputs["prefix_hidden"],
                                                              inputs["input_hidden"], masks)


def _run_verify(fixture, fb):
    backend = fixture.backend
    with torch.no_grad(), forward_context(ForwardContext(attn_backend=backend)):
        backend.init_forward_metadata(fb)
        return kit.run_dense_forward(fixture, fb, kit.dense_fixture_inputs(fixture))


OWN_VERIFY = [
    # (case, shared prefix tokens, trees)
    (_case("verify_shared_prefix_gqa8_page16", ForwardMode.TARGET_VERIFY, [64 + 5, 64 + 9, 64 + 1, 64 + 16], 6,
           heads=(16, 2)), 64, True),
    (_case("verify_shared_prefix_page1", ForwardMode.TARGET_VERIFY, [37, 41, 50], 8, heads=(8, 8), page=1), 37,
     True),
    (_case("verify_chain_page64", ForwardMode.TARGET_VERIFY, [128 + 3, 128 + 60, 128], 5, heads=(8, 2), page=64),
     128, False),
    (_case("verify_long_context_mqa", ForwardMode.TARGET_VERIFY, [1500, 700], 7, heads=(8, 1), page=16), 0, True),
    (_case("verify_one_draft_token", ForwardMode.TARGET_VERIFY, [10, 20, 30], 1, heads=(4, 2), page=16), 0, False),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case,shared,trees", OWN_VERIFY, ids=[c.name for c, _, _ in OWN_VERIFY])
def test_own_verify_cases_match_the_kit_reference(case, shared, trees, dtype):
    rng = random.Random(len(case.name))
    n = case.extend_lens[0]
    visibility = [tree_visibility(random_parents(rng, n) if trees else [i - 1 for i in range(n)])
                  for _ in case.prefix_lens]
    fixture = _build(case, dtype=dtype, shared=shared)
    fb = _verify_batch(fixture, case, visibility)
    _assert_close(_run_verify(fixture, fb), _verify_expected(fixture, case, visibility), dtype)


def test_verify_of_a_shared_prefix_plans_one_work_item_per_shared_chunk():
    from sglang_flashcore.decode import plan_table_reference

    case, shared, _ = OWN_VERIFY[0]
    n = case.extend_lens[0]
    fixture = _build(case, shared=shared)
    fb = _verify_batch(fixture, case, [torch.ones(n, n, dtype=torch.bool).tril()] * case.batch_size)
    with torch.no_grad():
        fixture.backend.init_forward_metadata(fb)
    plan = fixture.backend.forward_metadata.verify
    model = plan_table_reference(fixture.backend.req_to_token_pool.req_to_token, plan.draft_rows,
                                 plan.draft_prefix_lens, 64)
    assert model.work[0][3] == tuple(range(0, n * case.batch_size * 2, 2))  # every draft token reads chunk 0
    assert model.unique_tokens == 64 + sum(p - 64 for p in case.prefix_lens)


# ------------------------------------------------------------ CUDA-graph contract
def _graph_verify(fixture, case, visibility, capture_bs=8):
    backend = fixture.backend
    backend.init_cuda_graph_state(max_bs=capture_bs, max_num_tokens=capture_bs * visibility[0].shape[0])
    return backend, _verify_batch(fixture, case, visibility)


def test_verify_graph_metadata_uses_fixed_buffers_across_replays():
    case = _case("verify_graph", ForwardMode.TARGET_VERIFY, [30, 17, 64], 4, heads=(8, 2))
    rng = random.Random(1)
    fixture = _build(case)
    ptrs = None
    for in_capture in (True, False, False):  # capture, then two replays with other trees
        visibility = [tree_visibility(random_parents(rng, 4)) for _ in range(3)]
        backend, fb = _graph_verify(fixture, case, visibility) if ptrs is None else (fixture.backend,
                                                                                    _verify_batch(fixture, case,
                                                                                                  visibility))
        with torch.no_grad(), forward_context(ForwardContext(attn_backend=backend)):
            backend.init_forward_metadata_out_graph(fb, in_capture=in_capture)
            backend.init_forward_metadata_in_graph(fb)
            out = kit.run_dense_forward(fixture, fb, kit.dense_fixture_inputs(fixture))
        plan = backend.forward_metadata.verify
        now = (plan.draft_mask.data_ptr(), plan.draft_rows.data_ptr(), plan.draft_prefix_lens.data_ptr())
        assert ptrs is None or now == ptrs
        ptrs = now
        _assert_close(out, _verify_expected(fixture, case, visibility), torch.float32)


def test_mask_written_after_planning_is_reloaded_by_the_after_draft_hook():
    """SGLang's overlap plan stream plans a verify replay before the draft writes its tree."""
    case = _case("verify_plan_stream", ForwardMode.TARGET_VERIFY, [12, 40], 5, heads=(4, 2))
    rng = random.Random(2)
    fixture = _build(case)
    final = [tree_visibility(random_parents(rng, 5)) for _ in range(2)]
    backend, fb = _graph_verify(fixture, case, [torch.eye(5, dtype=torch.bool)] * 2)  # the stale mask
    with torch.no_grad():
        backend.init_forward_metadata_out_graph(fb, in_capture=True)
        fb.spec_info.custom_mask.copy_(flat_mask(case.prefix_lens, final))  # the draft writes its tree
        backend.update_verify_buffers_to_fill_after_draft(fb.spec_info, cuda_graph_bs=8)
        with forward_context(ForwardContext(attn_backend=backend)):
            out = kit.run_dense_forward(fixture, fb, kit.dense_fixture_inputs(fixture))
    _assert_close(out, _verify_expected(fixture, case, final), torch.float32)


def test_graph_verify_batch_larger_than_captured_is_refused():
    case = _case("verify_graph_big", ForwardMode.TARGET_VERIFY, [30, 17, 64], 2)
    fixture = _build(case)
    backend, fb = _graph_verify(fixture, case, [torch.ones(2, 2, dtype=torch.bool).tril()] * 3, capture_bs=2)
    with pytest.raises(ValueError, match="CUDA-graph batch of 3 requests exceeds the 2 sized at init_cuda_graph_state"):
        backend.init_forward_metadata_out_graph(fb, in_capture=True)


def test_verify_without_its_spec_info_fails_clearly():
    case = _case("verify_no_spec", ForwardMode.TARGET_VERIFY, [10, 20], 2)
    fixture = _build(case)
    fixture.forward_batch.spec_info = None
    with pytest.raises(ValueError, match="forward_batch.spec_info: a TARGET_VERIFY batch needs its verify input"):
        fixture.backend.init_forward_metadata(fixture.forward_batch)


def test_backend_reports_the_context_length_sglang_sizes_verify_masks_by():
    fixture = _build(_case("verify_ctx", ForwardMode.TARGET_VERIFY, [10], 2), max_ctx=1024)
    assert fixture.backend.max_context_len == fixture.backend.req_to_token_pool.req_to_token.shape[1] == 1024


# ------------------------------------------------------- draft workers and plugins
def test_plugin_is_not_offered_as_a_draft_attention_backend():
    """SGLang builds draft decode and draft extend backends from fixed maps
    (speculative/draft_utils.py): listing ours as a draft choice would make EAGLE fail at
    startup instead of falling back to a built-in draft backend."""
    try:
        from sglang.srt.arg_groups.choices import DRAFT_ATTENTION_BACKEND_CHOICES
    except ImportError:  # SGLang 0.5.17 has a fixed tuple and no add_ hook
        from sglang.srt.speculative import draft_worker_common

        DRAFT_ATTENTION_BACKEND_CHOICES = draft_worker_common._SUPPORTED_DRAFT_BACKENDS
    plugin.register()
    assert NAME not in DRAFT_ATTENTION_BACKEND_CHOICES
    assert "triton" in DRAFT_ATTENTION_BACKEND_CHOICES


def test_sglangs_draft_backend_factory_refuses_a_plugin_backend():
    """What keeps ours from being a draft backend: the factory's fixed maps. When a plugin
    backend passes here, register ours with add_draft_attention_backend_choices."""
    import inspect

    from sglang.srt.speculative.draft_utils import DraftBackendFactory

    fixture = _build(_case("draft_factory", ForwardMode.DRAFT_EXTEND_V2, (5, 9), 2))
    runner = fixture.runner  # the kit's runner publishes attention_backend=flashcore_sparse
    if "server_args" in inspect.signature(DraftBackendFactory).parameters:  # SGLang 0.5.17
        factory = DraftBackendFactory(runner.server_args, runner, 1, 3)
    else:
        factory = DraftBackendFactory(runner, 1, 3)
    with pytest.raises(ValueError, match=f"EAGLE is not supported in attention backend {NAME}"):
        factory.create_draft_extend_backend()
    with pytest.raises(ValueError, match=f"EAGLE is not supported in decode attention backend {NAME}"):
        factory.create_decode_backend()


@pytest.mark.parametrize("window", [2, 9, 40])
@pytest.mark.parametrize("case", [
    _case("verify_window_chain_page16", ForwardMode.TARGET_VERIFY, [30, 64 + 9, 3], 6, heads=(8, 2)),
    _case("verify_window_chain_page1", ForwardMode.TARGET_VERIFY, [50, 12], 4, heads=(4, 4), page=1),
], ids=lambda c: c.name)
def test_verify_of_windowed_layers_matches_the_kit_reference(case, window):
    """Target verify of a model with sliding windows (chains: draft token i at position P + i):
    the kit's reference cuts each draft token's keys at its position - window."""
    from dataclasses import replace

    case = replace(case, sliding_window_size=window)
    n = case.extend_lens[0]
    visibility = [tree_visibility([i - 1 for i in range(n)]) for _ in case.prefix_lens]
    fixture = _build(case, dtype=torch.float32, shared=0)
    fb = _verify_batch(fixture, case, visibility)
    ours = _run_verify(fixture, fb)
    _assert_close(ours, _verify_expected(fixture, case, visibility), torch.float32)
    unwindowed = _verify_expected(fixture, replace(case, sliding_window_size=None), visibility)
    assert not torch.allclose(ours, unwindowed, atol=1e-3)


def test_windowed_verify_in_graph_mode_keeps_its_buffers_and_recuts_a_refilled_mask():
    """CUDA-graph verify of a windowed model: the window table, lengths and cut draft mask live in
    fixed buffers across replays, and a draft mask written after planning (SGLang's overlap plan
    stream) is cut to each draft token's window again."""
    from dataclasses import replace

    case = replace(_case("verify_graph_window", ForwardMode.TARGET_VERIFY, [30, 17, 64], 5, heads=(8, 2)),
                   sliding_window_size=2)
    chain = [tree_visibility([i - 1 for i in range(5)]) for _ in range(3)]
    fixture = _build(case)
    backend, fb = _graph_verify(fixture, case, [torch.eye(5, dtype=torch.bool)] * 3)  # the stale mask
    ptrs = None
    for in_capture in (True, False):
        with torch.no_grad():
            fb.spec_info.custom_mask.copy_(flat_mask(case.prefix_lens, [torch.eye(5, dtype=torch.bool)] * 3))
            backend.init_forward_metadata_out_graph(fb, in_capture=in_capture)
            fb.spec_info.custom_mask.copy_(flat_mask(case.prefix_lens, chain))  # the draft writes its chain
            backend.update_verify_buffers_to_fill_after_draft(fb.spec_info, cuda_graph_bs=8)
            with forward_context(ForwardContext(attn_backend=backend)):
                out = kit.run_dense_forward(fixture, fb, kit.dense_fixture_inputs(fixture))
        w = backend.forward_metadata.verify.window
        now = (w.table.data_ptr(), w.lens.data_ptr(), w.draft_mask.data_ptr())
        assert ptrs is None or now == ptrs
        ptrs = now
        _assert_close(out, _verify_expected(fixture, case, chain), torch.float32)
