"""The public functions: validate inputs, then call the ``flashcore::`` ops."""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch

from . import ops
from .checks import (
    ATTENTION_DTYPES,
    check_cu_seqlens,
    check_head_dim,
    check_heads,
    check_kv_scale,
    check_len,
    check_nonnegative_int,
    check_pools,
    check_positive_int,
    check_same,
    check_softcap,
    check_tensor,
    check_window,
    reads_values,
    softmax_scale_for,
)
from .decode import paged_decode_table
from .kernels import attention_cuda
from .layout import PagedLayout

Tensor = torch.Tensor

__all__ = ["attention", "paged_decode", "paged_extend", "merge_states"]


def _check_qkv_like(q_name, q, names_tensors, token_dims: int):
    """Same dtype and device as q, same head dim, KV heads dividing query heads."""
    check_tensor(q_name, q, ndim=token_dims + 2, dtypes=ATTENTION_DTYPES, last_dim_contiguous=True)
    head_dim = q.shape[-1]
    check_head_dim(q_name, head_dim)
    for name, t in names_tensors:
        check_tensor(name, t, ndim=token_dims + 2, dtypes=(q.dtype,), device=q.device,
                     last_dim_contiguous=True)
        check_same(q_name, head_dim, name, t.shape[-1], "head dim")
    return head_dim


def _check_layout_values(layout: PagedLayout, num_slots: int, check_bounds: bool) -> None:
    """Offsets, runs and slots of the layout (``PagedLayout.check``): always on CPU, on CUDA
    with ``check_bounds`` (device syncs)."""
    if reads_values(check_bounds, layout.row_offsets):
        layout.check(num_slots)


def _max_seqlen(name: str, cu: Tensor, given: Optional[int], total: int) -> int:
    """The longest segment of the offsets ``cu`` (``total`` tokens in all): computed on the host,
    or the caller's bound, checked when the values can be read (a bound below it would make the
    kernels skip rows). While torch.compile traces, nothing is read: the caller's bound is trusted
    and without one the total serves (correct, but the kernel then walks more empty tiles)."""
    if given is not None:
        check_nonnegative_int(name, given)
    if not reads_values(True, cu):
        return total if given is None else given
    longest = int((cu[1:] - cu[:-1]).max()) if cu.numel() > 1 else 0
    if given is None:
        return longest
    if given < longest:
        raise ValueError(f"{name}: {given} is below the longest sequence of the batch, {longest}")
    return given


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool = False,
    softmax_scale: Optional[float] = None,
    cu_seqlens_q: Optional[Tensor] = None,
    cu_seqlens_k: Optional[Tensor] = None,
    max_seqlen_q: Optional[int] = None,
    max_seqlen_k: Optional[int] = None,
    window_left: int = -1,
    softcap: float = 0.0,
) -> Tuple[Tensor, Tensor]:
    """Dense multi-head attention with GQA/MQA, causal masking and the LSE.

    Batched: q [B, Sq, Hq, D], k/v [B, Sk, Hkv, D]. Ragged (varlen): q [Tq, Hq, D],
    k/v [Tk, Hkv, D] with ``cu_seqlens_q``/``cu_seqlens_k`` [B+1] int32 offsets.
    Causal masks are aligned bottom-right (query i of Sq sees keys j <= i + Sk - Sq);
    ``window_left`` >= 0 (causal only) is a sliding window: query i then sees only keys
    j >= i + Sk - Sq - window_left (SGLang's ``sliding_window_size``, FlashAttention's
    ``window_size[0]``). ``softcap`` > 0: each scaled score s becomes ``softcap * tanh(s / softcap)``
    before the softmax (SGLang's ``logit_cap``, Gemma 2's ``attn_logit_softcapping``).

    Returns ``(out, lse)``: out like q (q's dtype); lse float32, shaped like q without D.
    CUDA tensors on Hopper run our TMA/WGMMA kernel once it is built (``kernels.py``); CPU
    tensors, and CUDA tensors with ``FLASHCORE_IMPL=reference``, the float32 reference.
    """
    ragged = cu_seqlens_q is not None or cu_seqlens_k is not None
    token_dims = 1 if ragged else 2
    head_dim = _check_qkv_like("q", q, [("k", k), ("v", v)], token_dims)
    check_same("k", k.shape[-2], "v", v.shape[-2], "KV heads")
    check_same("k", k.shape[-3], "v", v.shape[-3], "number of keys")
    check_heads("q", q.shape[-2], "k", k.shape[-2])
    if ragged:
        if cu_seqlens_q is None or cu_seqlens_k is None:
            raise ValueError("cu_seqlens_q and cu_seqlens_k: pass both for ragged batches, or neither")
        check_cu_seqlens("cu_seqlens_q", cu_seqlens_q, q.shape[0], q.device)
        check_cu_seqlens("cu_seqlens_k", cu_seqlens_k, k.shape[0], q.device)
        check_len("cu_seqlens_k", cu_seqlens_k, cu_seqlens_q.shape[0], "B+1, like cu_seqlens_q")
        max_seqlen_q = _max_seqlen("max_seqlen_q", cu_seqlens_q, max_seqlen_q, q.shape[0])
        max_seqlen_k = _max_seqlen("max_seqlen_k", cu_seqlens_k, max_seqlen_k, k.shape[0])
        cu_seqlens_q, cu_seqlens_k = cu_seqlens_q.to(torch.int32), cu_seqlens_k.to(torch.int32)
    else:
        check_same("q", q.shape[0], "k", k.shape[0], "batch size")
        check_same("q", q.shape[0], "v", v.shape[0], "batch size")
        max_seqlen_q, max_seqlen_k = q.shape[1], k.shape[1]
    check_window("window_left", window_left, bool(causal))
    args = (q, k, v, cu_seqlens_q, cu_seqlens_k, int(max_seqlen_q), int(max_seqlen_k), bool(causal),
            softmax_scale_for(softmax_scale, head_dim), window_left, check_softcap("softcap", softcap))
    if q.is_cuda and not torch.compiler.is_compiling():
        # eager CUDA calls skip the custom op's dispatch (tens of microseconds of host time per call);
        # the kernel and its result are the op's own
        return attention_cuda(*args)
    return ops.attention_op(*args)


