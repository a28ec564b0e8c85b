"""The serving baselines' CPU-side parts: the FA3 ``sgl_kernel.flash_attn`` replacement against
FlashAttention-3's op schema, and bench_decode's baselines skipping cleanly where they cannot run."""

import importlib.util
import os
import sys

import pytest
import torch

HERE = os.path.dirname(__file__)
sys.path.insert(0, os.path.join(HERE, "..", "benchmarks"))
sys.path.insert(0, os.path.join(HERE, "..", "tools"))

# FlashAttention-3's schemas as hopper/flash_api_stable.cpp registers them (Dao-AILab/flash-attention
# 0251105a), under another namespace so that a real FA3 in the environment is left alone
FWD = ("fwd(Tensor q, Tensor k, Tensor v, Tensor(k_new!)? k_new = None, Tensor(v_new!)? v_new = None, "
       "Tensor? q_v = None, Tensor(out!)? out = None, Tensor? cu_seqlens_q = None, Tensor? cu_seqlens_k = None, "
       "Tensor? cu_seqlens_k_new = None, Tensor? seqused_q = None, Tensor? seqused_k = None, "
       "int? max_seqlen_q = None, int? max_seqlen_k = None, Tensor? page_table = None, "
       "Tensor? kv_batch_idx = None, Tensor? leftpad_k = None, Tensor? rotary_cos = None, "
       "Tensor? rotary_sin = None, Tensor? seqlens_rotary = None, Tensor? q_descale = None, "
       "Tensor? k_descale = None, Tensor? v_descale = None, float? softmax_scale = None, "
       "bool is_causal = False, int window_size_left = -1, int window_size_right = -1, "
       "int attention_chunk = 0, float softcap = 0.0, bool is_rotary_interleaved = False, "
       "Tensor? scheduler_metadata = None, int num_splits = 0, bool? pack_gqa = None, "
       "int sm_margin = 0) -> (Tensor, Tensor, Tensor, Tensor)")
SCHED = ("get_scheduler_metadata(int batch_size, int max_seqlen_q, int max_seqlen_k, int num_heads, "
         "int num_heads_k, int headdim, int headdim_v, ScalarType qkv_dtype, Tensor seqused_k, "
         "Tensor? cu_seqlens_q = None, Tensor? cu_seqlens_k = None, Tensor? cu_seqlens_k_new = None, "
         "Tensor? seqused_q = None, Tensor? leftpad_k = None, int? page_size = None, int max_seqlen_k_new = 0, "
         "bool is_causal = False, int window_size_left = -1, int window_size_right = -1, "
         "int attention_chunk = 0, bool has_softcap = False, int num_splits = 0, bool? pack_gqa = None, "
         "int sm_margin = 0) -> Tensor")
CALLS = []
_LIB = None


def _fake_ops():
    """A CPU op library with FA3's schemas that records what it is called with."""
    global _LIB
    if _LIB is None:
        _LIB = torch.library.Library("fc_fake_fa3", "DEF")
        _LIB.define(FWD)
        _LIB.define(SCHED)

        def fwd(*args):
            CALLS.append(("fwd", args))
            q = args[0]
            return q.clone(), torch.zeros(q.shape[:-1]), torch.empty(0), torch.empty(0)

        def sched(*args):
            CALLS.append(("sched", args))
            return torch.zeros(5, dtype=torch.int32)

        _LIB.impl("fwd", fwd, "CPU")
        _LIB.impl("get_scheduler_metadata", sched, "CPU")
    return torch.ops.fc_fake_fa3


