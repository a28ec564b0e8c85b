"""flashcore_sparse inside SGLang, on CPU: plugin, SGLang's own attention-backend kit,
our shared-prefix cases on SGLang's real pools, and agreement with torch_native."""

import os
import subprocess
import sys
import unittest
from types import SimpleNamespace

import pytest
import torch

if os.environ.get("FLASHCORE_REQUIRE_SGLANG") != "1":
    pytest.importorskip("sglang", reason="SGLang is not installed (pip install -e .[sglang])")

from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS  # noqa: E402
from sglang.srt.model_executor.forward_batch_info import ForwardMode  # noqa: E402
from sglang.srt.model_executor.forward_context import ForwardContext, forward_context  # noqa: E402
from sglang.test.kits.attention_unittest.attention_methods import dense_attention as kit  # noqa: E402

import sglang_flashcore as fc  # noqa: E402
from sglang_flashcore import plugin  # noqa: E402
from sglang_flashcore.sglang_backend import FlashCoreBackend, UnsupportedFeatureError, flashinfer_route  # noqa: E402

plugin.register()
NAME = plugin.BACKEND_NAME
LOC_LAYOUTS = ("contiguous", "shuffled_pages", "interleaved_pages", "non_monotonic_extend")


class _NoSkip(unittest.TestCase):
    """The kit skips a case when the backend cannot be built; for us that is a failure."""

    def runTest(self):
        pass

    def skipTest(self, reason):
        pytest.fail(f"the kit could not build {NAME}: {reason}")


def _run(fn, *args, **kwargs):
    with torch.no_grad():
        return fn(*args, **kwargs)


# ------------------------------------------------------------------ plugin
def test_entry_point_is_installed():
    from importlib.metadata import entry_points

    eps = {ep.name: ep.value for ep in entry_points(group="sglang.srt.plugins")}
    assert eps.get(NAME) == "sglang_flashcore.plugin:register"


def test_load_plugins_registers_backend_and_cli_choice_in_a_fresh_process():
    code = (
        "import argparse\n"
        "from sglang.srt.plugins import load_plugins\n"
        "load_plugins(); load_plugins()\n"
        "from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS\n"
        "from sglang_flashcore.plugin import _choices_api, register\n"
        "register()\n"
        "assert 'flashcore_sparse' in ATTENTION_BACKENDS\n"
        "assert _choices_api()[1].count('flashcore_sparse') == 1\n"
        "from sglang.srt.server_args import ServerArgs\n"
        "p = argparse.ArgumentParser(); ServerArgs.add_cli_args(p)\n"
        "a = p.parse_args(['--model-path', 'm', '--attention-backend', 'flashcore_sparse'])\n"
        "assert a.attention_backend == 'flashcore_sparse'\n"
        "print('OK')\n"
    )
    env = dict(os.environ, SGLANG_PLUGINS="flashcore_sparse")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0 and "OK" in res.stdout, res.stderr[-3000:]


def test_register_names_supported_versions_when_sglang_api_is_missing(monkeypatch):
    monkeypatch.setattr(plugin, "_CHOICES_MODULES", ("sglang.no_such_module",))
    with pytest.raises(plugin.SGLangVersionError, match=r"SGLang >=0.5.17, <=0.5.23"):
        plugin.register()


# ------------------------------------------------------- SGLang's own kit
@pytest.mark.parametrize("loc_layout", LOC_LAYOUTS)
@pytest.mark.parametrize("case", kit.make_dense_cases(NAME), ids=lambda c: c.name)
def test_sglang_kit_dense_case(case, loc_layout):
    _run(kit.run_dense_attention_case, _NoSkip(), case, device="cpu", dtype=torch.float32,
         loc_layout=loc_layout)


# ------------------------------------------------------------ our cases
def _case(name, mode, prefix, extend=(), heads=(4, 4), page=16):
    return kit.DenseAttentionCase(
        name=name, backend=NAME, forward_mode=mode, num_heads=heads[0], num_kv_heads=heads[1],
        page_size=page, prefix_lens=tuple(prefix), extend_lens=tuple(extend),
    )


def _share_prefix(fixture, shared: int):
    """Points every request's first ``shared`` positions at request 0's slots, as the radix
    cache does for a common prefix, and makes the reference see the same prefix tokens."""
    r2t = fixture.runner.req_to_token_pool.req_to_token
    for r in range(1, fixture.case.batch_size):
        r2t[r, :shared] = r2t[0, :shared]
        fixture.prefix_hidden[r][:shared] = fixture.prefix_hidden[0][:shared]


