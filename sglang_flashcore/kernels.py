"""The CUDA side of the ops: the only module that calls into the compiled extension.

It registers the CUDA implementations of ``flashcore::attention`` and ``flashcore::paged_prefill``
with ``torch.library`` (the ops' default implementation, the float32 reference, serves every other
device), and wraps the decode planner's and decode kernel's entry points for ``decode.py``.
Each wrapper checks what its kernel supports and, for anything else, raises an error that names
the argument and suggests ``FLASHCORE_IMPL=reference``.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch

from . import _jit, config, ops
from .heuristics import DECODE_HEAD_DIMS, DENSE_HEAD_DIMS, KERNEL_DTYPES, can_page, head_dims_text

Tensor = torch.Tensor
_HINT = "set FLASHCORE_IMPL=reference to run the float32 reference on the GPU"


def extension():
    """The compiled module (built on first use; a clear ``KernelBuildError`` if it cannot be)."""
    return _jit.load()


def check_kernel_input(q: Tensor, what: str, head_dims: Sequence[int]) -> None:
    """q's dtype and head dim are ones the CUDA ``what`` kernel computes."""
    if q.dtype not in KERNEL_DTYPES:
        raise TypeError(f"q: the CUDA {what} kernel takes float16 or bfloat16, got {q.dtype}; {_HINT}")
    if q.shape[-1] not in head_dims:
        raise ValueError(f"q: the CUDA {what} kernel supports head dims {head_dims_text(head_dims)}, "
                         f"got {q.shape[-1]}; {_HINT}")


# ------------------------------------------------------------------------------ dense
_FIXED_OFFSETS: Dict[Tuple[int, int, torch.device], Tensor] = {}
_FIXED_OFFSETS_MAX = 256  # (batch, length, device) keys kept, 1 KB each at most


def _fixed_offsets(batch: int, length: int, device: torch.device) -> Tensor:
    """[0, length, 2 length, ..., batch x length] as int32 on ``device``: the varlen kernel's view
    of a fixed-length batch. Kept per (batch, length, device), so that a [B, S, H, D] call queues no
    GPU work of its own before the kernel. Not kept while a CUDA graph is being captured: its
    memory belongs to the graph. Never evicted (a captured graph may read one); past the cap, new
    shapes build theirs each call."""
    key = (batch, length, device)
    offsets = _FIXED_OFFSETS.get(key)
    if offsets is None:
        offsets = torch.arange(batch + 1, device=device, dtype=torch.int32) * length
        capturing = device.type == "cuda" and torch.cuda.is_current_stream_capturing()
        if len(_FIXED_OFFSETS) < _FIXED_OFFSETS_MAX and not capturing:
            _FIXED_OFFSETS[key] = offsets
    return offsets


def _rows_16b(t: Tensor) -> Tensor:
    """``t`` itself when TMA can read it (unit last stride, 16-byte row strides), else a copy."""
    if t.stride(-1) == 1 and all(s % 8 == 0 for s in t.stride()[:-1]):
        return t
    return t.contiguous()


def attention_cuda(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Optional[Tensor], cu_seqlens_k: Optional[Tensor],
                   max_seqlen_q: int, max_seqlen_k: int, causal: bool, softmax_scale: float,
                   window_left: int = -1, softcap: float = 0.0) -> Tuple[Tensor, Tensor]:
    """The dense kernel on validated inputs (``api.attention`` checked them)."""
    if config.impl_mode() == "reference":
        return ops.attention_reference(q, k, v, cu_seqlens_q, cu_seqlens_k, causal, softmax_scale, window_left,
                                       softcap)
    check_kernel_input(q, "dense attention", DENSE_HEAD_DIMS)
    batched = cu_seqlens_q is None
    if batched:  # the kernel is varlen: fixed lengths become offsets
        b, sq, sk = q.shape[0], q.shape[1], k.shape[1]
        cu_seqlens_q, cu_seqlens_k = _fixed_offsets(b, sq, q.device), _fixed_offsets(b, sk, q.device)
        q, k, v = q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1)
    out, lse = extension().attention_fwd(_rows_16b(q), _rows_16b(k), _rows_16b(v), cu_seqlens_q, cu_seqlens_k,
                                         max_seqlen_q, causal, softmax_scale, window_left, softcap)
    if batched:
        out = out.view(b, sq, *out.shape[1:])
        lse = lse.view(b, sq, lse.shape[-1])
    return out, lse