def _check_layout(layout: PagedLayout, q: Tensor, batch: int) -> None:
    if not isinstance(layout, PagedLayout):
        raise TypeError(f"layout: expected a PagedLayout, got {type(layout).__name__}")
    if layout.device != q.device:
        raise ValueError(f"layout: expected tensors on {q.device} (like q), got {layout.device}")
    check_same("q", batch, "layout", layout.batch_size, "number of requests")


def paged_decode(
    q: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    layout: PagedLayout,
    *,
    softmax_scale: Optional[float] = None,
    chunk_tokens: Optional[int] = None,
    check_bounds: bool = True,
    k_scale: Union[float, Tensor] = 1.0,
    v_scale: Union[float, Tensor] = 1.0,
) -> Tuple[Tensor, Tensor]:
    """Decode attention: one query token per request over the KV pages of its layout row.

    Args:
        q: [B, Hq, D].
        k_cache, v_cache: SGLang's pool [slots, Hkv, D] (slot = page * page_size + offset),
            or head-major pages [num_pages, Hkv, page_size, D].
        layout: from ``from_sglang`` or ``build_layout``; B rows.
        chunk_tokens: a fixed split-KV chunk; default: the planner's automatic chunk.
        check_bounds: check the layout's offsets and runs, and that every run lies inside the pool
            (a few device syncs). Without it, CUDA inputs are trusted; CPU ones are always checked.
        k_scale, v_scale: FP8 pools (``float8_e4m3fn``, ``float8_e5m2``) hold K / k_scale and
            V / v_scale; a float or a one-element tensor.

    Returns ``(out [B, Hq, D], lse [B, Hq] float32)``; an empty row gives 0 and -inf.
    The layout runs as a page table (``PagedLayout.page_table()``, built once per layout) through
    the same GPU planner as ``paged_decode_table`` and the SGLang backend, so chunks that several
    requests read are loaded once per step.
    """
    check_tensor("q", q, ndim=3, dtypes=ATTENTION_DTYPES, last_dim_contiguous=True)
    check_head_dim("q", q.shape[-1])
    _check_layout(layout, q, q.shape[0])
    num_slots = check_pools(k_cache, v_cache, q, layout.page_size, allow_fp8=True)
    # both pool layouts keep the KV heads in dim 1
    check_heads("q", q.shape[1], "k_cache", k_cache.shape[1])
    if chunk_tokens is not None:
        check_positive_int("chunk_tokens", chunk_tokens)
    _check_layout_values(layout, num_slots, check_bounds)
    req_to_token, rows, seq_lens = layout.page_table()
    return paged_decode_table(q, k_cache, v_cache, req_to_token, rows, seq_lens, page_size=layout.page_size,
                              softmax_scale=softmax_scale, chunk_tokens=chunk_tokens, check_bounds=False,
                              k_scale=k_scale, v_scale=v_scale)