def _build(case, dtype=torch.float32, head_dim=64, max_ctx=2304, loc_layout="shuffled_pages", shared=0):
    fixture = _run(
        kit.build_dense_attention_fixture, _NoSkip(), case, head_dim=head_dim, hidden_size=128,
        max_context_len=max_ctx, dtype=dtype, device="cpu", loc_layout=loc_layout,
    )
    if shared:
        _run(_share_prefix, fixture, shared)
    return fixture


def _assert_close(ours, expected, dtype):
    """Within a few units in the last place of ``dtype`` at the outputs' own magnitude (the kit's
    fixed 3e-2 would pass outputs that are 0.01-0.09 in size however wrong they were)."""
    scale = max(float(expected.abs().max()), 1e-6)
    ulps = {torch.float32: 2e-4, torch.float16: 4e-3, torch.bfloat16: 2e-2}[dtype]
    torch.testing.assert_close(ours, expected, atol=ulps * scale, rtol=ulps)


OWN_CASES = [
    # (case, shared prefix tokens)
    (_case("decode_shared_prefix_gqa8", ForwardMode.DECODE, [64 + 5, 64 + 9, 64 + 1, 64 + 16], heads=(16, 2)), 64),
    (_case("decode_shared_prefix_page1", ForwardMode.DECODE, [37, 41, 50], page=1), 37),
    (_case("decode_shared_prefix_page64", ForwardMode.DECODE, [128 + 3, 128 + 60, 128], page=64), 128),
    (_case("extend_shared_prefix_page1", ForwardMode.EXTEND, [40, 40, 40], [5, 1, 9], page=1), 40),
    (_case("extend_shared_prefix_page16_gqa8", ForwardMode.EXTEND, [32, 48, 32], [7, 16, 1], heads=(8, 1)), 32),
    (_case("extend_shared_prefix_page64", ForwardMode.EXTEND, [64, 64 + 10], [30, 2], page=64), 64),
    (_case("decode_long_prefix_page64", ForwardMode.DECODE, [2000, 1500], heads=(8, 2), page=64), 0),
    (_case("extend_long_prefix_page16", ForwardMode.EXTEND, [1200], [33], heads=(8, 1)), 0),
    (_case("extend_no_prefix_ragged", ForwardMode.EXTEND, [0, 0, 0, 0], [1, 17, 64, 3], heads=(8, 2)), 0),
    (_case("mixed_chunk_and_decodes", ForwardMode.MIXED, [16, 40, 7], [12, 1, 1], heads=(8, 2)), 0),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case,shared", OWN_CASES, ids=[c.name for c, _ in OWN_CASES])
def test_own_cases_match_the_kit_reference_and_torch_native(case, shared, dtype):
    fixture = _build(case, dtype=dtype, shared=shared)
    ours = _run(kit.run_dense_fixture_eager, fixture)
    expected = _run(kit.expected_dense_fixture_output, fixture)
    _assert_close(ours, expected, dtype)
    # the same batch through SGLang's torch_native backend
    native = ATTENTION_BACKENDS["torch_native"](fixture.runner)
    theirs = _run(kit.run_dense_fixture_eager, kit.replace_backend(fixture, native))
    _assert_close(ours, theirs, dtype)


def test_shared_prefix_layout_is_read_once_per_step():
    case = OWN_CASES[0][0]
    fixture = _build(case, shared=64)
    _run(fixture.backend.init_forward_metadata, fixture.forward_batch)
    meta = fixture.backend.forward_metadata
    layout = fc.from_sglang(fixture.backend.req_to_token_pool.req_to_token, meta.req_pool_indices, meta.seq_lens,
                            fixture.backend.page_size)
    plan = layout.plan(64)
    assert plan.total_tokens == sum(case.seq_lens)
    assert plan.unique_tokens == sum(case.seq_lens) - 3 * 64
    assert plan.max_readers == 4


# --------------------------------------------------- unsupported features
def _fake_runner(**overrides):
    runner = SimpleNamespace(
        device="cpu", page_size=1, req_to_token_pool=None, token_to_kv_pool=None,
        use_mla_backend=False, model_config=SimpleNamespace(is_encoder_decoder=False, attention_chunk_size=None),
        is_hybrid_swa=False, sliding_window_size=None, kv_cache_dtype=torch.bfloat16,
    )
    for k, v in overrides.items():
        setattr(runner, k, v)
    return runner


@pytest.mark.parametrize("overrides,feature", [
    ({"use_mla_backend": True}, "MLA"),
    ({"model_config": SimpleNamespace(is_encoder_decoder=True)}, "encoder-decoder"),
    ({"kv_cache_dtype": torch.uint8}, "KV cache"),  # e.g. SGLang's FP4 KV cache
])
def test_unsupported_models_fail_at_construction(overrides, feature):
    with pytest.raises(UnsupportedFeatureError, match=feature):
        FlashCoreBackend(_fake_runner(**overrides))


def _cfg(**fields):
    return SimpleNamespace(is_encoder_decoder=False, attention_chunk_size=None, num_attention_heads=8, **fields)


@pytest.mark.parametrize("cfg,device,feature", [
    (_cfg(head_dim=192, v_head_dim=128), "cpu", r"different Q/K and V head dims \(192 vs 128\)"),
    (_cfg(head_dim=48), "cuda", r"head dim 48 on the CUDA kernels \(they take 64 to 256 in multiples of 16\)"),
    (_cfg(head_dim=72), "cuda:0", "head dim 72"),
])
def test_layer_features_the_config_names_fail_when_the_server_is_built(cfg, device, feature):
    with pytest.raises(UnsupportedFeatureError, match=feature):
        FlashCoreBackend(_fake_runner(model_config=cfg, device=device))


def test_head_dims_outside_the_kernels_build_on_cpu_and_with_the_reference(monkeypatch):
    FlashCoreBackend(_fake_runner(model_config=_cfg(head_dim=48)))  # the CPU reference serves any head dim
    monkeypatch.setenv("FLASHCORE_IMPL", "reference")
    FlashCoreBackend(_fake_runner(model_config=_cfg(head_dim=48), device="cuda"))


@pytest.mark.parametrize("attr,value,feature", [
    ("sliding_window_size", 8, r"a layer window of 8 in a model whose window is -1"),
    ("is_cross_attention", True, "cross attention"),
])
def test_unsupported_layers_fail_at_first_use(attr, value, feature):
    fixture = _build(_case("decode", ForwardMode.DECODE, [10, 20]))
    setattr(fixture.actual_module.attn, attr, value)
    with pytest.raises(UnsupportedFeatureError, match=feature):
        _run(kit.run_dense_fixture_eager, fixture)


def test_diffusion_batches_fail_clearly():
    # speculative batches are served: tests/test_sglang_speculative.py
    fixture = _build(_case("decode", ForwardMode.DECODE, [10, 20]))
    fixture.forward_batch.forward_mode = ForwardMode.DLLM_EXTEND
    with pytest.raises(UnsupportedFeatureError, match="diffusion-LLM block attention"):
        fixture.backend.init_forward_metadata(fixture.forward_batch)


def test_idle_batch_returns_empty_output():
    fixture = _build(_case("decode", ForwardMode.DECODE, [10]))
    fb = fixture.forward_batch
    fb.forward_mode = ForwardMode.IDLE
    q = torch.zeros(0, 4 * 64)
    out = fixture.backend.forward(q, q, q, fixture.actual_module.attn, fb)
    assert out.shape == (0, 4 * 64)


# -------------------------------------------------------------- CUDA graphs
def test_cuda_graph_metadata_uses_fixed_buffers_across_replays():
    case = _case("decode_graph", ForwardMode.DECODE, [30, 17, 64], heads=(8, 2))
    fixture = _build(case)
    backend = fixture.backend
    backend.init_cuda_graph_state(max_bs=8, max_num_tokens=8)
    assert backend.get_cuda_graph_seq_len_fill_value() == 1
    ptrs = None
    for in_capture in (True, False, False):  # capture, then two replays
        with torch.no_grad(), forward_context(ForwardContext(attn_backend=backend)):
            backend.init_forward_metadata_out_graph(fixture.forward_batch, in_capture=in_capture)
            backend.init_forward_metadata_in_graph(fixture.forward_batch)
            out = fixture.actual_module(fixture.input_hidden, fixture.forward_batch)
        meta = backend.forward_metadata
        now = (meta.req_pool_indices.data_ptr(), meta.seq_lens.data_ptr())
        assert ptrs is None or now == ptrs
        ptrs = now
        torch.testing.assert_close(out, _run(kit.expected_dense_fixture_output, fixture), atol=2e-4, rtol=2e-4)


def test_cuda_graph_with_the_reference_on_a_gpu_is_refused_clearly(monkeypatch):
    fixture = _build(_case("decode_graph", ForwardMode.DECODE, [30, 17]))
    fixture.backend.device = torch.device("cuda")
    monkeypatch.setenv("FLASHCORE_IMPL", "reference")
    with pytest.raises(UnsupportedFeatureError, match="CUDA-graph decode with FLASHCORE_IMPL=reference"):
        fixture.backend.init_cuda_graph_state(max_bs=8, max_num_tokens=8)


def test_cuda_graph_buffers_refuse_an_oversized_batch():
    fixture = _build(_case("decode_graph", ForwardMode.DECODE, [30, 17, 64]))
    fixture.backend.init_cuda_graph_state(max_bs=2, max_num_tokens=2)
    with pytest.raises(ValueError, match="CUDA-graph batch of 3 requests exceeds the 2 sized at init_cuda_graph_state"):
        fixture.backend.init_forward_metadata_out_graph(fixture.forward_batch, in_capture=True)


@pytest.mark.parametrize("capture_bs", [4, 8])
@pytest.mark.parametrize("case", [c for c in kit.make_dense_cases(NAME) if c.forward_mode.is_decode()],
                         ids=lambda c: c.name)
def test_kit_cuda_graph_decode_runner_replays_padded_batches(case, capture_bs):
    """SGLang's CUDA-graph decode runner mode on CPU: it captures at ``capture_bs`` requests and
    replays a different batch padded up to it, whose output must match the reference (stale
    buffers from the capture would not)."""
    try:
        from sglang.test.kits.attention_unittest.runner_modes import cuda_graph_decode_runner as cg_runner
    except ImportError as exc:  # SGLang 0.5.17's runner modes load sgl_kernel, which needs libcuda
        if torch.cuda.is_available():
            raise
        pytest.skip(f"this SGLang's kit runner modes do not import without a GPU: {str(exc).strip()[:200]}")

    with torch.no_grad():
        cg_runner.run_dense_cuda_graph_decode_case(
            _NoSkip(), case, device="cpu", dtype=torch.float32,
            cuda_graph_capture_batch_size=max(capture_bs, case.batch_size),
        )


# ------------------------------------------------------ deterministic inference
def test_listed_for_deterministic_inference_but_not_as_radix_safe():
    from sglang_flashcore.plugin import _CHOICES_MODULES
    import importlib

    for module in _CHOICES_MODULES:  # (0.5.17 has no arg_groups package)
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        if hasattr(mod, "DETERMINISTIC_ATTENTION_BACKEND_CHOICES"):
            assert mod.DETERMINISTIC_ATTENTION_BACKEND_CHOICES.count(NAME) == 1
            # SGLang turns the radix cache off for backends not in its radix-safe list
            assert NAME not in getattr(mod, "RADIX_SUPPORTED_DETERMINISTIC_ATTENTION_BACKEND", [])
            return
    pytest.fail("no SGLang module holds DETERMINISTIC_ATTENTION_BACKEND_CHOICES")


@pytest.mark.parametrize("flag", [True, False])
def test_backend_follows_enable_deterministic_inference(flag):
    runner = _fake_runner(server_args=SimpleNamespace(enable_deterministic_inference=flag))
    assert FlashCoreBackend(runner).deterministic is flag


# ------------------------------------------------------- encoder-only layers
ENCODER_CASES = [
    _case("encoder_no_prefix_ragged", ForwardMode.EXTEND, [0, 0, 0], [1, 17, 40], heads=(8, 2)),
    _case("encoder_over_prefix_page16", ForwardMode.EXTEND, [32, 5], [9, 30], heads=(4, 4)),
    _case("encoder_over_prefix_page64", ForwardMode.EXTEND, [64, 64], [3, 70], heads=(8, 1), page=64),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", ENCODER_CASES, ids=lambda c: c.name)
def test_encoder_only_layers_attend_both_ways_like_torch_native(case, dtype):
    from sglang.srt.layers.radix_attention import AttentionType

    fixture = _build(case, dtype=dtype)
    fixture.actual_module.attn.attn_type = AttentionType.ENCODER_ONLY
    ours = _run(kit.run_dense_fixture_eager, fixture)
    native = ATTENTION_BACKENDS["torch_native"](fixture.runner)
    theirs = _run(kit.run_dense_fixture_eager, kit.replace_backend(fixture, native))
    _assert_close(ours, theirs, dtype)
    # and it is not the causal answer
    fixture.actual_module.attn.attn_type = AttentionType.DECODER
    causal = _run(kit.run_dense_fixture_eager, kit.replace_backend(fixture, FlashCoreBackend(fixture.runner)))
    assert not torch.allclose(ours, causal, atol=1e-3)


# ------------------------------------------------------------ tensor parallelism
@pytest.mark.parametrize("tp", [1, 2, 4])
def test_planner_is_sized_for_this_ranks_heads(monkeypatch, tp):
    """Under TP each rank holds Hq/TP query heads and Hkv/TP KV heads: the planner's GQA group is
    Hq/Hkv on every rank, not TP times it."""
    import sglang.srt.runtime_context as rc

    from sglang_flashcore import sglang_backend

    monkeypatch.setattr(rc, "get_parallel", lambda: SimpleNamespace(attn_tp_size=tp))
    cfg = SimpleNamespace(is_encoder_decoder=False, attention_chunk_size=None, num_attention_heads=64)
    backend = FlashCoreBackend(_fake_runner(model_config=cfg))
    assert backend._max_q_heads == 64 // tp
    assert sglang_backend._rank_q_heads(SimpleNamespace()) is None


# ------------------------------------------------------------ attention sinks
def _with_sinks(fixture, sinks):
    """The attention output (before the kit's output projection) of a layer called with
    ``sinks=``, as gpt-oss's layers call their RadixAttention; the kit's module passes none."""
    attn = fixture.actual_module.attn
    plain = type(attn).forward.__get__(attn)
    seen = []

    def forward(*args, **kwargs):
        seen.append(plain(*args, **kwargs) if sinks is None else plain(*args, sinks=sinks, **kwargs))
        return seen[-1]

    attn.forward = forward
    _run(kit.run_dense_fixture_eager, fixture)
    return seen[-1].reshape(-1, fixture.case.num_heads, 64)


@pytest.mark.parametrize("case", [OWN_CASES[0][0], OWN_CASES[4][0], OWN_CASES[9][0]], ids=lambda c: c.name)
def test_sinks_rescale_each_row_by_its_own_softmax_mass(case):
    """With sinks s1 and s2 every row is the sink-free row times sigmoid(lse - s), and both
    ratios must name the same lse; a sink of -inf changes nothing."""
    fixture = _build(case, dtype=torch.float32)
    heads = case.num_heads
    plain = _with_sinks(fixture, None)
    none = _with_sinks(fixture, torch.full((heads,), float("-inf")))
    torch.testing.assert_close(none, plain, atol=0, rtol=0)
    s1, s2 = torch.linspace(-2.0, 3.0, heads), torch.linspace(1.0, -1.0, heads)
    lses = []
    for s in (s1, s2):
        got = _with_sinks(fixture, s)
        ratio = (got / plain).median(dim=-1).values  # sigmoid(lse - s), the same over D
        torch.testing.assert_close(got, plain * ratio.unsqueeze(-1), atol=1e-5, rtol=1e-4)
        assert (ratio > 0).all() and (ratio < 1).all()
        lses.append(s + torch.log(ratio / (1 - ratio)))
    torch.testing.assert_close(lses[0], lses[1], atol=2e-3, rtol=1e-3)


# ------------------------------------------------------------ sliding windows
SWA_KIT_CASES = (kit.make_swa_no_prefix_input_config_cases(NAME) + kit.make_swa_prefix_input_config_cases(NAME))


@pytest.mark.parametrize("case", SWA_KIT_CASES, ids=lambda c: c.name)
def test_sglang_kit_sliding_window_cases(case):
    _run(kit.run_dense_attention_case, _NoSkip(), case, device="cpu", dtype=torch.float32)


def _swa_case(name, mode, prefix, extend=(), heads=(8, 2), page=16, window=37):
    return kit.DenseAttentionCase(
        name=name, backend=NAME, forward_mode=mode, num_heads=heads[0], num_kv_heads=heads[1], page_size=page,
        prefix_lens=tuple(prefix), extend_lens=tuple(extend), sliding_window_size=window,
    )


SWA_CASES = [
    (_swa_case("swa_decode_page1", ForwardMode.DECODE, [5, 38, 39, 200], page=1), 0),
    (_swa_case("swa_decode_page16_window1", ForwardMode.DECODE, [1, 17, 90], window=1), 0),
    (_swa_case("swa_decode_shared_prefix_page64", ForwardMode.DECODE, [300, 300, 301], page=64, window=100), 256),
    (_swa_case("swa_extend_long_prefix_page16", ForwardMode.EXTEND, [150, 20, 0], [9, 40, 70]), 0),
    (_swa_case("swa_extend_shared_prefix_page64", ForwardMode.EXTEND, [128, 192], [64, 3], page=64, window=63), 128),
    (_swa_case("swa_extend_page1_past_window", ForwardMode.EXTEND, [60, 2], [50, 1], page=1, window=10), 0),
    (_swa_case("swa_mixed_chunk_and_decodes", ForwardMode.MIXED, [16, 80, 7], [40, 1, 1], window=20), 0),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case,shared", SWA_CASES, ids=[c.name for c, _ in SWA_CASES])
def test_sliding_window_layers_match_torch_native(case, shared, dtype):
    """Windows over long and shared prefixes, pages 1/16/64, decode, extend and mixed batches: our
    backend against SGLang's torch_native (a mask over the whole sequence) on the same pools."""
    fixture = _build(case, dtype=dtype, shared=shared)
    ours = _run(kit.run_dense_fixture_eager, fixture)
    native = ATTENTION_BACKENDS["torch_native"](fixture.runner)
    theirs = _run(kit.run_dense_fixture_eager, kit.replace_backend(fixture, native))
    _assert_close(ours, theirs, dtype)
    # and the window matters for these lengths
    fixture.actual_module.attn.sliding_window_size = -1
    backend = FlashCoreBackend(fixture.runner)
    backend.window_left = -1
    unwindowed = _run(kit.run_dense_fixture_eager, kit.replace_backend(fixture, backend))
    assert not torch.allclose(ours.float(), unwindowed.float(), atol=1e-3)


@pytest.mark.parametrize("capture_bs", [4, 8])
def test_kit_cuda_graph_decode_runner_replays_sliding_window_decode(monkeypatch, capture_bs):
    """The graph runner mode (fixed window-table buffers on a GPU; on CPU the reference takes the
    window) against the kit's reference, which needs each backend's decode window rule: ours is
    fa3's and flashinfer's (keys i - w .. i)."""
    try:
        from sglang.test.kits.attention_unittest.runner_modes import cuda_graph_decode_runner as cg_runner
    except ImportError as exc:  # SGLang 0.5.17's runner modes load sgl_kernel, which needs libcuda
        if torch.cuda.is_available():
            raise
        pytest.skip(f"this SGLang's kit runner modes do not import without a GPU: {str(exc).strip()[:200]}")
    monkeypatch.setattr(kit, "_SWA_DECODE_EXTEND_WINDOW", kit._SWA_DECODE_EXTEND_WINDOW | {NAME})
    case = _swa_case("swa_graph_decode", ForwardMode.DECODE, [3, 30, 50], window=20)  # (the runner holds 64 positions)
    with torch.no_grad():
        cg_runner.run_dense_cuda_graph_decode_case(_NoSkip(), case, device="cpu", dtype=torch.float32,
                                                   cuda_graph_capture_batch_size=capture_bs)


def test_the_shipped_gemma3_config_reaches_the_backend_with_its_window():
    """configs/tiny_gemma3_swa as SGLang reads it: one pool (Gemma 3 is not a hybrid-SWA model),
    head dim 256 (ours on a GPU too, no FlashInfer hand-over), layers with window 63 (HF's 64 keys
    counted with the query), which our backend accepts."""
    from sglang.srt.configs.model_config import ModelConfig
    from sglang.srt.models.gemma3_causal import get_attention_sliding_window_size

    from sglang_flashcore.serve import config_dir

    mc = ModelConfig(str(config_dir("tiny_gemma3_swa")))
    assert not mc.is_hybrid_swa and mc.head_dim == 256
    assert flashinfer_route(_fake_runner(model_config=mc, device="cuda")) is None
    window = get_attention_sliding_window_size(mc.hf_text_config)
    assert window == 63
    backend = FlashCoreBackend(_fake_runner(model_config=mc, sliding_window_size=window))
    assert backend.window_left == 63


def test_the_shipped_phi3_config_stays_on_our_kernels():
    """configs/tiny_phi3 as SGLang reads it: head dim 96, which our kernels serve in their 128
    build, so the plugin keeps it on a GPU (no FlashInfer hand-over) and the backend builds."""
    from sglang.srt.configs.model_config import ModelConfig

    from sglang_flashcore.heuristics import kernel_head_dim
    from sglang_flashcore.serve import config_dir

    mc = ModelConfig(str(config_dir("tiny_phi3")))
    assert mc.head_dim == 96 and kernel_head_dim(mc.head_dim) == 128
    assert flashinfer_route(_fake_runner(model_config=mc, device="cuda")) is None
    FlashCoreBackend(_fake_runner(model_config=mc, device="cuda"))


# ------------------------------------------------------------ logit soft-cap
@pytest.mark.parametrize("case", [OWN_CASES[0][0], OWN_CASES[4][0], OWN_CASES[9][0], SWA_CASES[3][0]],
                         ids=lambda c: c.name)
def test_logit_cap_reaches_every_kernel_call_and_changes_the_answer(monkeypatch, case):
    """A layer's logit_cap goes to the decode and extend calls as their softcap (whose math
    tests/test_softcap.py checks against tanh of the scores); a huge cap changes nothing."""
    import sglang_flashcore.sglang_backend as backend_module

    seen = []
    for name in ("extend_attention", "paged_decode_table"):
        real = getattr(backend_module, name)

        def spy(*args, _real=real, **kwargs):
            seen.append(kwargs.get("softcap"))
            return _real(*args, **kwargs)

        monkeypatch.setattr(backend_module, name, spy)
    fixture = _build(case, dtype=torch.float32, shared=0)
    plain = _run(kit.run_dense_fixture_eager, fixture)
    fixture.actual_module.attn.logit_cap = 1e6
    loose = _run(kit.run_dense_fixture_eager, fixture)
    fixture.actual_module.attn.logit_cap = 0.05
    tight = _run(kit.run_dense_fixture_eager, fixture)
    assert seen == [0.0, 1e6, 0.05]
    torch.testing.assert_close(loose, plain, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(tight, plain, atol=1e-3)


# ------------------------------------------------------------ FlashInfer route
def test_head_dims_without_our_kernels_go_to_sglangs_flashinfer_backend(monkeypatch, caplog):
    """On a GPU, a model whose head dim our kernels lack gets SGLang's flashinfer backend from
    our factory (with a warning); ours keeps the rest, and the CPU path keeps every head dim."""
    built = []

    class FakeFlashInfer:
        def __init__(self, runner):
            built.append(runner)

    monkeypatch.setitem(ATTENTION_BACKENDS, "flashinfer", FakeFlashInfer)
    odd = _fake_runner(model_config=_cfg(head_dim=72), device="cuda")
    with caplog.at_level("WARNING"):
        backend = plugin.create_backend(odd)
    assert isinstance(backend, FakeFlashInfer) and built == [odd]
    assert "head dim 72 is not in its CUDA kernels (64 to 256 in multiples of 16)" in caplog.text
    # Gemma 2/3 and Qwen3-Next's full-attention layers (256), Phi-3 (96), Phi-2 (80): ours
    for head_dim in (64, 80, 96, 128, 192, 256):
        assert isinstance(plugin.create_backend(_fake_runner(model_config=_cfg(head_dim=head_dim), device="cuda")),
                          FlashCoreBackend)
    assert isinstance(plugin.create_backend(_fake_runner(model_config=_cfg(head_dim=72), device="cpu")),
                      FlashCoreBackend)

    def broken(runner):
        raise ImportError("no flashinfer")

    monkeypatch.setitem(ATTENTION_BACKENDS, "flashinfer", broken)
    with pytest.raises(UnsupportedFeatureError, match="head dim 72 .* flashinfer backend could not be built"):
        plugin.create_backend(_fake_runner(model_config=_cfg(head_dim=72), device="cuda"))
