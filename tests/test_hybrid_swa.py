"""SGLang's hybrid SWA pool on CPU: windowed layers keep K/V in a sub-pool of their own, addressed
through full_to_swa_index_mapping; tokens that left every window map to slot 0, which holds NaN
here, so a read outside the window (or an unmapped read) shows in the output."""

import os

import pytest
import torch
from types import SimpleNamespace

if os.environ.get("FLASHCORE_REQUIRE_SGLANG") != "1":
    pytest.importorskip("sglang", reason="SGLang is not installed (pip install -e .[sglang])")

from sglang.srt.mem_cache.swa_memory_pool import SWAKVPool  # noqa: E402
from sglang.srt.model_executor.forward_batch_info import ForwardMode  # noqa: E402

from sglang_flashcore.sglang_backend import FlashCoreBackend, UnsupportedFeatureError  # noqa: E402

HQ, HKV, D, WINDOW = 4, 2, 16, 20
FULL_SLOTS, SWA_SLOTS = 512, 256


def _layer(layer_id, window):
    return SimpleNamespace(layer_id=layer_id, tp_q_head_num=HQ, tp_k_head_num=HKV, tp_v_head_num=HKV, qk_head_dim=D,
                           v_head_dim=D, scaling=D ** -0.5, sliding_window_size=window, logit_cap=0.0,
                           is_cross_attention=False, attn_type=None, k_scale=None)


SWA_LAYER, FULL_LAYER = _layer(0, WINDOW), _layer(1, -1)