def paged_extend(
    q: Tensor,
    k_new: Tensor,
    v_new: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    prefix_layout: PagedLayout,
    cu_seqlens_q: Tensor,
    *,
    softmax_scale: Optional[float] = None,
    max_seqlen_q: Optional[int] = None,
    check_bounds: bool = True,
    k_scale: Union[float, Tensor] = 1.0,
    v_scale: Union[float, Tensor] = 1.0,
) -> Tuple[Tensor, Tensor]:
    """Extend (prefill over a cached prefix).

    Request b's new tokens ``q[cu_seqlens_q[b]:cu_seqlens_q[b+1]]`` ([Tq, Hq, D]) attend to
    every token of its cached prefix (row b of ``prefix_layout``, pages in ``k_cache``/``v_cache``)
    and causally to the request's new keys ``k_new``/``v_new`` ([Tq, Hkv, D]). An FP8 pool
    (``float8_e4m3fn``, ``float8_e5m2``) holds K / k_scale and V / v_scale; the new keys are used
    as they are.

    Returns ``(out [Tq, Hq, D], lse [Tq, Hq] float32)``. On a Hopper GPU this runs the SGLang
    backend's path: the prefix as a page table, an ``ExtendPlan`` over it (whole prefix pages read
    in place by the dense kernel when the pool is SGLang's and the page size a multiple of 8), and
    the dense kernel with bottom-right causal masking.
    """
    head_dim = _check_qkv_like("q", q, [("k_new", k_new), ("v_new", v_new)], 1)
    check_same("q", q.shape[0], "k_new", k_new.shape[0], "number of new tokens")
    check_same("k_new", k_new.shape[0], "v_new", v_new.shape[0], "number of new tokens")
    check_same("k_new", k_new.shape[1], "v_new", v_new.shape[1], "KV heads")
    check_heads("q", q.shape[1], "k_new", k_new.shape[1])
    check_cu_seqlens("cu_seqlens_q", cu_seqlens_q, q.shape[0], q.device)
    _check_layout(prefix_layout, q, cu_seqlens_q.shape[0] - 1)
    num_slots = check_pools(k_cache, v_cache, q, prefix_layout.page_size, allow_fp8=True)
    check_same("k_new", k_new.shape[1], "k_cache", k_cache.shape[1], "KV heads")
    k_scale, v_scale = check_kv_scale("k_scale", k_scale), check_kv_scale("v_scale", v_scale)
    _check_layout_values(prefix_layout, num_slots, check_bounds)
    max_seqlen_q = _max_seqlen("max_seqlen_q", cu_seqlens_q, max_seqlen_q, q.shape[0])
    L = prefix_layout
    return ops.paged_extend_op(
        q, k_new, v_new, k_cache, v_cache, L.row_offsets, L.cols, L.page_offsets, L.counts, L.seq_lens,
        cu_seqlens_q.to(torch.int32), int(max_seqlen_q), L.page_size, softmax_scale_for(softmax_scale, head_dim),
        k_scale, v_scale,
    )


def merge_states(v_a: Tensor, s_a: Tensor, v_b: Tensor, s_b: Tensor) -> Tuple[Tensor, Tensor]:
    """Merges two partial attention results over disjoint key sets by their LSEs.

    v_a, v_b: [..., H, D] normalised partial outputs; s_a, s_b: [..., H] float32 LSEs
    (-inf for an empty part). Returns ``(v [..., H, D] in v_a's dtype, s [..., H] float32)``.
    """
    check_tensor("v_a", v_a, dtypes=ATTENTION_DTYPES)
    if v_a.dim() < 2:
        raise ValueError(f"v_a: expected [..., H, D] (at least 2 dimensions), got shape {tuple(v_a.shape)}")
    check_tensor("v_b", v_b, dtypes=(v_a.dtype,), device=v_a.device)
    if v_a.shape != v_b.shape:
        raise ValueError(f"v_a and v_b: expected the same shape, got {tuple(v_a.shape)} and {tuple(v_b.shape)}")
    for name, s in (("s_a", s_a), ("s_b", s_b)):
        check_tensor(name, s, dtypes=(torch.float32,), device=v_a.device)
        if s.shape != v_a.shape[:-1]:
            raise ValueError(f"{name}: expected shape {tuple(v_a.shape[:-1])} (v without its last dim), got {tuple(s.shape)}")
    return ops.merge_states_op(v_a, s_a, v_b, s_b)
