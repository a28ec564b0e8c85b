"""Decode under CUDA graphs: fixed-capacity plan buffers and workspaces.

A captured kernel launch replays with the grid and pointers it was captured with, while the
sharing plan changes every step. So the plan is built eagerly before capture and before each
replay (``load``), copied into buffers whose addresses never change, and the kernel reads the
number of work items from device memory and loops over them on a fixed grid (``run``).
"""

from __future__ import annotations

from typing import List, Optional

import torch

from .api import MAX_CHUNK_TOKENS, _num_sms, auto_chunk_tokens
from .layout import PagedLayout, SharingPlan

_I32 = dict(dtype=torch.int32)


def max_page_runs(max_batch: int, max_context_len: int, page_size: int) -> int:
    """Page runs a batch can have: each request's pages, plus one for a run that starts mid-page."""
    return max_batch * (-(-max_context_len // page_size) + 1)


class DecodeGraphState:
    """Everything one captured decode launch reads, at fixed addresses.

    Args:
        max_batch: the largest graph batch (requests).
        max_context_len: tokens a request can hold (``req_to_token.shape[1]``).
        page_size: the KV pool's page size.
        num_q_heads, head_dim: size the partial-result workspace (an upper bound is fine).
        workspace_bytes: memory for partial results; bounds the work items a step may use.
    """

    def __init__(self, max_batch: int, max_context_len: int, page_size: int, num_q_heads: int, head_dim: int,
                 device: torch.device, workspace_bytes: int = 256 << 20):
        self.device = torch.device(device)
        self.max_batch = max_batch
        self.max_entries = max_page_runs(max_batch, max_context_len, page_size)
        per_partial = num_q_heads * (head_dim + 1) * 4
        self.max_partials = max(max_batch, workspace_bytes // per_partial)
        self.max_work = self.max_partials  # every work item has at least one reader
        i32 = dict(_I32, device=self.device)
        self.work_entry_offsets = torch.zeros(self.max_work + 1, **i32)
        self.work_reader_offsets = torch.zeros(self.max_work + 1, **i32)
        self.work_readers = torch.zeros(self.max_partials, **i32)
        self.entry_pages = torch.zeros(self.max_entries, **i32)
        self.entry_offsets = torch.zeros(self.max_entries, **i32)
        self.entry_token_offsets = torch.zeros(self.max_entries + 1, **i32)
        self.merge_offsets = torch.zeros(max_batch + 1, **i32)
        self.merge_partials = torch.zeros(self.max_partials, **i32)
        self.num_work = torch.zeros(1, **i32)
        self.partial_o = torch.empty(self.max_partials * num_q_heads * head_dim, dtype=torch.float32, device=self.device)
        self.partial_lse = torch.empty(self.max_partials * num_q_heads, dtype=torch.float32, device=self.device)
        self.grid_work = 3 * _num_sms(self.device)  # three CTAs per SM loop over the work items
        self.plan: Optional[SharingPlan] = None

    def load(self, layout: PagedLayout, num_kv_heads: int, chunk_tokens: Optional[int] = None) -> SharingPlan:
        """Plans ``layout`` (eagerly) and copies the plan into the fixed buffers. When the plan has
        more work items or partials than the workspace holds, chunks are doubled until it fits."""
        if layout.batch_size > self.max_batch:
            raise ValueError(f"layout: {layout.batch_size} requests, the graph state holds {self.max_batch}")
        chunk = chunk_tokens or auto_chunk_tokens(layout, num_kv_heads)
        plan = layout.plan(chunk)
        while (plan.num_work_items > self.max_work or plan.num_partials > self.max_partials) \
                and chunk < MAX_CHUNK_TOKENS:
            chunk *= 2
            plan = layout.plan(chunk)
        if plan.num_work_items > self.max_work or plan.num_partials > self.max_partials:
            raise ValueError(
                f"decode plan of {plan.num_work_items} work items / {plan.num_partials} partials exceeds the "
                f"CUDA-graph workspace ({self.max_work} / {self.max_partials}); raise workspace_bytes"
            )
        if plan.entry_pages.shape[0] > self.max_entries:
            raise ValueError(f"decode plan of {plan.entry_pages.shape[0]} page runs exceeds {self.max_entries}")
        for name in ("work_entry_offsets", "work_reader_offsets", "work_readers", "entry_pages", "entry_offsets",
                     "entry_token_offsets", "merge_offsets", "merge_partials"):
            src = getattr(plan, name)
            getattr(self, name)[: src.shape[0]].copy_(src)
        self.num_work.fill_(plan.num_work_items)
        self.plan = plan
        return plan

    def buffers(self) -> List[torch.Tensor]:
        """The plan buffers in the kernel's argument order (see ``kernels.plan_tensors``)."""
        return [self.work_entry_offsets, self.work_reader_offsets, self.work_readers, self.entry_pages,
                self.entry_offsets, self.entry_token_offsets, self.merge_offsets, self.merge_partials]

    def run(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, page_size: int,
            softmax_scale: float):
        """The decode launch: graph-capturable (no host sync, no allocation but the outputs)."""
        from . import _jit
        from .kernels import _check_kernel_input, DECODE_HEAD_DIMS

        _check_kernel_input(q, "decode", DECODE_HEAD_DIMS)
        return _jit.load().paged_decode_static(
            q, k_cache, v_cache, self.buffers(), page_size, softmax_scale, self.max_batch, self.num_work,
            self.partial_o, self.partial_lse, self.grid_work,
        )
