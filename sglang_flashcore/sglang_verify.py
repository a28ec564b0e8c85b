"""SGLang's speculative batches for ``FlashCoreBackend``: from a ForwardBatch to a ``VerifyPlan``.

* TARGET_VERIFY (EAGLE/EAGLE3, NGRAM, DFLASH): ``seq_lens`` are the requests' cached context
  lengths, N = ``spec_info.num_tokens_per_req`` (or ``draft_token_num``) draft tokens follow each,
  and ``spec_info.custom_mask`` (None: a chain) says which draft tokens see which.
* DRAFT_EXTEND_V2 under CUDA graphs: N new tokens per request (``input_ids`` / batch), a prefix
  of ``seq_lens - N`` (SGLang bumps ``seq_lens`` past the new tokens first; padded rows may go
  below zero and read no prefix), causal. Eager draft extends are ordinary extends (the
  backend's extend path).

One ``DecodePlanner`` serves every verify step (sized for B*N draft tokens), and CUDA-graph
steps copy their draft masks into fixed ``VerifyBuffers``. A model with sliding windows gets a
second planner for its windowed layers, over each draft token's own window (``VerifyWindow``;
the draft tokens' positions come from ``forward_batch.positions``). The mode predicates differ between
SGLang releases, so they are looked up by name.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from .decode import DecodePlanner, planner_group
from .speculative import (VerifyBufferSet, VerifyPlan, chain_mask, draft_mask_from_sglang, plan_verify,
                          tokens_per_request)
from .window import window_width

__all__ = ["is_target_verify", "is_draft_extend", "VerifyMetadataBuilder"]


def _mode_is(mode, name: str) -> bool:
    return bool(getattr(mode, name, lambda: False)())


def is_target_verify(mode) -> bool:
    """TARGET_VERIFY in every supported SGLang release."""
    return _mode_is(mode, "is_target_verify")


def is_draft_extend(mode) -> bool:
    """DRAFT_EXTEND_V2 (0.5.17 - 0.5.23), or the DRAFT_EXTEND of releases that still have it."""
    return _mode_is(mode, "is_draft_extend_v2") or _mode_is(mode, "is_draft_extend")


class VerifyMetadataBuilder:
    """Builds the ``VerifyPlan`` of SGLang's verify batches (and of draft extends in CUDA graphs).

    Args:
        req_to_token: SGLang's page table [rows, max_context].
        device: the model's device; ``use_kernels`` selects the GPU planner (else the reference).
        num_q_heads: this rank's query heads, head_dim, num_kv_heads: this rank's pool shape; they
            size the planner.
        chunk_tokens: a fixed split-KV chunk for the planner (None: automatic).
        deterministic: the planner's batch-invariant mode (``--enable-deterministic-inference``).
        window_left: the model's sliding window (-1: none); slot_map: returns the hybrid SWA
            pool's full -> SWA slot mapping, or None for one pool.
    """

    def __init__(self, req_to_token: torch.Tensor, device: torch.device, *, use_kernels: bool, num_q_heads: int,
                 head_dim: int, num_kv_heads: int, chunk_tokens: Optional[int] = None, deterministic: bool = False,
                 window_left: int = -1, slot_map: Callable[[], Optional[torch.Tensor]] = lambda: None):
        self.req_to_token = req_to_token
        self.device = device
        self.use_kernels = use_kernels
        self.num_q_heads, self.head_dim, self.num_kv_heads = num_q_heads, head_dim, num_kv_heads
        self.group = planner_group(num_q_heads, num_kv_heads)
        self.chunk_tokens = chunk_tokens
        self.deterministic = deterministic
        self.planner: Optional[DecodePlanner] = None
        self.window_left, self.slot_map = window_left, slot_map
        self.window_planner: Optional[DecodePlanner] = None
        self.graph: Optional[VerifyBufferSet] = None

    # ------------------------------------------------------------------ sizing
    def _planner_for(self, batch: int, num_draft: int) -> DecodePlanner:
        """The verify planner, made at the first speculative batch for every pool row (or captured
        request) times that batch's draft width. A CUDA-graph capture fixes it (replays read its
        buffers), so a batch that outgrows it afterwards is refused rather than replanned."""
        needed = batch * num_draft
        if self.planner is not None and self.planner.max_batch >= needed:
            return self.planner
        if self.planner is not None and self.graph is not None:
            raise ValueError(f"verify batch of {needed} draft tokens exceeds the {self.planner.max_batch} "
                             "the verify planner was sized for at its first CUDA-graph capture")
        rows = max(self.req_to_token.shape[0], self.graph.max_bs if self.graph is not None else 0, batch)
        self.planner = DecodePlanner(rows * num_draft, self.num_q_heads, self.head_dim, self.device,
                                     deterministic=self.deterministic)
        if self.window_left >= 0:  # the windowed layers' planner, of the same size
            self.window_planner = DecodePlanner(rows * num_draft, self.num_q_heads, self.head_dim, self.device,
                                                deterministic=self.deterministic)
        return self.planner

    def init_cuda_graph_state(self, max_bs: int) -> None:
        """Before capture: room for ``max_bs`` requests in the fixed draft-mask buffers (made per
        draft width at its first capture; SGLang captures its largest batch first)."""
        width = window_width(self.window_left, self.req_to_token.shape[1]) if self.window_left >= 0 else 0
        self.graph = VerifyBufferSet(max_bs, self.device, width, self.req_to_token.dtype)

    # ---------------------------------------------------------------- planning
    def plan(self, forward_batch, *, graph: bool = False) -> VerifyPlan:
        """The plan of a TARGET_VERIFY batch, or (CUDA graphs) of a DRAFT_EXTEND_V2 batch; with
        ``graph`` its draft mask and rows go into the fixed buffers."""
        mode = forward_batch.forward_mode
        seq_lens = forward_batch.seq_lens
        batch = seq_lens.shape[0]
        if is_target_verify(mode):
            spec_info = forward_batch.spec_info
            if spec_info is None:
                raise ValueError("forward_batch.spec_info: a TARGET_VERIFY batch needs its verify input")
            num_draft = tokens_per_request(spec_info)
            prefix = seq_lens
            custom_mask = getattr(spec_info, "custom_mask", None)
            mask = (chain_mask(batch, num_draft, seq_lens.device) if custom_mask is None
                    else draft_mask_from_sglang(custom_mask, prefix, num_draft))
        elif is_draft_extend(mode):
            tokens = forward_batch.input_ids.shape[0]
            if batch == 0 or tokens % batch:
                raise ValueError(f"forward_batch.input_ids: {tokens} tokens do not split evenly over {batch} "
                                 "requests (a CUDA-graph draft extend has a fixed width)")
            num_draft = tokens // batch
            prefix = (seq_lens.to(torch.int64) - num_draft).clamp_(min=0)
            mask = chain_mask(batch, num_draft, seq_lens.device)
        else:
            raise ValueError(f"forward_batch.forward_mode: {mode!r} is not a speculative batch")
        planner = self._planner_for(batch, num_draft) if self.use_kernels else None
        if graph and self.graph is None:
            raise RuntimeError("init_cuda_graph_state must run before CUDA-graph capture")
        buffers = self.graph.buffers(num_draft) if graph else None
        window = {}
        if self.window_left >= 0:
            window = dict(window_left=self.window_left, positions=forward_batch.positions,
                          window_planner=self.window_planner if self.use_kernels else None,
                          slot_map=self.slot_map(), window_out=buffers.window_out() if buffers else None)
        plan = plan_verify(self.req_to_token, forward_batch.req_pool_indices, prefix, num_draft, mask,
                           planner=planner, num_kv_heads=self.num_kv_heads, group=self.group,
                           chunk_tokens=self.chunk_tokens, **window)
        return buffers.load(plan) if buffers is not None else plan

    @staticmethod
    def refill_draft_mask(plan: VerifyPlan, spec_info) -> None:
        """Rewrites the plan's draft mask in place from ``spec_info.custom_mask``: SGLang's overlap
        plan stream plans verify before the draft has written its tree
        (``update_verify_buffers_to_fill_after_draft``)."""
        custom_mask = getattr(spec_info, "custom_mask", None)
        if custom_mask is None:
            return
        plan.draft_mask.copy_(draft_mask_from_sglang(custom_mask, plan.prefix_lens, plan.num_draft))
        if plan.window is not None:  # cut to each draft token's window again
            plan.window.draft_mask.copy_(plan.draft_mask & plan.window.in_window)