def paged_prefill_cuda(q, k, v, cu_seqlens_q, cu_seqlens_k, k_cache, v_cache, key_pages, key_page_offsets,
                       page_size, max_seqlen_q, causal, softmax_scale, grid_order=None, window_left=-1, softcap=0.0):
    if config.impl_mode() == "reference":
        return ops.paged_prefill_reference(q, k, v, cu_seqlens_q, cu_seqlens_k, k_cache, v_cache, key_pages,
                                           key_page_offsets, page_size, causal, softmax_scale, window_left, softcap)
    check_kernel_input(q, "dense attention", DENSE_HEAD_DIMS)
    if not can_page(page_size):
        raise ValueError(f"page_size: the paged dense kernel reads pages of a multiple of 8 tokens, got {page_size}")
    return extension().attention_fwd_paged(q, k, v, cu_seqlens_q, cu_seqlens_k, k_cache, v_cache, key_pages,
                                           key_page_offsets, page_size, max_seqlen_q, causal, softmax_scale,
                                           window_left, softcap, grid_order)


torch.library.register_kernel("flashcore::attention", "cuda", attention_cuda)
torch.library.register_kernel("flashcore::paged_prefill", "cuda", paged_prefill_cuda)


# ----------------------------------------------------------------------------- decode
def check_device(device: torch.device) -> None:
    """A Hopper GPU and nvcc are here (``KernelBuildError`` with the fix otherwise)."""
    _jit.check_device(device)


def planner_sizes(max_batch: int, max_chunks: int) -> Tuple[int, int, int]:
    """(int32 words, int64 hash slots, partial results) a planner workspace needs."""
    mod = extension()
    return (mod.table_plan_ints(max_batch, max_chunks), mod.table_plan_hash_size(max_chunks),
            mod.table_plan_partials(max_chunks))


def plan_decode_table(req_to_token: Tensor, req_pool_indices: Tensor, seq_lens: Tensor, ints: Tensor, hash_: Tensor,
                      max_batch: int, max_chunks: int, group: int, fixed_chunk: int, min_chunk: int,
                      max_auto_chunk: int, target_chunks: int, num_kv_heads: int, grid_work: int, split_parts: int,
                      wave_max_chunk: int, share: bool = True) -> None:
    """Plans a decode step into the workspace ``ints``/``hash_`` (five kernels, no host sync);
    ``share=False``: no chunk is grouped with another request's."""
    extension().plan_decode_table(req_to_token, req_pool_indices, seq_lens, ints, hash_, max_batch, max_chunks,
                                  group, fixed_chunk, min_chunk, max_auto_chunk, target_chunks, num_kv_heads,
                                  grid_work, split_parts, wave_max_chunk, share)


def run_decode_table(q: Tensor, k_cache: Tensor, v_cache: Tensor, req_to_token: Tensor, ints: Tensor, hash_: Tensor,
                     max_batch: int, max_chunks: int, page_size: int, softmax_scale: float, partial_o: Tensor,
                     partial_lse: Tensor, grid_work: int, k_scale: float = 1.0,
                     v_scale: float = 1.0, fixed_merge: bool = False, softcap: float = 0.0) -> Tuple[Tensor, Tensor]:
    """The decode kernel and the merge over the plan in the workspace (CUDA-graph capturable).
    The pools are in q's dtype or FP8, holding K / k_scale and V / v_scale; ``softcap`` > 0 caps
    each scaled score at softcap * tanh(s / softcap)."""
    check_kernel_input(q, "decode", DECODE_HEAD_DIMS)
    return extension().paged_decode_table(q, k_cache, v_cache, req_to_token, ints, hash_, max_batch, max_chunks,
                                          page_size, softmax_scale, partial_o, partial_lse, grid_work, k_scale,
                                          v_scale, fixed_merge, softcap)


def draft_merge(q: Tensor, k: Tensor, v: Tensor, draft_mask: Tensor, out_ctx: Tensor, lse_ctx: Tensor,
                softmax_scale: float, softcap: float = 0.0) -> Tuple[Tensor, Tensor]:
    """Speculative verify's draft part in one launch: each draft token's attention over the draft
    tokens its ``draft_mask`` row allows, folded into the context part's ``(out_ctx, lse_ctx)``
    (the decode kernel's). Returns ``(out [B*N, Hq, D] in q's dtype, lse [B*N, Hq] float32)``,
    what ``merge_states_ref(out_ctx, lse_ctx, *draft_attention(...))`` computes."""
    check_kernel_input(q, "verify", DECODE_HEAD_DIMS)
    return tuple(extension().draft_merge(q, k, v, draft_mask.contiguous(), out_ctx.contiguous(),
                                         lse_ctx.contiguous(), float(softmax_scale), float(softcap)))


def plan_views(ints: Tensor, hash_: Tensor, max_batch: int, max_chunks: int) -> Dict[str, Tensor]:
    """Named views of a planner workspace (for reports and tests)."""
    return dict(extension().table_plan_views(ints, hash_, max_batch, max_chunks))


__all__ = ["extension", "check_kernel_input", "attention_cuda", "paged_prefill_cuda", "check_device",
           "planner_sizes", "plan_decode_table", "run_decode_table", "draft_merge", "plan_views"]