class World:
    """Three requests over a hybrid pool: layer 0 windowed (SWA sub-pool), layer 1 full."""

    def __init__(self, lens, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.pool = SWAKVPool(size=FULL_SLOTS, size_swa=SWA_SLOTS, page_size=1, dtype=torch.float32, head_num=HKV,
                              head_dim=D, swa_attention_layer_ids=[0], full_attention_layer_ids=[1], device="cpu")
        self.mapping = torch.zeros(FULL_SLOTS + 2, dtype=torch.int64)
        self.r2t = torch.zeros(4, 256, dtype=torch.int32)
        full_ids = torch.randperm(FULL_SLOTS, generator=g)[: sum(lens)] + 1
        swa_free = (torch.randperm(SWA_SLOTS, generator=g) + 1).tolist()
        start = 0
        for b, n in enumerate(lens):
            self.r2t[b + 1, :n] = full_ids[start:start + n].int()
            start += n
            for pos in range(max(0, n - WINDOW - 1), n):  # the tokens some window still holds
                self.mapping[int(self.r2t[b + 1, pos])] = swa_free.pop()
        self.pool.register_mapping(self.mapping)
        for buf in (self.pool.get_key_buffer(1), self.pool.get_value_buffer(1),
                    self.pool.get_key_buffer(0), self.pool.get_value_buffer(0)):
            buf.copy_(torch.randn(buf.shape, generator=g))
        self.pool.get_key_buffer(0)[0] = float("nan")  # slot 0: a token no window holds
        self.pool.get_value_buffer(0)[0] = float("nan")
        runner = SimpleNamespace(
            device="cpu", page_size=1, req_to_token_pool=SimpleNamespace(req_to_token=self.r2t),
            token_to_kv_pool=self.pool, use_mla_backend=False, is_hybrid_swa=True, sliding_window_size=WINDOW,
            kv_cache_dtype=torch.float32,
            model_config=SimpleNamespace(is_encoder_decoder=False, attention_chunk_size=None, num_attention_heads=HQ))
        self.backend = FlashCoreBackend(runner)
        self.rows = torch.arange(1, len(lens) + 1)

    def keys(self, layer, b, first, last):
        """K and V of request b's positions first..last (inclusive) as the layer's pool holds them."""
        slots = self.r2t[b + 1, first:last + 1].long()
        if layer is SWA_LAYER:
            slots = self.mapping[slots]
        kb = self.pool.get_key_buffer(layer.layer_id)[slots].repeat_interleave(HQ // HKV, dim=1).double()
        vb = self.pool.get_value_buffer(layer.layer_id)[slots].repeat_interleave(HQ // HKV, dim=1).double()
        return kb, vb


def _attend(q, k, v):
    p = torch.softmax(torch.einsum("hd,thd->ht", q.double(), k) * D ** -0.5, dim=-1)
    return torch.einsum("ht,thd->hd", p, v)


def test_decode_reads_windowed_layers_through_the_mapping_and_writes_their_sub_pool():
    lens = [50, 10, 90]
    world = World(lens)
    seq = torch.tensor(lens)
    loc = torch.stack([world.r2t[b + 1, n - 1] for b, n in enumerate(lens)]).long()
    fb = SimpleNamespace(forward_mode=ForwardMode.DECODE, req_pool_indices=world.rows, seq_lens=seq,
                         out_cache_loc=loc, encoder_lens=None)
    world.backend.init_forward_metadata(fb)
    g = torch.Generator().manual_seed(1)
    for layer in (SWA_LAYER, FULL_LAYER):
        # (RadixAttention hands backends k and v as [tokens, Hkv, D])
        q, k, v = torch.randn(3, HQ * D, generator=g), torch.randn(3, HKV, D, generator=g), torch.randn(3, HKV, D, generator=g)
        out = world.backend.forward_decode(q, k, v, layer, fb).view(3, HQ, D)
        assert not out.isnan().any()
        stored = world.pool.get_key_buffer(layer.layer_id)[world.mapping[loc] if layer is SWA_LAYER else loc]
        torch.testing.assert_close(stored, k)
        for b, n in enumerate(lens):
            first = max(0, n - 1 - WINDOW) if layer is SWA_LAYER else 0
            kb, vb = world.keys(layer, b, first, n - 1)
            torch.testing.assert_close(out[b].double(), _attend(q.view(3, HQ, D)[b], kb, vb), atol=1e-5, rtol=1e-5)


def test_extend_reads_windowed_layers_from_the_window_start_through_the_mapping():
    prefix, ext = [30, 0, 70], [5, 4, 25]
    lens = [p + e for p, e in zip(prefix, ext)]
    world = World(lens, seed=2)
    loc = torch.cat([world.r2t[b + 1, p:p + e] for b, (p, e) in enumerate(zip(prefix, ext))]).long()
    fb = SimpleNamespace(
        forward_mode=ForwardMode.EXTEND, req_pool_indices=world.rows, seq_lens=torch.tensor(lens),
        extend_prefix_lens=torch.tensor(prefix), extend_seq_lens=torch.tensor(ext), extend_prefix_lens_cpu=prefix,
        extend_seq_lens_cpu=ext, out_cache_loc=loc, encoder_lens=None)
    world.backend.init_forward_metadata(fb)
    total = sum(ext)
    g = torch.Generator().manual_seed(3)
    for layer in (SWA_LAYER, FULL_LAYER):
        q = torch.randn(total, HQ * D, generator=g)
        k, v = torch.randn(total, HKV, D, generator=g), torch.randn(total, HKV, D, generator=g)
        out = world.backend.forward_extend(q, k, v, layer, fb).view(total, HQ, D)
        assert not out.isnan().any()
        row = 0
        for b, (p, e) in enumerate(zip(prefix, ext)):
            for i in range(e):
                pos = p + i
                first = max(0, pos - WINDOW) if layer is SWA_LAYER else 0
                kb, vb = world.keys(layer, b, first, pos)
                want = _attend(q.view(total, HQ, D)[row], kb, vb)
                torch.testing.assert_close(out[row].double(), want, atol=1e-5, rtol=1e-5)
                row += 1


def test_a_hybrid_pool_without_a_mapping_is_refused_clearly():
    world = World([12, 3, 40])
    world.pool.full_to_swa_index_mapping = None  # what SGLang's unified memory pool leaves
    fb = SimpleNamespace(forward_mode=ForwardMode.DECODE, req_pool_indices=world.rows, seq_lens=torch.tensor([12, 3, 40]),
                         out_cache_loc=torch.tensor([1, 2, 3]), encoder_lens=None)
    world.backend.init_forward_metadata(fb)
    q = torch.zeros(3, HQ * D)
    with pytest.raises(UnsupportedFeatureError, match="unified memory pool"):
        world.backend.forward_decode(q, q.view(3, HQ, D)[:, :HKV], q.view(3, HQ, D)[:, :HKV], SWA_LAYER, fb)
