"""CUDA implementations of the ``flashcore::`` ops, registered in ``ops.CUDA_IMPLS``.

Each checks what its kernel supports and, for anything else, raises an error that names the
argument and suggests ``FLASHCORE_IMPL=reference``.
"""

from __future__ import annotations

import os
from typing import Dict, List, Sequence, Tuple

import torch

from . import _jit, ops
from .extend_plan import can_page, packed_key_offsets
from .layout import SharingPlan

_loaded = False
DECODE_MAX_CHUNK_TOKENS = 1024  # kDecodeMaxChunkTokens in cuda/include/flashcore/paged_decode.h
KERNEL_DTYPES = (torch.float16, torch.bfloat16)
DECODE_HEAD_DIMS = (64, 128)
_HINT = "set FLASHCORE_IMPL=reference to run the float32 reference on the GPU"


def plan_tensors(plan: SharingPlan) -> List[torch.Tensor]:
    """The SharingPlan tensors the decode kernel reads, in its argument order."""
    return [
        plan.work_entry_offsets, plan.work_reader_offsets, plan.work_readers,
        plan.entry_pages, plan.entry_offsets, plan.entry_token_offsets,
        plan.merge_offsets, plan.merge_partials,
    ]


def plan_meta(plan: SharingPlan) -> List[int]:
    """Host-side numbers the launch needs: the largest reader set of a work item."""
    return [plan.max_readers]


def _paged_decode_cuda(q, k_cache, v_cache, plan: Sequence[torch.Tensor], meta: Sequence[int],
                       page_size: int, softmax_scale: float):
    _check_kernel_input(q, "decode", DECODE_HEAD_DIMS)
    if page_size > DECODE_MAX_CHUNK_TOKENS:
        raise ValueError(f"page_size: the CUDA decode kernel supports up to {DECODE_MAX_CHUNK_TOKENS}, got {page_size}")
    return _jit.load().paged_decode(q, k_cache, v_cache, list(plan), page_size, softmax_scale, meta[0])


DENSE_HEAD_DIMS = (64, 128)


def _check_kernel_input(q: torch.Tensor, what: str, head_dims) -> None:
    if q.dtype not in KERNEL_DTYPES:
        raise TypeError(f"q: the CUDA {what} kernel takes float16 or bfloat16, got {q.dtype}; {_HINT}")
    if q.shape[-1] not in head_dims:
        raise ValueError(f"q: the CUDA {what} kernel supports head dim {' or '.join(map(str, head_dims))}, "
                         f"got {q.shape[-1]}; {_HINT}")


def _packed(t: torch.Tensor) -> torch.Tensor:
    """[B, S, H, D] -> [B*S, H, D] (a view when the strides allow it)."""
    return t.reshape(t.shape[0] * t.shape[1], t.shape[2], t.shape[3])


_FIXED_OFFSETS: Dict[Tuple[int, int, torch.device], torch.Tensor] = {}
_FIXED_OFFSETS_MAX = 256  # (batch, length, device) keys kept, 1 KB each at most


def _fixed_offsets(batch: int, length: int, device: torch.device) -> torch.Tensor:
    """[0, length, 2 length, ..., batch x length] as int32 on ``device``: the varlen kernel's view
    of a fixed-length batch. Kept per (batch, length, device), so that a [B, S, H, D] call queues no
    GPU work of its own before the kernel (building them took three small kernels a call). Not kept
    while a CUDA graph is being captured: its memory belongs to the graph."""
    key = (batch, length, device)
    offsets = _FIXED_OFFSETS.get(key)
    if offsets is None:
        offsets = torch.arange(batch + 1, device=device, dtype=torch.int32) * length
        # (never evicted, as a captured graph may read one: past the cap, new shapes build theirs each call)
        if len(_FIXED_OFFSETS) < _FIXED_OFFSETS_MAX and not _capturing(device):
            _FIXED_OFFSETS[key] = offsets
    return offsets


