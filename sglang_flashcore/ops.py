"""``torch.library`` custom ops (``flashcore::*``): their schemas, fake implementations and the
float32 reference as the default implementation.

The CUDA implementations are registered per device key by the modules that own them
(``kernels.py``: attention, paged_prefill; ``decode.py``: paged_decode_table; ``extend.py``:
paged_extend), so CPU tensors run the reference, CUDA tensors our kernels, and
``FLASHCORE_IMPL=reference`` makes the CUDA implementations call the reference too. Each op has a
fake implementation, so ``torch.compile`` and CUDA-graph capture see output shapes without
running anything.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from . import reference
from .layout import PagedLayout, from_sglang

Tensor = torch.Tensor


def _outputs_like(q: Tensor) -> Tuple[Tensor, Tensor]:
    return torch.empty_like(q), q.new_empty(q.shape[:-1], dtype=torch.float32)


def _as_outputs(q: Tensor, out: Tensor, lse: Tensor) -> Tuple[Tensor, Tensor]:
    """The reference's compute-dtype results in the ops' output dtypes."""
    return out.to(q.dtype), lse.float()


def layout_view(row_offsets, cols, page_offsets, counts, page_size, seq_lens=None) -> PagedLayout:
    """A PagedLayout from an op's flattened arguments, with the fields readers of token slots need."""
    empty = cols.new_zeros(0)
    return PagedLayout(page_size, 0, row_offsets, cols, page_offsets, counts, empty, empty,
                       empty if seq_lens is None else seq_lens)


# -------------------------------------------------------------------------- attention
def attention_reference(q, k, v, cu_seqlens_q, cu_seqlens_k, causal, softmax_scale, window_left=-1, softcap=0.0):
    out, lse = reference.attention_ref(q, k, v, causal=causal, softmax_scale=softmax_scale,
                                       cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k, window_left=window_left,
                                       softcap=softcap)
    return _as_outputs(q, out, lse)


@torch.library.custom_op("flashcore::attention", mutates_args=())
def attention_op(
    q: Tensor, k: Tensor, v: Tensor,
    cu_seqlens_q: Optional[Tensor], cu_seqlens_k: Optional[Tensor],
    max_seqlen_q: int, max_seqlen_k: int, causal: bool, softmax_scale: float, window_left: int = -1,
    softcap: float = 0.0,
) -> Tuple[Tensor, Tensor]:
    """``window_left`` >= 0: causal sliding window (query at position i sees keys i - window_left .. i);
    ``softcap`` > 0: each scaled score s becomes softcap * tanh(s / softcap)."""
    return attention_reference(q, k, v, cu_seqlens_q, cu_seqlens_k, causal, softmax_scale, window_left, softcap)


@attention_op.register_fake
def _(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, softmax_scale, window_left=-1,
      softcap=0.0):
    return _outputs_like(q)


# ---------------------------------------------------------------------- paged prefill
def paged_prefill_reference(q, k, v, cu_seqlens_q, cu_seqlens_k, k_cache, v_cache, key_pages, key_page_offsets,
                            page_size, causal, softmax_scale, window_left=-1, softcap=0.0):
    out, lse = reference.paged_prefill_ref(q, k, v, cu_seqlens_q, cu_seqlens_k, k_cache, v_cache, key_pages,
                                           key_page_offsets, page_size, causal, softmax_scale, window_left, softcap)
    return _as_outputs(q, out, lse)


@torch.library.custom_op("flashcore::paged_prefill", mutates_args=())
def paged_prefill_op(
    q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor,
    k_cache: Tensor, v_cache: Tensor, key_pages: Tensor, key_page_offsets: Tensor, page_size: int,
    max_seqlen_q: int, causal: bool, softmax_scale: float, grid_order: Optional[Tensor] = None,
    window_left: int = -1, softcap: float = 0.0,
) -> Tuple[Tensor, Tensor]:
    """Varlen attention whose request b attends to its whole pages of the pool [slots, Hkv, D]
    (read in place) followed by its packed k/v rows; ``grid_order``: the kernel's CTA order flag
    (see ``extend.ExtendPlan``); ``window_left``, ``softcap``: as for ``attention``."""
    return paged_prefill_reference(q, k, v, cu_seqlens_q, cu_seqlens_k, k_cache, v_cache, key_pages,
                                   key_page_offsets, page_size, causal, softmax_scale, window_left, softcap)


