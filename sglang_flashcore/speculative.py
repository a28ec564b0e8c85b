"""Speculative decoding: SGLang's target verify as a shared-prefix decode plus a tiny draft-token op.

A TARGET_VERIFY batch holds B requests with N draft tokens each (EAGLE/EAGLE3 chains and trees,
NGRAM). SGLang lays a request's draft tokens out after its cached context: ``seq_lens[b]`` is
the context length P_b, positions ``P_b .. P_b + N - 1`` of its ``req_to_token`` row hold the
draft tokens' slots (``out_cache_loc``, request-major), and the layer's K/V of the draft tokens
arrive with the call. Draft token i of request b attends to

* every cached token of request b (SGLang's verify masks keep the whole context visible), and
* the draft tokens j of request b with ``mask[b, i, j]``: causal for a chain (topk = 1, or no
  ``custom_mask``), else the tree mask ``spec_info.custom_mask``. SGLang hands backends that mask
  flattened per request as rows of ``P_b + N`` entries (context, then draft tokens), requests
  one after the other; only its last N columns carry information.

So verify = (a) the decode planner over B*N pseudo-requests, draft token i of request b reading
row ``req_pool_indices[b]`` up to ``P_b`` (the planner finds the identical chunks, so a context
chunk is read once for all N draft tokens of a request, and once for all requests whose radix
cache prefix shares it; its rows become draft tokens x GQA group), (b) the N x N attention
among each request's draft tokens in a few torch ops, (c) the two merged by their LSEs. Every
step has fixed shapes and no host sync, so verify is captured in CUDA graphs as decode is: the
plan and the draft mask are written into fixed buffers before each replay.

A fixed-width draft extend (DRAFT_EXTEND_V2: N new tokens per request after a prefix of
``seq_lens - N``, causal) is the same computation with a chain mask; the backend uses it for
CUDA-graph capture of draft extend, and the extend path for eager draft extend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch

from . import kernels
from .checks import check_len, check_positive_int, check_tensor, softmax_scale_for
from .decode import DecodePlanner, paged_decode_table
from .indexing import exclusive_cumsum
from .reference import capped, dequantize, merge_states_ref
from .window import window_table

Tensor = torch.Tensor

__all__ = [
    "VerifyPlan",
    "VerifyBuffers",
    "chain_mask",
    "draft_mask_from_sglang",
    "draft_attention",
    "plan_verify",
    "verify_attention",
    "tokens_per_request",
]


@dataclass
class VerifyWindow:
    """The sliding-window layers' view of a verify batch (window.py): draft token t, at position
    ``positions[t]``, sees its context from ``positions[t] - window_left`` on, and the draft
    tokens of its mask that lie in that window.

    Attributes:
        draft_mask: bool [B, N, N], the batch's draft mask and ``in_window``.
        in_window: bool [B, N, N]: draft token j lies in draft token i's window (kept, so that a
            refilled draft mask is cut to the window again).
        planner: GPU: a decode planner over ``table``; None on CPU.
        table, rows, lens: each draft token's window of context slots as a page table
            (``window_table``), its rows 0..B*N-1, and how many keys each holds.
    """

    window_left: int
    draft_mask: Tensor
    in_window: Tensor
    planner: Optional[DecodePlanner]
    table: Tensor
    rows: Tensor
    lens: Tensor


@dataclass
class VerifyPlan:
    """The keys of one verify (or fixed-width draft extend) batch, shared by every layer.

    Attributes:
        num_draft: N, draft tokens per request (query tokens are request-major, N per request).
        prefix_lens: [B] cached tokens of each request (its context before the draft tokens).
        draft_mask: bool [B, N, N]: draft token i of request b sees draft token j (always itself).
        planner: GPU: the decode planner, planned over the B*N draft tokens; None on CPU.
        draft_rows, draft_prefix_lens: [B*N] each draft token's pool row and context length
            (what the planner was given; the CPU reference reads them).
        window: the sliding-window layers' view (models with windows), else None.
    """

    num_draft: int
    prefix_lens: Tensor
    draft_mask: Tensor
    planner: Optional[DecodePlanner]
    draft_rows: Tensor
    draft_prefix_lens: Tensor
    window: Optional[VerifyWindow] = None

    @property
    def batch_size(self) -> int:
        return self.prefix_lens.shape[0]


def tokens_per_request(spec_info: object) -> int:
    """N of a verify batch's ``spec_info`` (EAGLE, NGRAM, DFLASH inputs): its
    ``num_tokens_per_req`` when positive (SGLang may shrink the width per step), else its
    ``draft_token_num``."""
    per_req = getattr(spec_info, "num_tokens_per_req", -1)
    if isinstance(per_req, int) and per_req > 0:
        return per_req
    draft = getattr(spec_info, "draft_token_num", None)
    if not isinstance(draft, int) or draft <= 0:
        raise ValueError(f"spec_info: expected a positive draft_token_num, got {draft!r} "
                         f"({type(spec_info).__name__})")
    return draft


def chain_mask(batch: int, num_draft: int, device) -> Tensor:
    """bool [batch, N, N]: each draft token sees itself and the ones before it (topk = 1)."""
    check_positive_int("num_draft", num_draft)
    tril = torch.ones(num_draft, num_draft, dtype=torch.bool, device=device).tril_()
    return tril.expand(batch, num_draft, num_draft).clone()


def draft_mask_from_sglang(custom_mask: Tensor, prefix_lens: Tensor, num_draft: int) -> Tensor:
    """The draft-token block of SGLang's flattened verify mask, as bool [B, N, N].

    ``custom_mask`` holds, request after request, N rows of ``prefix_lens[b] + N`` entries (the
    layout SGLang gives backends without a ``verify_mask`` buffer of their own); entry
    ``P_b + j`` of row i says whether draft token i sees draft token j. Indices past the end of
    the mask (rows SGLang pads a CUDA-graph batch with) are clamped, and every draft token sees
    itself, so no row is empty. No host sync.
    """
    check_tensor("custom_mask", custom_mask, dtypes=(torch.bool, torch.uint8, torch.int8, torch.int32))
    check_tensor("prefix_lens", prefix_lens, ndim=1, dtypes=(torch.int32, torch.int64), device=custom_mask.device)
    check_positive_int("num_draft", num_draft)
    batch, n = prefix_lens.shape[0], num_draft
    flat = custom_mask.reshape(-1)
    if flat.numel() == 0:
        if batch:
            raise ValueError(f"custom_mask: empty for a batch of {batch} requests")
        return torch.zeros(0, n, n, dtype=torch.bool, device=custom_mask.device)
    pre = prefix_lens.to(torch.int64)
    row_len = pre + n  # entries per mask row of request b
    start = exclusive_cumsum(row_len * n)[:-1]
    i = torch.arange(n, device=flat.device)
    index = (start.view(-1, 1, 1) + i.view(1, -1, 1) * row_len.view(-1, 1, 1) + pre.view(-1, 1, 1)
             + i.view(1, 1, -1))
    mask = flat[index.clamp_(0, flat.numel() - 1)].to(torch.bool)
    return mask | torch.eye(n, dtype=torch.bool, device=flat.device)


def draft_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor,
                    softmax_scale: float, softcap: float = 0.0) -> Tuple[Tensor, Tensor]:
    """Attention of each request's N draft tokens among themselves, in float32.

    Args:
        q: [B*N, Hq, D] request-major; k, v: [B*N, Hkv, D] (Hkv dividing Hq).
        mask: bool [B, N, N], every row with at least one True (``draft_mask_from_sglang``,
            ``chain_mask``).
        softcap: the logit soft-cap (``reference.capped``), 0 for none.

    Returns ``(out [B*N, Hq, D] float32, lse [B*N, Hq] float32)``. A few batched matmuls with
    fixed shapes: N is at most a few dozen, so this costs little next to the context part.
    """
    check_tensor("mask", mask, ndim=3, dtypes=(torch.bool,), device=q.device)
    batch, n = mask.shape[0], mask.shape[1]
    check_len("q", q, batch * n, f"{n} draft tokens for each of the mask's {batch} requests")
    hq, d = q.shape[1], q.shape[2]
    hkv = k.shape[1]
    if hkv == 0 or hq % hkv:
        raise ValueError(f"k: {hkv} KV heads do not divide q's {hq} heads")
    group = hq // hkv
    qf = q.float().view(batch, n, hkv, group, d)
    kf = k.float().view(batch, n, hkv, d)
    vf = v.float().view(batch, n, hkv, d)
    scores = capped(torch.einsum("bihgd,bjhd->bhgij", qf, kf) * softmax_scale, softcap)
    scores = scores.masked_fill(~mask.view(batch, 1, 1, n, n), float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)  # finite: every row sees its own token
    p = torch.exp(scores - lse.unsqueeze(-1))
    out = torch.einsum("bhgij,bjhd->bihgd", p, vf).reshape(batch * n, hq, d)
    lse = lse.permute(0, 3, 1, 2).reshape(batch * n, hq)
    return out, lse


def _draft_rows(req_pool_indices: Tensor, prefix_lens: Tensor, num_draft: int) -> Tuple[Tensor, Tensor]:
    """Each draft token as a decode pseudo-request: its request's pool row and context length."""
    b = req_pool_indices.shape[0]
    # (contiguous: for one request, reshape keeps the expanded view, whose stride is 0)
    rows = req_pool_indices.unsqueeze(1).expand(b, num_draft).reshape(-1).contiguous()
    lens = prefix_lens.unsqueeze(1).expand(b, num_draft).reshape(-1).contiguous()
    return rows, lens


