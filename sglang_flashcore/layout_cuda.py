"""``from_sglang`` and ``plan_sharing`` on the GPU (``cuda/layout_build.cu``).

The torch versions in ``layout.py`` are about a hundred small ops with several host syncs: 2.5-5 ms
a step on an H200 however small the batch. These kernels give the same arrays, bit for bit (the
GPU tests compare them), in a few launches (one for a plan of up to 2048 runs) and one sync each:
0.2-0.4 ms together. ``layout.py`` calls them for CUDA
tensors on a GPU the kernels are built for; ``FLASHCORE_LAYOUT_BUILD=torch`` (or
``FLASHCORE_IMPL=reference``) keeps the torch code, for A/B runs.
"""

from __future__ import annotations

import os
from typing import Dict, Optional

import torch

from .layout import PagedLayout, SharingPlan

_USABLE: Dict[torch.device, bool] = {}


def enabled(device: torch.device) -> bool:
    """Whether the layout builders run on the GPU for tensors on ``device``."""
    if device.type != "cuda" or os.environ.get("FLASHCORE_LAYOUT_BUILD", "auto") == "torch":
        return False
    from . import _jit, ops

    if ops.impl_mode() == "reference":
        return False
    usable = _USABLE.get(device)
    if usable is None:
        try:
            _jit.check_device(device)
            usable = True
        except _jit.KernelBuildError:
            usable = False  # not a Hopper GPU (or no nvcc): the torch code serves
        _USABLE[device] = usable
    return usable


def from_sglang_cuda(req_to_token: torch.Tensor, req_pool_indices: torch.Tensor, seq_lens: torch.Tensor,
                     page_size: int, num_slots: Optional[int], validate: bool) -> PagedLayout:
    """``layout.from_sglang`` for CUDA tensors, after its argument checks. With ``validate``, a slot
    out of range is reported by the torch code (the same error)."""
    from . import _jit
    from .layout import _from_sglang_torch

    (row_offsets, cols, page_offsets, counts, positions, staging, lens, host) = _jit.load().csr_from_table(
        req_to_token, req_pool_indices, seq_lens, page_size, validate)
    runs, low, high = (host.tolist() + [0, 0])[:3]  # the slot range comes with validation only
    if runs and num_slots is None and validate:
        num_slots = high + 1
    if validate and runs and (low < 0 or (num_slots is not None and high >= num_slots)):
        _from_sglang_torch(req_to_token, req_pool_indices, seq_lens, page_size, num_slots, validate, None)
        raise AssertionError("the GPU layout build saw a slot out of range that the torch check missed")
    num_pages = -(-num_slots // page_size) if num_slots else 0
    return PagedLayout(page_size, num_pages, row_offsets, cols, page_offsets, counts, positions, staging, lens,
                       max_position=req_to_token.shape[1])


def plan_sharing_cuda(layout: PagedLayout, chunk_tokens: int, key_end_bit: int) -> SharingPlan:
    """``layout.plan_sharing`` of a non-empty layout whose run keys fit 64 bits (the caller checks)."""
    from . import _jit

    (pages, offsets, counts, token_offsets, reader_offsets, readers, work_entry_offsets, work_reader_offsets,
     work_readers, merge_offsets, merge_partials, host) = _jit.load().sharing_plan(
        layout.row_offsets, layout.cols, layout.page_offsets, layout.counts, layout.positions,
        layout.page_size, max(1, chunk_tokens // layout.page_size), key_end_bit)
    return SharingPlan(
        chunk_tokens=chunk_tokens,
        page_size=layout.page_size,
        entry_pages=pages,
        entry_offsets=offsets,
        entry_counts=counts,
        entry_token_offsets=token_offsets,
        reader_offsets=reader_offsets,
        readers=readers,
        work_entry_offsets=work_entry_offsets,
        work_reader_offsets=work_reader_offsets,
        work_readers=work_readers,
        merge_offsets=merge_offsets,
        merge_partials=merge_partials,
        max_readers=int(host[3]),
        _layout_cols=layout.cols,
        _layout_counts=layout.counts,
    )