def _capturing(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def _attention_cuda(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, softmax_scale):
    _check_kernel_input(q, "dense attention", DENSE_HEAD_DIMS)
    batched = cu_seqlens_q is None
    if batched:  # the kernel is varlen: fixed lengths become offsets
        b, sq, sk = q.shape[0], q.shape[1], k.shape[1]
        if os.environ.get("FLASHCORE_DENSE_OFFSETS") == "fresh":  # built each call, as before (A/B runs)
            ar = torch.arange(b + 1, device=q.device, dtype=torch.int32)
            cu_seqlens_q, cu_seqlens_k = ar * sq, ar * sk
        else:
            cu_seqlens_q, cu_seqlens_k = _fixed_offsets(b, sq, q.device), _fixed_offsets(b, sk, q.device)
        q, k, v = _packed(q), _packed(k), _packed(v)
    fix = lambda t: t if t.stride(-1) == 1 and all(s % 8 == 0 for s in t.stride()[:-1]) else t.contiguous()  # noqa: E731
    out, lse = _jit.load().attention_fwd(fix(q), fix(k), fix(v), cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                         causal, softmax_scale)
    if batched:
        out = out.view(b, sq, *out.shape[1:])
        lse = lse.view(b, sq, lse.shape[-1])
    return out, lse


def _paged_prefill_cuda(q, k, v, cu_seqlens_q, cu_seqlens_k, k_cache, v_cache, key_pages, key_page_offsets,
                        page_size, max_seqlen_q, causal, softmax_scale, grid_order):
    _check_kernel_input(q, "dense attention", DENSE_HEAD_DIMS)
    if not can_page(page_size):
        raise ValueError(f"page_size: the paged dense kernel reads pages of a multiple of 8 tokens, got {page_size}")
    return _jit.load().attention_fwd_paged(q, k, v, cu_seqlens_q, cu_seqlens_k, k_cache, v_cache, key_pages,
                                           key_page_offsets, page_size, max_seqlen_q, causal, softmax_scale,
                                           grid_order)


def _paged_extend_cuda(q, k_new, v_new, k_cache, v_cache, row_offsets, cols, page_offsets, counts, prefix_lens,
                       cu_seqlens_q, max_seqlen_q, page_size, softmax_scale):
    """Extend over a prefix layout. With SGLang's pool and a page size the kernel can read in place
    (a multiple of 8), each request's whole prefix pages stay in the pool and the dense kernel
    reads them through a page list; the rest of its keys (a partial last prefix page, then the
    new tokens) are packed. Otherwise (head-major pages, page 1, a layout whose runs are not
    page-aligned) every key is packed. Bottom-right causal masking is exactly extend's mask."""
    from .layout import _exclusive_cumsum
    from .ops import layout_view
    from .reference import gather_kv

    _check_kernel_input(q, "dense attention", DENSE_HEAD_DIMS)
    i64, dev = torch.int64, q.device
    ext = (cu_seqlens_q[1:] - cu_seqlens_q[:-1]).to(i64)
    pre = prefix_lens.to(i64)
    rows, slots = layout_view(row_offsets, cols, page_offsets, counts, page_size, prefix_lens).token_slots()
    pos = torch.arange(rows.shape[0], device=dev) - _exclusive_cumsum(pre)[rows]
    in_place = k_cache.dim() == 3 and can_page(page_size) and k_cache.dtype == q.dtype
    full = pre // page_size if in_place else torch.zeros_like(pre)
    in_full = pos < (full * page_size)[rows]
    page_offsets_k = _exclusive_cumsum(full)
    key_pages = torch.div(slots[in_full & (pos % page_size == 0)], page_size, rounding_mode="floor")
    if key_pages.numel():  # in place only if each whole page's tokens are its slots in order (one sync)
        page_of = key_pages[(page_offsets_k[rows] + pos // page_size).clamp(max=key_pages.numel() - 1)]
        if not bool(((page_of * page_size + pos % page_size) == slots)[in_full].all()):
            full = torch.zeros_like(pre)
            in_full = torch.zeros_like(in_full)
            key_pages = key_pages[:0]
    tail = pre - full * page_size
    cu_k, dst_new = packed_key_offsets(tail, ext, cu_seqlens_q, q.shape[0])
    hkv, d = k_new.shape[1], k_new.shape[2]
    k_all = torch.empty(q.shape[0] + int(tail.sum()), hkv, d, dtype=q.dtype, device=dev)
    v_all = torch.empty_like(k_all)
    # a packed prefix token of request b goes to cu_k[b] + (its position - whole-page tokens); new token t after the tail
    tail_rows, tail_slots = rows[~in_full], slots[~in_full]
    dst_tail = cu_k[tail_rows] + pos[~in_full] - (full * page_size)[tail_rows]
    k_all[dst_tail] = gather_kv(k_cache, tail_slots, page_size).to(q.dtype)
    v_all[dst_tail] = gather_kv(v_cache, tail_slots, page_size).to(q.dtype)
    k_all[dst_new] = k_new.to(q.dtype)
    v_all[dst_new] = v_new.to(q.dtype)
    if key_pages.numel():
        return _paged_prefill_cuda(q, k_all, v_all, cu_seqlens_q, cu_k.to(torch.int32), k_cache, v_cache,
                                   key_pages.to(torch.int32), page_offsets_k.to(torch.int32), page_size, max_seqlen_q,
                                   True, softmax_scale, None)
    return _attention_cuda(q, k_all, v_all, cu_seqlens_q, cu_k.to(torch.int32), max_seqlen_q, None, True,
                           softmax_scale)


def ensure_loaded() -> None:
    """Registers the CUDA implementations (the extension itself builds on first call)."""
    global _loaded
    if _loaded:
        return
    _jit.check_device()
    ops.CUDA_IMPLS["paged_decode"] = _paged_decode_cuda
    ops.CUDA_IMPLS["attention"] = _attention_cuda
    ops.CUDA_IMPLS["paged_prefill"] = _paged_prefill_cuda
    ops.CUDA_IMPLS["paged_extend"] = _paged_extend_cuda
    _loaded = True