def plan_verify(req_to_token: Tensor, req_pool_indices: Tensor, prefix_lens: Tensor, num_draft: int,
                draft_mask: Tensor, *, planner: Optional[DecodePlanner] = None, num_kv_heads: int = 1,
                group: int = 1, chunk_tokens: Optional[int] = None, window_left: int = -1,
                positions: Optional[Tensor] = None, window_planner: Optional[DecodePlanner] = None,
                slot_map: Optional[Tensor] = None,
                window_out: Optional[Tuple[Tensor, Tensor]] = None) -> VerifyPlan:
    """Plans one verify batch (asynchronously; no host sync).

    Args:
        req_to_token: [rows, max_context] SGLang's page table.
        req_pool_indices, prefix_lens: [B] each request's row and cached context length (SGLang's
            ``seq_lens`` in TARGET_VERIFY).
        num_draft: N draft tokens per request.
        draft_mask: bool [B, N, N] (``draft_mask_from_sglang`` or ``chain_mask``).
        planner: a ``DecodePlanner`` holding at least B*N requests (GPU); None runs the float32
            reference for the context part.
        num_kv_heads, group, chunk_tokens: as ``DecodePlanner.plan``.
        window_left: the model's sliding window (-1: none); then ``positions`` [B*N] (each draft
            token's position: its context length plus its depth in the draft tree) gives the
            windowed layers' plan (``VerifyWindow``), over ``window_planner`` on a GPU, through
            ``slot_map`` for SGLang's hybrid SWA pool, into ``window_out`` (fixed table and
            length buffers) under CUDA graphs.
    """
    check_positive_int("num_draft", num_draft)
    check_tensor("req_pool_indices", req_pool_indices, ndim=1, dtypes=(torch.int32, torch.int64))
    check_tensor("prefix_lens", prefix_lens, ndim=1, dtypes=(torch.int32, torch.int64),
                 device=req_pool_indices.device)
    check_len("prefix_lens", prefix_lens, req_pool_indices.shape[0], "one context length per request")
    batch = req_pool_indices.shape[0]
    check_tensor("draft_mask", draft_mask, ndim=3, dtypes=(torch.bool,), device=req_pool_indices.device)
    if tuple(draft_mask.shape) != (batch, num_draft, num_draft):
        raise ValueError(f"draft_mask: expected shape {(batch, num_draft, num_draft)}, got {tuple(draft_mask.shape)}")
    rows, lens = _draft_rows(req_pool_indices, prefix_lens, num_draft)
    if planner is not None:
        if batch * num_draft > planner.max_batch:
            raise ValueError(f"req_pool_indices: {batch} requests x {num_draft} draft tokens exceed the "
                             f"{planner.max_batch} rows the verify planner holds")
        planner.plan(req_to_token, rows, lens, num_kv_heads, group, chunk_tokens)
    window = None
    if window_left >= 0:
        check_tensor("positions", positions, ndim=1, dtypes=(torch.int32, torch.int64), device=req_pool_indices.device)
        check_len("positions", positions, batch * num_draft, "one position per draft token")
        pos = positions.to(torch.int64).view(batch, num_draft)
        in_window = pos.unsqueeze(1) >= pos.unsqueeze(2) - window_left  # [b, i, j]: j in i's window
        out, out_lens = window_out if window_out is not None else (None, None)
        table, keys = window_table(req_to_token, rows, lens, window_left, slot_map=slot_map, query_pos=positions,
                                   out=out, out_lens=out_lens)
        table_rows = torch.arange(batch * num_draft, device=table.device)
        if window_planner is not None:
            window_planner.plan(table, table_rows, keys, num_kv_heads, group, chunk_tokens)
        window = VerifyWindow(window_left, draft_mask & in_window, in_window, window_planner, table, table_rows, keys)
    return VerifyPlan(num_draft, prefix_lens, draft_mask, planner, rows, lens, window)


