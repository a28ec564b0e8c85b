"""torch.library custom ops (``flashcore::*``) and their device dispatch.

Each op has a fake (meta) implementation, so ``torch.compile`` and CUDA-graph
capture see output shapes without running anything. The real implementation
picks a path per call:

* CPU tensors: the float32 reference (``reference.py``);
* CUDA tensors: our kernels from ``cuda/`` when one exists for the op (see
  ``kernels.py``); ops without a kernel yet run the reference on the GPU.

``FLASHCORE_IMPL=reference`` forces the reference everywhere (for debugging, or
on a GPU where the kernels cannot be built).
"""

from __future__ import annotations

import os
from typing import Callable, Dict, List, Optional, Tuple

import torch

from . import reference
from .layout import PagedLayout

Tensor = torch.Tensor

# name -> CUDA implementation with the same signature as the op; filled by kernels.py
CUDA_IMPLS: Dict[str, Callable] = {}


def impl_mode() -> str:
    mode = os.environ.get("FLASHCORE_IMPL", "auto").lower()
    if mode not in ("auto", "reference", "cuda"):
        raise ValueError(f"FLASHCORE_IMPL: expected auto, reference or cuda, got {mode!r}")
    return mode


def _cuda_impl(name: str, device: torch.device) -> Optional[Callable]:
    if device.type != "cuda" or impl_mode() == "reference":
        return None
    from . import kernels  # registers what is built; raises a clear error if it cannot build

    kernels.ensure_loaded()
    return CUDA_IMPLS.get(name)


def layout_view(row_offsets, cols, page_offsets, counts, page_size, seq_lens=None) -> PagedLayout:
    """A PagedLayout from an op's flattened arguments, with the fields readers of token slots need."""
    empty = cols.new_zeros(0)
    return PagedLayout(page_size, 0, row_offsets, cols, page_offsets, counts, empty, empty,
                       empty if seq_lens is None else seq_lens)


# ---------------------------------------------------------------- attention
@torch.library.custom_op("flashcore::attention", mutates_args=())
def attention_op(
    q: Tensor, k: Tensor, v: Tensor,
    cu_seqlens_q: Optional[Tensor], cu_seqlens_k: Optional[Tensor],
    max_seqlen_q: int, max_seqlen_k: int, causal: bool, softmax_scale: float,
) -> Tuple[Tensor, Tensor]:
    impl = _cuda_impl("attention", q.device)
    if impl is not None:
        return impl(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, softmax_scale)
    out, lse = reference.attention_ref(
        q, k, v, causal=causal, softmax_scale=softmax_scale,
        cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
    )
    return out.to(q.dtype), lse.float()


@attention_op.register_fake
def _(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, softmax_scale):
    return torch.empty_like(q), q.new_empty(q.shape[:-1], dtype=torch.float32)


# ------------------------------------------------------------ paged prefill
@torch.library.custom_op("flashcore::paged_prefill", mutates_args=())
def paged_prefill_op(
    q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor,
    k_cache: Tensor, v_cache: Tensor, key_pages: Tensor, key_page_offsets: Tensor, page_size: int,
    max_seqlen_q: int, causal: bool, softmax_scale: float, grid_order: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor]:
    """Varlen attention whose request b attends to its whole pages of the pool [slots, Hkv, D]
    (read in place) followed by its packed k/v rows; ``grid_order``: the kernel's CTA order flag
    (see ``reference.paged_prefill_ref`` and ``cuda/dense_fwd.cu``)."""
    impl = _cuda_impl("paged_prefill", q.device)
    if impl is not None:
        return impl(q, k, v, cu_seqlens_q, cu_seqlens_k, k_cache, v_cache, key_pages, key_page_offsets, page_size,
                    max_seqlen_q, causal, softmax_scale, grid_order)
    out, lse = reference.paged_prefill_ref(q, k, v, cu_seqlens_q, cu_seqlens_k, k_cache, v_cache, key_pages,
                                           key_page_offsets, page_size, causal, softmax_scale)
    return out.to(q.dtype), lse.float()


