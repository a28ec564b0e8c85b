"""``FlashCoreBackend``: SGLang's AttentionBackend on top of FlashCore's planners and kernels.

Metadata is built once per forward batch (``init_forward_metadata``) from the radix cache's
page table and shared by every layer. Decode on a Hopper GPU: the ``DecodePlanner`` plans the
step on the device (no host sync, fixed buffers, so the same path serves CUDA-graph replays);
decode on CPU: the float32 reference over the same page table. Extend: an ``ExtendPlan`` (each request's page list, or its
packed key slots for page size 1, and the varlen offsets; no host sync). Each layer then stores
its new K/V through SGLang's KV pool, exactly as the built-in backends do, and runs the decode
kernel / ``paged_decode_table`` / ``extend_attention`` (the dense kernel reading the pool's pages in
place, or one gather and the dense kernel).

Works with SGLang 0.5.17 through 0.5.23 (both use the ``init_forward_metadata_out_graph``
/ ``_in_graph`` contract for CUDA graphs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, Optional

import torch

from sglang.srt.layers.attention.base_attn_backend import AttentionBackend

from . import config
from .decode import DecodePlanner, paged_decode_table, planner_group
from .extend import ExtendPlan, extend_attention, plan_extend, widened_page_plan
from .checks import FP8_KV_DTYPES
from .heuristics import DECODE_HEAD_DIMS, DENSE_HEAD_DIMS, head_dims_text
from .sglang_verify import VerifyMetadataBuilder, is_draft_extend, is_target_verify
from .sinks import apply_sinks
from .window import extend_key_start, window_table, window_width
from .speculative import VerifyPlan, verify_attention

if TYPE_CHECKING:
    from sglang.srt.layers.radix_attention import RadixAttention
    from sglang.srt.model_executor.forward_batch_info import ForwardBatch

BACKEND_NAME = "flashcore_sparse"


class UnsupportedFeatureError(NotImplementedError):
    """A model or batch needs a feature ``flashcore_sparse`` does not implement yet."""

    def __init__(self, feature: str, hint: str = ""):
        super().__init__(
            f"attention backend '{BACKEND_NAME}' does not support {feature} yet"
            + (f"; {hint}" if hint else "")
            + ". Use --attention-backend triton (or flashinfer/fa3) for this model."
        )


@dataclass
class ForwardMetadata:
    """What every layer of one forward pass reads."""

    extend: Optional[ExtendPlan] = None  # extend: the keys of every request
    planner: Optional[DecodePlanner] = None  # GPU decode: planned on the device, run from its buffers
    # CPU decode: each request's pool row and length (the reference reads the page table)
    req_pool_indices: Optional[torch.Tensor] = None
    seq_lens: Optional[torch.Tensor] = None
    verify: Optional[VerifyPlan] = None  # target verify (and CUDA-graph draft extend): see speculative.py
    # the sliding-window layers' view of the same batch (window.py): their extend plan, starting at
    # each request's window, and their GPU decode planner (on CPU the reference takes the window)
    window_extend: Optional[ExtendPlan] = None
    window_planner: Optional[DecodePlanner] = None
    # SGLang's hybrid SWA pool: the new tokens' slots in the windowed layers' sub-pool
    swa_loc: Optional[torch.Tensor] = None


class _GraphBuffers:
    """CPU stand-in for CUDA-graph decode (SGLang's kit runs its graph-runner mode on CPU too):
    a batch's rows and lengths are copied into fixed buffers before capture and before each
    replay, so the "captured" calls always read the same addresses."""

    def __init__(self, max_bs: int, device):
        self.max_bs = max_bs
        self.req_pool_indices = torch.zeros(max_bs, dtype=torch.int64, device=device)
        self.seq_lens = torch.zeros(max_bs, dtype=torch.int64, device=device)

    def load(self, meta: ForwardMetadata) -> ForwardMetadata:
        b = meta.seq_lens.shape[0]
        if b > self.max_bs:
            raise ValueError(f"CUDA-graph batch of {b} requests exceeds the {self.max_bs} sized at "
                             "init_cuda_graph_state")
        self.req_pool_indices[:b].copy_(meta.req_pool_indices)
        self.seq_lens[:b].copy_(meta.seq_lens)
        return ForwardMetadata(req_pool_indices=self.req_pool_indices[:b], seq_lens=self.seq_lens[:b])


def _attention_tp_size() -> int:
    """Ranks the attention heads are split over (SGLang's attention tensor parallelism); 1 where
    SGLang's parallel state is not set up (its test kit)."""
    try:
        from sglang.srt.runtime_context import get_parallel

        return max(1, int(get_parallel().attn_tp_size))
    except Exception:  # noqa: BLE001 - no parallel state: one rank
        return 1


def _is_hybrid_swa_pool(pool) -> bool:
    """SGLang's hybrid SWA pool (windowed layers in a sub-pool of their own), in any release."""
    try:
        from sglang.srt.mem_cache.base_swa_memory_pool import BaseSWAKVPool
    except ImportError:  # pragma: no cover - releases without it name the sub-pool alike
        return hasattr(pool, "swa_kv_pool")
    return isinstance(pool, BaseSWAKVPool)


def _layer_window(layer) -> int:
    """A layer's sliding window (SGLang's ``sliding_window_size``: keys i - w .. i), -1 for none."""
    window = getattr(layer, "sliding_window_size", -1)
    return int(window) if window is not None and window > -1 else -1


def _layer_softcap(layer) -> float:
    """A layer's logit soft-cap (SGLang's ``logit_cap``: cap * tanh(s / cap)), 0 for none."""
    cap = getattr(layer, "logit_cap", 0.0)
    return float(cap) if cap is not None and cap > 0 else 0.0


def kernel_head_dims() -> list:
    """The head dims both of our CUDA kernels (dense/extend and decode) take."""
    return sorted(set(DECODE_HEAD_DIMS) & set(DENSE_HEAD_DIMS))


def kernel_head_dims_text() -> str:
    """``kernel_head_dims()`` in words: "64 to 256 in multiples of 16"."""
    return head_dims_text(kernel_head_dims())


def head_dim_without_kernels(cfg, device: torch.device) -> Optional[int]:
    """The model's head dim where it runs on our CUDA kernels and they lack it, else None."""
    head_dim = getattr(cfg, "head_dim", None)
    if not head_dim or not config.use_kernels(device) or head_dim in kernel_head_dims():
        return None
    return int(head_dim)


def flashinfer_route(model_runner) -> Optional[str]:
    """Why this model's attention goes to SGLang's ``flashinfer`` backend instead of ours, or None
    when ours serves it: on a GPU, a head dim our kernels do not have (below 64, or not a multiple
    of 16). FlashInfer is installed with SGLang and serves them, windows and soft-caps included
    (plugin.create_backend hands the model over)."""
    if getattr(model_runner, "use_mla_backend", False):
        return None
    head_dim = head_dim_without_kernels(getattr(model_runner, "model_config", None),
                                        torch.device(getattr(model_runner, "device", "cpu")))
    if head_dim is None:
        return None
    return f"head dim {head_dim} is not in its CUDA kernels ({kernel_head_dims_text()})"


def _rank_q_heads(cfg) -> Optional[int]:
    """Query heads of one attention rank (as SGLang's own backends count them), None without a config."""
    total = getattr(cfg, "num_attention_heads", None)
    if not total:
        return None
    return max(1, int(total) // _attention_tp_size())


class FlashCoreBackend(AttentionBackend):
    """Sharing-aware paged attention for dense MHA/GQA/MQA decoder models."""

    def __init__(self, model_runner, chunk_tokens: Optional[int] = None):
        super().__init__()
        self._reject_unsupported_model(model_runner)
        self.device = torch.device(model_runner.device)
        self.page_size = int(model_runner.page_size)
        self.chunk_tokens = chunk_tokens  # None: the planner picks one per batch
        # pools captured at construction, as SGLang's own backends do
        self.req_to_token_pool = model_runner.req_to_token_pool
        self.token_to_kv_pool = model_runner.token_to_kv_pool
        self.kv_index_translator = getattr(model_runner, "kv_index_translator", None)
        # the model's sliding window (SGLang's model_runner.sliding_window_size: every windowed layer
        # has it); -1: no windowed layer
        window = getattr(model_runner, "sliding_window_size", None)
        self.window_left = int(window) if window is not None and window > -1 else -1
        # SGLang's hybrid SWA pool: windowed layers keep their K/V in a sub-pool of their own, whose
        # slot of a token is full_to_swa_index_mapping[its slot] (0 once it left every window)
        self.hybrid_swa = _is_hybrid_swa_pool(self.token_to_kv_pool)
        self._window_planner: Optional[DecodePlanner] = None  # GPU: made on the first windowed decode
        self._window_buffers = None  # CUDA graphs: the window table's fixed (table, lens, rows)
        self._swa_loc_buffer: Optional[torch.Tensor] = None  # CUDA graphs: the fixed ForwardMetadata.swa_loc
        # --kv-cache-dtype fp8_e4m3 / fp8_e5m2: the pool holds K / k_scale and V / v_scale
        self.fp8_kv = getattr(model_runner, "kv_cache_dtype", None) in FP8_KV_DTYPES
        # --enable-deterministic-inference: batch-invariant decode (DecodePlanner's deterministic mode)
        self.deterministic = bool(getattr(getattr(model_runner, "server_args", None),
                                          "enable_deterministic_inference", False))
        self.forward_metadata: Optional[ForwardMetadata] = None
        self._graph: Optional[_GraphBuffers] = None  # CPU: fixed row/length buffers
        self._planner: Optional[DecodePlanner] = None  # GPU: made on first decode
        cfg = getattr(model_runner, "model_config", None)
        # this rank's query heads: size the planner's workspace and its GQA group
        self._max_q_heads = _rank_q_heads(cfg)
        self._checked_layers: Dict[int, bool] = {}
        self._verify: Optional[VerifyMetadataBuilder] = None  # made on the first speculative batch
        # SGLang's speculative workers size verify masks by it when a batch has no host lengths
        self.max_context_len = int(self.req_to_token_pool.req_to_token.shape[1]) if self.req_to_token_pool else 0

    # ------------------------------------------------------------ validation
    @staticmethod
    def _reject_unsupported_model(model_runner) -> None:
        if getattr(model_runner, "use_mla_backend", False):
            raise UnsupportedFeatureError("MLA (multi-head latent attention)")
        cfg = getattr(model_runner, "model_config", None)
        if cfg is not None and getattr(cfg, "is_encoder_decoder", False):
            raise UnsupportedFeatureError("encoder-decoder (cross) attention")
        if cfg is not None and getattr(cfg, "attention_chunk_size", None):
            raise UnsupportedFeatureError("chunked local attention")
        FlashCoreBackend._reject_unsupported_layers(cfg, torch.device(getattr(model_runner, "device", "cpu")))
        kv_dtype = getattr(model_runner, "kv_cache_dtype", None)
        if kv_dtype is not None and kv_dtype not in (torch.float16, torch.bfloat16, torch.float32) + FP8_KV_DTYPES:
            raise UnsupportedFeatureError(f"a {kv_dtype} KV cache", "use --kv-cache-dtype auto, fp8_e4m3 or fp8_e5m2")

    @staticmethod
    def _reject_unsupported_layers(cfg, device: torch.device) -> None:
        """What the model config already says about its attention layers, so that the server fails
        when it is built rather than at its first forward (each layer is checked again then)."""
        if cfg is None:
            return
        head_dim, v_head_dim = getattr(cfg, "head_dim", None), getattr(cfg, "v_head_dim", None)
        if head_dim and v_head_dim and head_dim != v_head_dim:
            raise UnsupportedFeatureError(f"different Q/K and V head dims ({head_dim} vs {v_head_dim})")
        if head_dim_without_kernels(cfg, device) is not None:
            raise UnsupportedFeatureError(f"head dim {head_dim} on the CUDA kernels (they take "
                                          f"{kernel_head_dims_text()})",
                                          "FLASHCORE_IMPL=reference runs the float32 reference")

    def _check_layer(self, layer: "RadixAttention") -> None:
        if self._checked_layers.get(layer.layer_id):
            return
        if getattr(layer, "is_cross_attention", False):
            raise UnsupportedFeatureError("cross attention")
        window = _layer_window(layer)
        if window > -1 and window != self.window_left:
            raise UnsupportedFeatureError(f"a layer window of {window} in a model whose window is {self.window_left}",
                                          "one sliding window per model, as SGLang's model_runner.sliding_window_size")
        if layer.qk_head_dim != layer.v_head_dim:
            raise UnsupportedFeatureError(
                f"different Q/K and V head dims ({layer.qk_head_dim} vs {layer.v_head_dim})"
            )
        self._checked_layers[layer.layer_id] = True

    @staticmethod
    def _check_batch(forward_batch: "ForwardBatch") -> None:
        mode = forward_batch.forward_mode

        def is_(name: str) -> bool:  # mode predicates differ between SGLang releases
            return bool(getattr(mode, name, lambda: False)())

        if is_("is_dllm_extend"):
            raise UnsupportedFeatureError("diffusion-LLM block attention")
        if getattr(forward_batch, "encoder_lens", None) is not None:
            raise UnsupportedFeatureError("encoder lengths (cross attention)")

    # ------------------------------------------------------------- metadata
    def _use_planner(self) -> bool:
        return config.use_kernels(self.device)

    def _new_decode_planner(self) -> DecodePlanner:
        """A decode planner sized for every request row of the pool and this rank's query heads."""
        if not self._max_q_heads:
            raise UnsupportedFeatureError("GPU decode for a model config without num_attention_heads")
        head_dim = self.token_to_kv_pool.get_key_buffer(0).shape[-1]
        return DecodePlanner(self.req_to_token_pool.req_to_token.shape[0], self._max_q_heads, head_dim, self.device,
                             deterministic=self.deterministic)

    def _decode_planner(self) -> DecodePlanner:
        """One planner for eager and CUDA-graph decode."""
        if self._planner is None:
            self._planner = self._new_decode_planner()
        return self._planner

    def _window_decode_planner(self) -> DecodePlanner:
        """The windowed layers' decode planner: plans over the window table (window.py)."""
        if self._window_planner is None:
            self._window_planner = self._new_decode_planner()
        return self._window_planner

    def _plan_window_decode(self, forward_batch: "ForwardBatch", num_kv_heads: int, graph: bool) -> DecodePlanner:
        """Each request's last window_left + 1 slots into a table (fixed buffers under CUDA graphs)
        and the windowed layers' plan over it."""
        req_to_token = self.req_to_token_pool.req_to_token
        rows, lens = forward_batch.req_pool_indices, forward_batch.seq_lens
        if graph:
            buf_table, buf_lens, buf_rows = self._window_buffers
            table, keys = window_table(req_to_token, rows, lens, self.window_left, slot_map=self._swa_slot_map(),
                                       out=buf_table, out_lens=buf_lens)
            table_rows = buf_rows[: lens.shape[0]]
        else:
            table, keys = window_table(req_to_token, rows, lens, self.window_left, slot_map=self._swa_slot_map())
            table_rows = torch.arange(lens.shape[0], device=lens.device)
        planner = self._window_decode_planner()
        planner.plan(table, table_rows, keys, num_kv_heads, planner_group(self._max_q_heads, num_kv_heads),
                     self.chunk_tokens)
        return planner

    def _plan_window_extend(self, forward_batch: "ForwardBatch", plan: ExtendPlan) -> ExtendPlan:
        """The windowed layers' extend plan: each request's keys from its first new token's window on
        (the full plan itself when no window starts past position 0)."""
        prefix_cpu = getattr(forward_batch, "extend_prefix_lens_cpu", None)
        start_cpu = None if prefix_cpu is None else [max(0, int(p) - self.window_left) for p in prefix_cpu]
        slot_map = self._swa_slot_map()
        if slot_map is None and start_cpu is not None and not any(start_cpu):
            return plan
        window_plan = plan_extend(
            self.req_to_token_pool.req_to_token, forward_batch.req_pool_indices, forward_batch.extend_prefix_lens,
            forward_batch.extend_seq_lens, forward_batch.out_cache_loc, prefix_lens_cpu=prefix_cpu,
            extend_lens_cpu=getattr(forward_batch, "extend_seq_lens_cpu", None), page_size=self.page_size,
            # the SWA sub-pool's pages are not the table's: its slots are gathered through the mapping
            paged=False if slot_map is not None else None,
            key_start=extend_key_start(forward_batch.extend_prefix_lens, self.window_left), key_start_cpu=start_cpu)
        if slot_map is not None and window_plan.key_slots is not None:
            window_plan.key_slots = slot_map[window_plan.key_slots]
        return self._for_pool(window_plan)

    def _for_pool(self, plan: ExtendPlan) -> ExtendPlan:
        """An FP8 pool's pages are widened before the kernel reads them: the plan over a compact
        copy of its distinct pages (extend.widened_page_plan)."""
        return widened_page_plan(plan) if self.fp8_kv else plan

    def _verify_builder(self) -> VerifyMetadataBuilder:
        """Plans speculative batches (target verify; draft extend in CUDA graphs): speculative.py."""
        if self._verify is None:
            k0 = self.token_to_kv_pool.get_key_buffer(0)
            if self._use_planner() and not self._max_q_heads:
                raise UnsupportedFeatureError("GPU verify for a model config without num_attention_heads")
            self._verify = VerifyMetadataBuilder(
                self.req_to_token_pool.req_to_token, self.device, use_kernels=self._use_planner(),
                num_q_heads=self._max_q_heads or k0.shape[1], head_dim=k0.shape[-1], num_kv_heads=k0.shape[1],
                chunk_tokens=self.chunk_tokens, deterministic=self.deterministic, window_left=self.window_left,
                slot_map=self._swa_slot_map)
        return self._verify

    def _build_metadata(self, forward_batch: "ForwardBatch", graph: bool = False) -> ForwardMetadata:
        self._check_batch(forward_batch)
        req_to_token = self.req_to_token_pool.req_to_token
        if is_target_verify(forward_batch.forward_mode):  # draft extends are extends (below)
            return ForwardMetadata(verify=self._verify_builder().plan(forward_batch))
        if forward_batch.forward_mode.is_decode_or_idle():
            if self._use_planner():
                planner = self._decode_planner()
                num_kv_heads = self.token_to_kv_pool.get_key_buffer(0).shape[1]
                planner.plan(req_to_token, forward_batch.req_pool_indices, forward_batch.seq_lens, num_kv_heads,
                             planner_group(self._max_q_heads, num_kv_heads), self.chunk_tokens)
                window = (self._plan_window_decode(forward_batch, num_kv_heads, graph and self._window_buffers is not None)
                          if self.window_left >= 0 else None)
                return ForwardMetadata(planner=planner, window_planner=window)
            return ForwardMetadata(req_pool_indices=forward_batch.req_pool_indices, seq_lens=forward_batch.seq_lens)
        # extend (and mixed: decode requests arrive as extends of length 1)
        plan = plan_extend(
            req_to_token, forward_batch.req_pool_indices, forward_batch.extend_prefix_lens,
            forward_batch.extend_seq_lens, forward_batch.out_cache_loc,
            prefix_lens_cpu=getattr(forward_batch, "extend_prefix_lens_cpu", None),
            extend_lens_cpu=getattr(forward_batch, "extend_seq_lens_cpu", None),
            page_size=self.page_size,
        )
        plan = self._for_pool(plan)
        window = self._plan_window_extend(forward_batch, plan) if self.window_left >= 0 else None
        return ForwardMetadata(extend=plan, window_extend=window)

    def _swa_write_loc(self, forward_batch: "ForwardBatch", graph: bool) -> Optional[torch.Tensor]:
        """The new tokens' slots in a hybrid SWA pool's windowed sub-pool, once per forward batch
        for every layer (into a fixed buffer under CUDA graphs); None for one pool, or for a
        hybrid pool without a mapping (the first layer then says why: _swa_slot_map)."""
        mapping = getattr(self.token_to_kv_pool, "full_to_swa_index_mapping", None) if self.hybrid_swa else None
        loc = forward_batch.out_cache_loc
        if mapping is None or loc is None:
            return None
        swa_loc = mapping[loc.to(torch.int64)]
        if graph and self._swa_loc_buffer is not None:
            fixed = self._swa_loc_buffer[: swa_loc.shape[0]]
            fixed.copy_(swa_loc)
            return fixed
        return swa_loc

    def init_forward_metadata(self, forward_batch: "ForwardBatch"):
        """Eager path: one plan per forward batch, shared by all layers."""
        self.forward_metadata = self._build_metadata(forward_batch)
        self.forward_metadata.swa_loc = self._swa_write_loc(forward_batch, graph=False)

    # ----------------------------------------------------------- CUDA graphs
    def init_cuda_graph_state(self, max_bs: int, max_num_tokens: int):
        self._verify_builder().init_cuda_graph_state(max_bs)  # fixed draft-mask buffers, made per width
        if self.device.type != "cuda":
            self._graph = _GraphBuffers(max_bs, self.device)
            return
        if config.impl_mode() == "reference":
            raise UnsupportedFeatureError("CUDA-graph decode with FLASHCORE_IMPL=reference",
                                          "launch with --disable-cuda-graph")
        self._decode_planner()  # allocated before capture: replays read its buffers
        if self.hybrid_swa:
            self._swa_loc_buffer = torch.zeros(max_num_tokens, dtype=torch.int64, device=self.device)
        if self.window_left >= 0:  # the window table's fixed buffers, and its planner
            width = window_width(self.window_left, self.req_to_token_pool.req_to_token.shape[1])
            self._window_buffers = (
                torch.zeros(max_bs, width, dtype=self.req_to_token_pool.req_to_token.dtype, device=self.device),
                torch.zeros(max_bs, dtype=torch.int64, device=self.device),
                torch.arange(max_bs, device=self.device))
            self._window_decode_planner()

    def init_forward_metadata_out_graph(self, forward_batch: "ForwardBatch", in_capture: bool = False):
        """Before capture and before each replay: the batch's plan (GPU) or rows (CPU) into the
        fixed buffers the captured launch reads."""
        if self._graph is None and self._planner is None:
            raise RuntimeError("init_cuda_graph_state must run before CUDA-graph capture")
        mode = forward_batch.forward_mode
        if is_target_verify(mode) or is_draft_extend(mode):
            self._check_batch(forward_batch)
            self.forward_metadata = ForwardMetadata(verify=self._verify_builder().plan(forward_batch, graph=True),
                                                    swa_loc=self._swa_write_loc(forward_batch, graph=True))
            return
        if not mode.is_decode_or_idle():
            raise UnsupportedFeatureError("CUDA-graph capture of extend batches",
                                          "leave piecewise CUDA graphs off")
        meta = self._build_metadata(forward_batch, graph=True)
        if meta.planner is None:
            meta = self._graph.load(meta)
        meta.swa_loc = self._swa_write_loc(forward_batch, graph=True)
        self.forward_metadata = meta

    def init_forward_metadata_in_graph(self, forward_batch: "ForwardBatch"):
        pass  # everything is prepared outside the graph

    def update_verify_buffers_to_fill_after_draft(self, spec_info, cuda_graph_bs: Optional[int]):
        """SGLang's overlap plan stream plans a verify replay before the draft has written its
        tree mask; this reloads the draft mask into the replay's fixed buffer. An eager verify is
        planned later, from the final mask, so it needs nothing here."""
        meta = self.forward_metadata
        if cuda_graph_bs is not None and meta is not None and meta.verify is not None:
            VerifyMetadataBuilder.refill_draft_mask(meta.verify, spec_info)

    def get_cuda_graph_seq_len_fill_value(self):
        return 1  # padded requests read one token, so no row is empty

    # --------------------------------------------------------------- forward
    def _kv_buffers(self, layer):
        return (
            self.token_to_kv_pool.get_key_buffer(layer.layer_id),
            self.token_to_kv_pool.get_value_buffer(layer.layer_id),
        )

    def _kv_scales(self, layer) -> tuple:
        """(k_scale, v_scale) the pool's values are multiplied by: the checkpoint's for an FP8
        pool (1.0 when it has none), as SGLang's pool divided them out when storing."""
        if not self.fp8_kv or getattr(layer, "k_scale", None) is None:
            return 1.0, 1.0
        return float(layer.k_scale_float or 1.0), float(layer.v_scale_float or 1.0)

    def _swa_slot_map(self) -> Optional[torch.Tensor]:
        """The hybrid SWA pool's full -> SWA slot mapping (None for one pool). SGLang's unified
        memory pool (--enable-unified-memory) has none: its reads go through virtual ids."""
        if not self.hybrid_swa:
            return None
        mapping = getattr(self.token_to_kv_pool, "full_to_swa_index_mapping", None)
        if mapping is None:
            raise UnsupportedFeatureError("SGLang's unified memory pool (virtual KV ids)",
                                          "launch without --enable-unified-memory")
        return mapping

    def _store_kv(self, layer, forward_batch, k, v, save_kv_cache: bool) -> None:
        if not (save_kv_cache and k is not None and v is not None):
            return
        loc = forward_batch.out_cache_loc
        if self._swa_slot_map() is not None:  # the pool stores windowed layers at their SWA slots, which we pass
            from sglang.srt.mem_cache.memory_pool import KVWriteLoc

            loc = KVWriteLoc(loc, self.forward_metadata.swa_loc)
        if self.fp8_kv and getattr(layer, "k_scale", None) is not None:
            # SGLang's pool divides by the scales in place; the extend still reads the new k/v
            self.token_to_kv_pool.set_kv_buffer(layer, loc, k.clone(), v.clone(), layer.k_scale, layer.v_scale)
        else:
            self.token_to_kv_pool.set_kv_buffer(layer, loc, k, v)

    @staticmethod
    def _encoder_only(layer) -> bool:
        """An embedding model's bidirectional layer (SGLang's AttentionType.ENCODER_ONLY)."""
        return getattr(getattr(layer, "attn_type", None), "name", "") == "ENCODER_ONLY"

    @staticmethod
    def _with_sinks(out, lse, sinks):
        """gpt-oss-style layers pass ``sinks`` (one logit per query head): sinks.py."""
        return out if sinks is None else apply_sinks(out, lse, sinks)[0]

    def forward_decode(self, q, k, v, layer, forward_batch, save_kv_cache: bool = True, sinks=None, **kwargs):
        self._check_layer(layer)
        if self._encoder_only(layer):
            raise UnsupportedFeatureError("decode steps of an encoder-only layer", "embedding models only prefill")
        self._store_kv(layer, forward_batch, k, v, save_kv_cache)
        meta = self.forward_metadata
        q3 = q.reshape(-1, layer.tp_q_head_num, layer.qk_head_dim)
        k_buf, v_buf = self._kv_buffers(layer)
        k_scale, v_scale = self._kv_scales(layer)
        window = _layer_window(layer)
        planner = meta.window_planner if window >= 0 else meta.planner
        softcap = _layer_softcap(layer)
        if planner is not None:
            out, lse = planner.run(q3, k_buf, v_buf, layer.scaling, self.page_size, k_scale, v_scale, softcap)
        else:  # CPU: the float32 reference over the table (a window's slots, mapped into a hybrid SWA pool)
            table, rows, lens = self.req_to_token_pool.req_to_token, meta.req_pool_indices, meta.seq_lens
            if window >= 0:
                table, lens = window_table(table, rows, lens, window, slot_map=self._swa_slot_map())
                rows = torch.arange(lens.shape[0], device=lens.device)
            out, lse = paged_decode_table(
                q3, k_buf, v_buf, table, rows, lens, page_size=self.page_size, softmax_scale=layer.scaling,
                chunk_tokens=self.chunk_tokens, check_bounds=False, k_scale=k_scale, v_scale=v_scale,
                softcap=softcap,
            )
        return self._with_sinks(out, lse, sinks).reshape(-1, layer.tp_q_head_num * layer.v_head_dim)

    def forward_extend(self, q, k, v, layer, forward_batch, save_kv_cache: bool = True, sinks=None, **kwargs):
        self._check_layer(layer)
        self._store_kv(layer, forward_batch, k, v, save_kv_cache)
        meta = self.forward_metadata
        k_buf, v_buf = self._kv_buffers(layer)
        q3 = q.reshape(-1, layer.tp_q_head_num, layer.qk_head_dim)
        k_new = v_new = None
        if k is not None and v is not None:
            k_new = k.reshape(-1, layer.tp_k_head_num, layer.qk_head_dim)
            v_new = v.reshape(-1, layer.tp_v_head_num, layer.v_head_dim)
        if meta.verify is not None:  # target verify, or a draft extend replayed from a CUDA graph
            k_scale, v_scale = self._kv_scales(layer)
            out, lse = verify_attention(q3, k_new, v_new, k_buf, v_buf, self.req_to_token_pool.req_to_token,
                                        meta.verify, layer.scaling, page_size=self.page_size, k_scale=k_scale,
                                        v_scale=v_scale, out_cache_loc=forward_batch.out_cache_loc,
                                        softcap=_layer_softcap(layer), window=_layer_window(layer) >= 0)
            return self._with_sinks(out, lse, sinks).reshape(-1, layer.tp_q_head_num * layer.v_head_dim)
        # stored just now, or (k is None) the model stored them itself; over an FP8 pool the new
        # tokens attend with their unquantized K/V, as in SGLang's other backends
        in_cache = (save_kv_cache and not self.fp8_kv) or k_new is None
        k_scale, v_scale = self._kv_scales(layer)
        window = _layer_window(layer)
        plan = meta.window_extend if window >= 0 else meta.extend
        new_loc = meta.swa_loc if window >= 0 and self.hybrid_swa else forward_batch.out_cache_loc
        out, lse = extend_attention(q3, k_new, v_new, k_buf, v_buf, plan, layer.scaling,
                                    new_kv_in_cache=in_cache, out_cache_loc=new_loc,
                                    k_scale=k_scale, v_scale=v_scale, causal=not self._encoder_only(layer),
                                    window_left=window, softcap=_layer_softcap(layer))
        return self._with_sinks(out, lse, sinks).reshape(-1, layer.tp_q_head_num * layer.v_head_dim)

    def support_triton(self):
        return False