def verify_attention(q: Tensor, k: Optional[Tensor], v: Optional[Tensor], k_cache: Tensor, v_cache: Tensor,
                     req_to_token: Tensor, plan: VerifyPlan, softmax_scale: float, *, page_size: int = 1,
                     k_scale: float = 1.0, v_scale: float = 1.0,
                     out_cache_loc: Optional[Tensor] = None, softcap: float = 0.0,
                     window: bool = False) -> Tuple[Tensor, Tensor]:
    """One layer of a verify batch: ``(out [B*N, Hq, D] in q's dtype, lse [B*N, Hq] float32)``.

    Args:
        q: [B*N, Hq, D] the draft tokens' queries, request-major.
        k, v: [B*N, Hkv, D] the draft tokens' keys and values, or None when only the pool has
            them (then read at ``out_cache_loc``).
        k_cache, v_cache: SGLang's pool [slots, Hkv, D] holding each request's context.
        k_scale, v_scale: an FP8 pool holds K / k_scale and V / v_scale.
        softcap: the logit soft-cap (both parts), 0 for none.
        window: a sliding-window layer: the plan's ``window`` view (its own context keys and
            draft mask) instead of the whole context.
    """
    if k is None or v is None:
        if out_cache_loc is None:
            raise ValueError("out_cache_loc: needed to read the draft tokens' K/V from the pool when k/v are None")
        k = dequantize(k_cache[out_cache_loc], k_scale, q.dtype)
        v = dequantize(v_cache[out_cache_loc], v_scale, q.dtype)
    planner, table, rows, lens, mask = (plan.planner, req_to_token, plan.draft_rows, plan.draft_prefix_lens,
                                        plan.draft_mask)
    if window:
        if plan.window is None:
            raise ValueError("plan: a windowed layer needs a plan made with window_left (plan_verify)")
        w = plan.window
        planner, table, rows, lens, mask = w.planner, w.table, w.rows, w.lens, w.draft_mask
    if planner is not None:
        out_c, lse_c = planner.run(q, k_cache, v_cache, softmax_scale, page_size, k_scale, v_scale, softcap)
        # the planner runs our kernels: so does the draft part, folded into the context part
        return kernels.draft_merge(q, k.to(q.dtype), v.to(q.dtype), mask, out_c, lse_c,
                                   softmax_scale_for(softmax_scale, q.shape[-1]), softcap)
    out_c, lse_c = paged_decode_table(q, k_cache, v_cache, table, rows, lens, page_size=page_size,
                                      softmax_scale=softmax_scale, check_bounds=False, k_scale=k_scale,
                                      v_scale=v_scale, softcap=softcap)
    out_d, lse_d = draft_attention(q, k, v, mask, softmax_scale, softcap)
    out, lse = merge_states_ref(out_c, lse_c, out_d, lse_d)
    return out.to(q.dtype), lse.float()