@pytest.fixture
def shim(monkeypatch):
    spec = importlib.util.spec_from_file_location("fa3_shim", os.path.join(HERE, "..", "tools", "fa3_sgl_kernel_shim.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "FA3_OPS", _fake_ops())
    CALLS.clear()
    return module


def test_kvcache_call_matches_fa3_schema(shim):
    q = torch.randn(3, 4, 128)
    kc = torch.randn(10, 64, 2, 128)
    pages = torch.zeros(3, 2, dtype=torch.int32)
    seq = torch.tensor([70, 64, 1], dtype=torch.int32)
    cu = torch.arange(4, dtype=torch.int32)
    out, lse, *rest = shim.flash_attn_with_kvcache(q, kc, kc, page_table=pages, cache_seqlens=seq, cu_seqlens_q=cu,
                                                   max_seqlen_q=1, softmax_scale=0.1, causal=True, num_splits=3,
                                                   return_softmax_lse=True)
    assert out.shape == q.shape and len(rest) == 2
    (name, args), = CALLS
    assert name == "fwd" and len(args) >= 32  # the dispatcher drops trailing defaults
    assert args[7] is cu and args[11] is seq and args[12] == 1 and args[14] is pages  # cu_seqlens_q, seqused_k, max_q, page_table
    assert args[23] == 0.1 and args[24] is True and args[25:27] == (-1, -1) and args[31] == 3
    assert torch.equal(shim.flash_attn_with_kvcache(q, kc, kc, page_table=pages, cache_seqlens=seq), q)


def test_varlen_call_and_scheduler_metadata_match_fa3_schema(shim):
    q = torch.randn(6, 4, 128)
    cu = torch.tensor([0, 2, 6], dtype=torch.int32)
    shim.flash_attn_varlen_func(q, q, q, cu, cu, max_seqlen_q=4, max_seqlen_k=4, causal=True)
    (_, args), = CALLS
    assert args[7] is cu and args[8] is cu and args[12:14] == (4, 4) and args[14] is None and args[24] is True
    seq = torch.tensor([5, 9], dtype=torch.int32)
    meta = shim.get_scheduler_metadata(2, 1, 9, 32, 8, 128, seq, qkv_dtype=torch.bfloat16, page_size=64, causal=True)
    assert meta.dtype == torch.int32
    name, args = CALLS[-1]
    assert name == "sched" and args[:8] == (2, 1, 9, 32, 8, 128, 128, torch.bfloat16) and args[14] == 64 and args[16]


def test_shim_refuses_what_the_build_lacks(shim):
    q = torch.randn(2, 4, 128)
    with pytest.raises(NotImplementedError):
        shim.flash_attn_with_kvcache(q, q.view(2, 1, 4, 128), q.view(2, 1, 4, 128), sinks=torch.zeros(4))
    with pytest.raises(ValueError):
        shim.flash_attn_varlen_func(q, q, q, None, None)
    shim.FA3_OPS = None
    shim._IMPORT_ERROR = ImportError("absent")
    with pytest.raises(ImportError, match="absent"):
        shim.get_scheduler_metadata(1, 1, 1, 4, 4, 128, torch.ones(1, dtype=torch.int32))


def test_decode_serving_baselines_skip_by_name_where_they_cannot_run():
    from bench_decode import SERVING_BASELINES, serving_baselines, shared_page_table

    r2t, slots = shared_page_table(batch=2, context=256, page=64, shared_frac=0.5, device="cpu")
    k = torch.randn(slots, 2, 128, dtype=torch.bfloat16)
    q = torch.randn(2, 8, 128, dtype=torch.bfloat16)
    row = {}
    fns = serving_baselines(q, k, k, r2t, 64, 2, 256, q, lambda kk, vv: q, row)
    assert fns == {}  # no GPU here: every one is skipped, none fails the benchmark
    named = set(row["skipped"])
    assert "fa3" in named and (named == set(SERVING_BASELINES) or named == {"flashinfer", "fa3"})


def test_extend_serving_baselines_skip_by_name_where_they_cannot_run():
    from bench_decode import shared_page_table
    from bench_extend import SERVING_BASELINES, serving_baselines

    r2t, slots = shared_page_table(batch=2, context=128, page=64, shared_frac=0.5, device="cpu")
    k = torch.randn(slots, 2, 128, dtype=torch.bfloat16)
    q = torch.randn(2 * 64, 8, 128, dtype=torch.bfloat16)
    row = {}
    assert serving_baselines(q, k, k, r2t, 64, 64, 128, 128 ** -0.5, row) == {}
    assert set(row["skipped"]) == set(SERVING_BASELINES)


def test_flashinfer_module_list_is_what_the_builder_can_call():
    """Each entry is ``module:generator(arguments)``, the arguments Python with torch (as
    pack_box_site.build_flashinfer_aot runs them); the server's modules are all there."""
    import build_baselines

    for label, target in build_baselines.FLASHINFER_MODULES.items():
        module, call = target.split(":")
        fn, _, args = call.partition("(")
        assert module.startswith("flashinfer.jit") and fn.startswith("gen_") and args.endswith(")"), label
        eval(f"(lambda *a: a)({args[:-1]})", {"torch": torch})
    assert {"prefill_fa2", "prefill_fa3", "cascade"} <= set(build_baselines.FLASHINFER_MODULES)