@paged_prefill_op.register_fake
def _(q, k, v, cu_seqlens_q, cu_seqlens_k, k_cache, v_cache, key_pages, key_page_offsets, page_size, max_seqlen_q,
      causal, softmax_scale, grid_order=None, window_left=-1, softcap=0.0):
    return _outputs_like(q)


# ------------------------------------------------------------------ paged decode table
def paged_decode_table_reference(q, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens, page_size,
                                 softmax_scale, k_scale=1.0, v_scale=1.0, softcap=0.0):
    # the reference indexes with these ids, so it checks them (no device sync on CPU) even where the
    # caller passed check_bounds=False: a bad id is a clear error, never a raw IndexError or a wrap of -1
    num_slots = k_cache.shape[0] * (page_size if k_cache.dim() == 4 else 1)
    layout = from_sglang(req_to_token, req_pool_indices, seq_lens, page_size, num_slots=num_slots)
    out, lse = reference.paged_decode_ref(q, k_cache, v_cache, layout, softmax_scale, k_scale, v_scale, softcap)
    return _as_outputs(q, out, lse)


@torch.library.custom_op("flashcore::paged_decode_table", mutates_args=())
def paged_decode_table_op(
    q: Tensor, k_cache: Tensor, v_cache: Tensor, req_to_token: Tensor, req_pool_indices: Tensor,
    seq_lens: Tensor, page_size: int, softmax_scale: float, chunk_tokens: int, k_scale: float = 1.0,
    v_scale: float = 1.0, softcap: float = 0.0,
) -> Tuple[Tensor, Tensor]:
    """Decode of request b over slots ``req_to_token[req_pool_indices[b], :seq_lens[b]]``;
    ``chunk_tokens`` 0: the planner's automatic chunk (the reference ignores it). The pools hold
    K / k_scale and V / v_scale (FP8 pools); ``softcap`` as for ``attention``."""
    return paged_decode_table_reference(q, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens, page_size,
                                        softmax_scale, k_scale, v_scale, softcap)


@paged_decode_table_op.register_fake
def _(q, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens, page_size, softmax_scale, chunk_tokens,
      k_scale=1.0, v_scale=1.0, softcap=0.0):
    return _outputs_like(q)


# ---------------------------------------------------------------------- paged extend
def paged_extend_reference(q, k_new, v_new, k_cache, v_cache, row_offsets, cols, page_offsets, counts, prefix_lens,
                           cu_seqlens_q, page_size, softmax_scale, k_scale=1.0, v_scale=1.0):
    layout = layout_view(row_offsets, cols, page_offsets, counts, page_size, prefix_lens)
    out, lse = reference.paged_extend_ref(q, k_new, v_new, k_cache, v_cache, layout, cu_seqlens_q, softmax_scale,
                                          k_scale, v_scale)
    return _as_outputs(q, out, lse)


@torch.library.custom_op("flashcore::paged_extend", mutates_args=())
def paged_extend_op(
    q: Tensor, k_new: Tensor, v_new: Tensor, k_cache: Tensor, v_cache: Tensor,
    row_offsets: Tensor, cols: Tensor, page_offsets: Tensor, counts: Tensor, prefix_lens: Tensor,
    cu_seqlens_q: Tensor, max_seqlen_q: int, page_size: int, softmax_scale: float, k_scale: float = 1.0,
    v_scale: float = 1.0,
) -> Tuple[Tensor, Tensor]:
    return paged_extend_reference(q, k_new, v_new, k_cache, v_cache, row_offsets, cols, page_offsets, counts,
                                  prefix_lens, cu_seqlens_q, page_size, softmax_scale, k_scale, v_scale)


@paged_extend_op.register_fake
def _(q, k_new, v_new, k_cache, v_cache, row_offsets, cols, page_offsets, counts, prefix_lens,
      cu_seqlens_q, max_seqlen_q, page_size, softmax_scale, k_scale=1.0, v_scale=1.0):
    return _outputs_like(q)


# ----------------------------------------------------------------------- merge states
@torch.library.custom_op("flashcore::merge_states", mutates_args=())
def merge_states_op(v_a: Tensor, s_a: Tensor, v_b: Tensor, s_b: Tensor) -> Tuple[Tensor, Tensor]:
    """The same torch ops on every device (a memory-bound elementwise merge)."""
    v, s = reference.merge_states_ref(v_a, s_a, v_b, s_b)
    return v.to(v_a.dtype), s.float()


@merge_states_op.register_fake
def _(v_a, s_a, v_b, s_b):
    return torch.empty_like(v_a), s_a.new_empty(s_a.shape, dtype=torch.float32)