@paged_prefill_op.register_fake
def _(q, k, v, cu_seqlens_q, cu_seqlens_k, k_cache, v_cache, key_pages, key_page_offsets, page_size, max_seqlen_q,
      causal, softmax_scale, grid_order=None):
    return torch.empty_like(q), q.new_empty(q.shape[:-1], dtype=torch.float32)


# ------------------------------------------------------------- paged decode
@torch.library.custom_op("flashcore::paged_decode", mutates_args=())
def paged_decode_op(
    q: Tensor, k_cache: Tensor, v_cache: Tensor,
    row_offsets: Tensor, cols: Tensor, page_offsets: Tensor, counts: Tensor,
    plan: List[Tensor], plan_meta: List[int], page_size: int, softmax_scale: float,
) -> Tuple[Tensor, Tensor]:
    """``plan``/``plan_meta``: the SharingPlan tensors and numbers the kernel reads (see
    ``kernels.plan_tensors``); empty when the caller runs the reference."""
    impl = _cuda_impl("paged_decode", q.device)
    if impl is not None and plan:
        return impl(q, k_cache, v_cache, plan, plan_meta, page_size, softmax_scale)
    layout = layout_view(row_offsets, cols, page_offsets, counts, page_size)
    out, lse = reference.paged_decode_ref(q, k_cache, v_cache, layout, softmax_scale)
    return out.to(q.dtype), lse.float()


@paged_decode_op.register_fake
def _(q, k_cache, v_cache, row_offsets, cols, page_offsets, counts, plan, plan_meta, page_size, softmax_scale):
    return torch.empty_like(q), q.new_empty(q.shape[:-1], dtype=torch.float32)


# ------------------------------------------------------------- paged extend
@torch.library.custom_op("flashcore::paged_extend", mutates_args=())
def paged_extend_op(
    q: Tensor, k_new: Tensor, v_new: Tensor, k_cache: Tensor, v_cache: Tensor,
    row_offsets: Tensor, cols: Tensor, page_offsets: Tensor, counts: Tensor, prefix_lens: Tensor,
    cu_seqlens_q: Tensor, max_seqlen_q: int, page_size: int, softmax_scale: float,
) -> Tuple[Tensor, Tensor]:
    impl = _cuda_impl("paged_extend", q.device)
    if impl is not None:
        return impl(q, k_new, v_new, k_cache, v_cache, row_offsets, cols, page_offsets, counts,
                    prefix_lens, cu_seqlens_q, max_seqlen_q, page_size, softmax_scale)
    layout = layout_view(row_offsets, cols, page_offsets, counts, page_size, prefix_lens)
    out, lse = reference.paged_extend_ref(
        q, k_new, v_new, k_cache, v_cache, layout, cu_seqlens_q, softmax_scale
    )
    return out.to(q.dtype), lse.float()


@paged_extend_op.register_fake
def _(q, k_new, v_new, k_cache, v_cache, row_offsets, cols, page_offsets, counts, prefix_lens,
      cu_seqlens_q, max_seqlen_q, page_size, softmax_scale):
    return torch.empty_like(q), q.new_empty(q.shape[:-1], dtype=torch.float32)


# ------------------------------------------------------------- merge states
@torch.library.custom_op("flashcore::merge_states", mutates_args=())
def merge_states_op(v_a: Tensor, s_a: Tensor, v_b: Tensor, s_b: Tensor) -> Tuple[Tensor, Tensor]:
    impl = _cuda_impl("merge_states", v_a.device)
    if impl is not None:
        return impl(v_a, s_a, v_b, s_b)
    v, s = reference.merge_states_ref(v_a, s_a, v_b, s_b)
    return v.to(v_a.dtype), s.float()


@merge_states_op.register_fake
def _(v_a, s_a, v_b, s_b):
    return torch.empty_like(v_a), s_a.new_empty(s_a.shape, dtype=torch.float32)