class VerifyBuffers:
    """Fixed storage for CUDA-graph verify: the draft mask and the draft tokens' rows and context
    lengths of up to ``max_bs`` requests of N draft tokens are copied here before capture and
    before each replay, so the captured launches always read the same addresses."""

    def __init__(self, max_bs: int, num_draft: int, device, window_width: int = 0,
                 table_dtype: torch.dtype = torch.int32):
        check_positive_int("max_bs", max_bs)
        check_positive_int("num_draft", num_draft)
        self.max_bs, self.num_draft = max_bs, num_draft
        self.draft_mask = torch.ones(max_bs, num_draft, num_draft, dtype=torch.bool, device=device)
        self.prefix_lens = torch.zeros(max_bs, dtype=torch.int64, device=device)
        self.rows = torch.zeros(max_bs * num_draft, dtype=torch.int64, device=device)
        self.lens = torch.zeros(max_bs * num_draft, dtype=torch.int64, device=device)
        self.window = None  # (table, lens, rows, draft mask, in-window mask) for windowed models
        if window_width:
            tokens = max_bs * num_draft
            self.window = (torch.zeros(tokens, window_width, dtype=table_dtype, device=device),
                           torch.zeros(tokens, dtype=torch.int64, device=device),
                           torch.arange(tokens, device=device),
                           torch.ones(max_bs, num_draft, num_draft, dtype=torch.bool, device=device),
                           torch.ones(max_bs, num_draft, num_draft, dtype=torch.bool, device=device))

    def window_out(self) -> Optional[Tuple[Tensor, Tensor]]:
        """The fixed (table, lens) buffers ``plan_verify`` writes the window view into."""
        return None if self.window is None else self.window[:2]

    def load(self, plan: VerifyPlan) -> VerifyPlan:
        b, n = plan.batch_size, plan.num_draft
        if n != self.num_draft:
            raise ValueError(f"plan: {n} draft tokens per request, these buffers hold {self.num_draft}")
        if b > self.max_bs:
            raise ValueError(f"CUDA-graph batch of {b} requests exceeds the {self.max_bs} sized at "
                             "init_cuda_graph_state")
        self.draft_mask[:b].copy_(plan.draft_mask)
        self.prefix_lens[:b].copy_(plan.prefix_lens)
        self.rows[:b * n].copy_(plan.draft_rows)
        self.lens[:b * n].copy_(plan.draft_prefix_lens)
        window = None
        if plan.window is not None:
            if self.window is None:
                raise ValueError("plan: a windowed plan for buffers made without a window")
            table, lens, rows, mask, in_window = self.window
            w = plan.window
            if w.table.data_ptr() != table.data_ptr():
                raise ValueError("plan: its window table must be planned into these buffers (window_out)")
            mask[:b].copy_(w.draft_mask)
            in_window[:b].copy_(w.in_window)
            window = VerifyWindow(w.window_left, mask[:b], in_window[:b], w.planner, table[:b * n], rows[:b * n],
                                  lens[:b * n])
        return VerifyPlan(n, self.prefix_lens[:b], self.draft_mask[:b], plan.planner, self.rows[:b * n],
                          self.lens[:b * n], window)


class VerifyBufferSet:
    """One ``VerifyBuffers`` per draft width N, made at the first capture of that width."""

    def __init__(self, max_bs: int, device, window_width: int = 0, table_dtype: torch.dtype = torch.int32):
        self.max_bs, self.device = max_bs, device
        self.window_width, self.table_dtype = window_width, table_dtype
        self._by_width: Dict[int, VerifyBuffers] = {}

    def buffers(self, num_draft: int) -> VerifyBuffers:
        found = self._by_width.get(num_draft)
        if found is None:
            found = self._by_width[num_draft] = VerifyBuffers(self.max_bs, num_draft, self.device, self.window_width,
                                                              self.table_dtype)
        return found

    def load(self, plan: VerifyPlan) -> VerifyPlan:
        return self.buffers(plan.num_draft).load(plan)
