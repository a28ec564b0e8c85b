"""Extend (prefill over a cached prefix) planned once per batch straight from SGLang's page table.

Every layer of an extend batch attends over the same keys: request b's cached prefix (slots
``req_to_token[req_pool_indices[b], :prefix_lens[b]]``) followed by its new tokens (slots
``out_cache_loc``, where SGLang stores them before attention runs). ``plan_extend`` turns that
into the dense kernel's varlen offsets and the keys' addresses, with a few vectorized ops and no
host sync when the host already knows the lengths (SGLang's ``*_cpu`` lists):

* paged (page size a multiple of 8): the whole pages of each request's prefix, as a page list.
  The dense kernel TMA-loads them in place from the pool, so a layer gathers nothing when the
  prefixes end on page boundaries (the radix cache matches whole pages); the new tokens' K/V go
  to the kernel as they are. A page shared by several requests stays where it is, and the
  plan's ``grid_order`` flag (set on the device when two requests start on the same page) makes
  the kernel run those requests' CTAs side by side, so shared pages come from HBM once and from
  L2 for the other readers.
* the rest (page size 1, or a prefix's last partial page): packed pool slots, gathered once
  per layer (``key_slots``), placed after the pages.

An FP8 pool's pages cannot be read in place (the dense kernel reads 16-bit keys).
``widened_page_plan`` renumbers a paged plan's pages to index a compact copy of its distinct
pages, which each layer widens to the model dtype before the kernel reads it in place: a prefix
page shared by many requests is widened once, and its readers still share it through L2.

Without any prefix the keys are exactly the new tokens: no pages, no gather. A paged plan relies
on SGLang's page-aligned table (a prefix position j at slot ``page * page_size + j % page_size``);
the new tokens' slots may be in any order.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Sequence, Tuple

import torch

from . import config, ops
from .checks import FP8_KV_DTYPES, check_index, check_len, check_softcap, check_tensor, check_window
from .heuristics import can_page
from .indexing import exclusive_cumsum
from .reference import dequantize, gather_kv, page_list_slots

Tensor = torch.Tensor

__all__ = ["ExtendPlan", "plan_extend", "widened_page_plan", "extend_attention", "can_page"]


@dataclass
class ExtendPlan:
    """The keys of one extend batch, shared by every layer.

    Request b's keys are its ``key_pages`` (whole pages of the pool, read in place; paged plans
    only), then its packed keys ``cu_seqlens_k[b] .. cu_seqlens_k[b+1]``.

    Attributes:
        cu_seqlens_q: int32 [B+1] offsets of each request's new tokens in the packed queries.
        cu_seqlens_k: int32 [B+1] offsets of each request's packed keys.
        key_slots: int64 the pool slot of every packed key; None when the packed keys are
            exactly the new tokens (no prefix, or every prefix ends on a page boundary).
        new_key_index: int64 [new tokens] where each new token's key sits among the packed keys
            (to place passed-in K/V when they are not in the pool: ``save_kv_cache=False``).
        max_seqlen_q, max_seqlen_k: the longest request's new tokens and keys (pages included).
        page_size: tokens per page of the pool.
        key_pages, key_page_offsets: int32 page ids of each request's whole prefix pages.
        grid_order: int32 [1] device flag for the dense kernel: 1 when requests share prefix pages.
        widen_slots: int64 the pool slots of the pages a widened copy holds, page after page in
            the order ``key_pages`` index them (``widened_page_plan``; each layer gathers them);
            None: ``key_pages`` are pool pages.
    """

    cu_seqlens_q: Tensor
    cu_seqlens_k: Tensor
    key_slots: Optional[Tensor]
    new_key_index: Optional[Tensor]
    max_seqlen_q: int
    max_seqlen_k: int
    page_size: int = 1
    key_pages: Optional[Tensor] = None
    key_page_offsets: Optional[Tensor] = None
    grid_order: Optional[Tensor] = None
    widen_slots: Optional[Tensor] = None

    @property
    def has_prefix(self) -> bool:
        return self.key_slots is not None or self.key_pages is not None

    @property
    def paged(self) -> bool:
        return self.key_pages is not None

    @property
    def widen_pages(self) -> Optional[Tensor]:
        """The pool pages a widened copy holds, in its order (None: no copy)."""
        if self.widen_slots is None:
            return None
        return torch.div(self.widen_slots[::self.page_size], self.page_size, rounding_mode="floor")


def _host_ints(name: str, values: Optional[Sequence[int]], device_values: Tensor) -> list:
    """The host copy of a length list (SGLang keeps one); read back from the device otherwise."""
    if values is None:
        return [int(x) for x in device_values.tolist()]
    values = [int(x) for x in values]
    if len(values) != device_values.shape[0]:
        raise ValueError(f"{name}: {len(values)} host lengths for {device_values.shape[0]} requests")
    return values


def plan_extend(
    req_to_token: Tensor,
    req_pool_indices: Tensor,
    prefix_lens: Tensor,
    extend_lens: Tensor,
    out_cache_loc: Tensor,
    *,
    prefix_lens_cpu: Optional[Sequence[int]] = None,
    extend_lens_cpu: Optional[Sequence[int]] = None,
    page_size: int = 1,
    paged: Optional[bool] = None,
    key_start: Optional[Tensor] = None,
    key_start_cpu: Optional[Sequence[int]] = None,
) -> ExtendPlan:
    """Plans an extend batch (see the module docstring).

    Args:
        req_to_token: [rows, max_context] KV slot of each request position.
        req_pool_indices, prefix_lens, extend_lens: [B] per request.
        out_cache_loc: [sum(extend_lens)] the slots of the new tokens, request-major.
        prefix_lens_cpu, extend_lens_cpu: the same lengths on the host; with them the plan
            needs no device-to-host copy.
        page_size: tokens per page; a paged plan assumes SGLang's page-aligned table for the
            prefixes (position j at slot ``page * page_size + j % page_size``).
        paged: read pages in place (default: whenever ``can_page(page_size)``).
        key_start, key_start_cpu: [B] the first prefix position each request's keys include (a
            sliding window's layers: the positions before it are neither read nor, in SGLang's
            hybrid SWA pool, still valid); paged plans start at the page holding it. The dense
            kernel's causal and window masks are relative to the last key, so keys that start
            later than position 0 give the same answer. None: 0.
    """
    device = req_to_token.device
    check_index("req_to_token", req_to_token, ndim=2, device=device)
    for name, t in (("req_pool_indices", req_pool_indices), ("prefix_lens", prefix_lens),
                    ("extend_lens", extend_lens)):
        check_index(name, t, device=device)
        check_len(name, t, req_pool_indices.shape[0], "one entry per request")
    check_index("out_cache_loc", out_cache_loc, device=device)
    pre_host = _host_ints("prefix_lens_cpu", prefix_lens_cpu, prefix_lens)
    ext_host = _host_ints("extend_lens_cpu", extend_lens_cpu, extend_lens)
    check_len("out_cache_loc", out_cache_loc, sum(ext_host), "one slot per new token")
    if any(p + e > req_to_token.shape[1] for p, e in zip(pre_host, ext_host)):
        raise ValueError(f"prefix_lens + extend_lens: a request is longer than req_to_token's "
                         f"{req_to_token.shape[1]} positions")
    if paged is None:
        paged = can_page(page_size)
    if paged and not can_page(page_size):
        raise ValueError(f"page_size: paged plans need a multiple of 8 tokens, got {page_size}")

    i64 = torch.int64
    ext, pre = extend_lens.to(i64), prefix_lens.to(i64)
    start = torch.zeros_like(pre)
    if key_start is not None:
        check_index("key_start", key_start, device=device)
        check_len("key_start", key_start, pre.shape[0], "one entry per request")
        start_host = _host_ints("key_start_cpu", key_start_cpu, key_start)
        if any(s < 0 or s > p for s, p in zip(start_host, pre_host)):
            raise ValueError("key_start: expected 0 <= key_start <= prefix_lens for every request")
        unit = page_size if paged else 1  # a paged plan reads whole pages from the one holding the start
        start_host = [s - s % unit for s in start_host]
        start = torch.div(key_start.to(i64), unit, rounding_mode="floor") * unit
        pre = pre - start
        pre_host = [p - s for p, s in zip(pre_host, start_host)]
    total_q, total_prefix = sum(ext_host), sum(pre_host)
    cu_q = exclusive_cumsum(ext)
    max_q = max(ext_host, default=0)
    if total_prefix == 0:
        return ExtendPlan(cu_q.to(torch.int32), cu_q.to(torch.int32), None, None, max_q, max_q)

    batch = ext.shape[0]
    # whole prefix pages read in place (paged plans); the prefix's remainder is packed
    full_host = [p // page_size if paged else 0 for p in pre_host]
    paged = paged and sum(full_host) > 0
    tail_host = [p - f * page_size for p, f in zip(pre_host, full_host)]  # packed prefix tokens
    rows = req_pool_indices.to(i64)
    max_k = max((p + e for p, e in zip(pre_host, ext_host)), default=0)
    pages = offsets = order = None
    if paged:
        full = torch.div(pre, page_size, rounding_mode="floor")
        pages, offsets, order = _page_lists(req_to_token, rows, start, full, page_size, sum(full_host))
    if not any(tail_host):  # packed keys = the new tokens
        return ExtendPlan(cu_q.to(torch.int32), cu_q.to(torch.int32), None, None, max_q, max_k, page_size,
                          pages, offsets, order)
    skip = full * page_size if paged else torch.zeros_like(pre)  # prefix positions covered by pages
    tail_pre = pre - skip
    first_packed = start + skip  # the table position of each request's first packed key

    cu_k, new_key_index = packed_key_offsets(tail_pre, ext, cu_q, total_q)
    total_k = total_q + sum(tail_host)
    # packed key j: request r, position first_packed[r] + i; a prefix position reads req_to_token, a new one
    # out_cache_loc
    r = torch.repeat_interleave(torch.arange(batch, device=device), tail_pre + ext, output_size=total_k)
    i = torch.arange(total_k, device=device) - cu_k[r]
    in_prefix = i < tail_pre[r]
    from_table = req_to_token[rows[r], first_packed[r] + i].to(i64)
    from_new = out_cache_loc.to(i64)[(cu_q[r] + i - tail_pre[r]).clamp(0, max(total_q - 1, 0))] if total_q else from_table
    key_slots = torch.where(in_prefix, from_table, from_new)
    return ExtendPlan(cu_q.to(torch.int32), cu_k.to(torch.int32), key_slots, new_key_index, max_q, max_k,
                      page_size, pages, offsets, order)


def packed_key_offsets(tail: Tensor, ext: Tensor, cu_q: Tensor, total_q: int) -> Tuple[Tensor, Tensor]:
    """Where the dense kernel's packed keys go when each request's keys are its ``tail`` packed
    prefix tokens, then its ``ext`` new tokens (after any whole pages read in place): the packed
    offsets cu_k [B+1] and the packed index of each of the ``total_q`` new tokens (int64; ``cu_q``
    are the new tokens' offsets)."""
    cu_k = exclusive_cumsum(tail + ext)
    rq = torch.repeat_interleave(torch.arange(ext.shape[0], device=ext.device), ext, output_size=total_q)
    new_key_index = cu_k[rq] + tail[rq] + torch.arange(total_q, device=ext.device) - cu_q[rq].to(torch.int64)
    return cu_k, new_key_index


def _page_lists(req_to_token: Tensor, rows: Tensor, start: Tensor, counts: Tensor, page_size: int,
                total_pages: int):
    """``counts[b]`` pages of each request from position ``start[b]`` on (a multiple of page_size;
    page id = slot of the page start over page_size), their CSR offsets, and the kernel's grid-order flag: 1 when two requests start
    on the same page (the radix cache hands out one page list for a common prefix)."""
    device = req_to_token.device
    batch = counts.shape[0]
    offsets = exclusive_cumsum(counts)
    r = torch.repeat_interleave(torch.arange(batch, device=device), counts, output_size=total_pages)
    j = torch.arange(total_pages, device=device) - offsets[r]
    pages = torch.div(req_to_token[rows[r], start[r] + j * page_size], page_size, rounding_mode="floor").to(torch.int32)
    # requests without pages get distinct negative ids; few ops, as each launch costs the host
    first = torch.where(counts > 0, pages[offsets[:-1].clamp(max=total_pages - 1)].to(torch.int64),
                        -1 - torch.arange(batch, device=device))
    if batch <= 2048:
        pairs = (first.unsqueeze(0) == first.unsqueeze(1)).sum()
        order = (pairs > batch).to(torch.int32).reshape(1)
    else:
        ordered = torch.sort(first).values
        order = (ordered[1:] == ordered[:-1]).any().to(torch.int32).reshape(1)
    return pages, offsets.to(torch.int32), order


def widened_page_plan(plan: ExtendPlan) -> ExtendPlan:
    """The plan for a pool whose pages are widened before the kernel reads them (FP8 pools):
    ``key_pages`` renumbered to index a compact copy of the plan's distinct pages, whose slots
    ``widen_slots`` lists (once per batch, for every layer). Pages shared by several requests keep
    one number, so the grid-order flag still holds. Plans that read no pages in place are
    returned as they are. One device sync per batch (the number of distinct pages sizes the copy)."""
    if not plan.paged or plan.widen_slots is not None:
        return plan
    pages, compact = torch.unique(plan.key_pages.to(torch.int64), return_inverse=True)
    return replace(plan, key_pages=compact.to(torch.int32), widen_slots=page_list_slots(pages, plan.page_size))


def _pool_rows(cache: Tensor, slots: Tensor) -> Tensor:
    """Rows of a pool by slot: SGLang's [slots, Hkv, D], or head-major pages [pages, Hkv, page, D]."""
    return cache[slots] if cache.dim() == 3 else gather_kv(cache, slots, cache.shape[2])


def extend_attention(
    q: Tensor,
    k_new: Optional[Tensor],
    v_new: Optional[Tensor],
    k_cache: Tensor,
    v_cache: Tensor,
    plan: ExtendPlan,
    softmax_scale: float,
    *,
    new_kv_in_cache: bool = True,
    out_cache_loc: Optional[Tensor] = None,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
    causal: bool = True,
    window_left: int = -1,
    softcap: float = 0.0,
) -> Tuple[Tensor, Tensor]:
    """One layer of an extend batch: ``(out [Tq, Hq, D] in q's dtype, lse [Tq, Hq] float32)``.

    Args:
        q: [Tq, Hq, D] the new tokens' queries, request-major.
        k_new, v_new: [Tq, Hkv, D] their keys and values, or None when only the pool has them.
        k_cache, v_cache: SGLang's pool [slots, Hkv, D] (head-major pages [pages, Hkv, page, D]
            for plans that read no pages in place).
        new_kv_in_cache: the new K/V were stored in the pool before this call (SGLang's
            ``save_kv_cache``); then all keys come from one gather.
        out_cache_loc: the new tokens' slots, needed when k_new is None and no request has a prefix.
        k_scale, v_scale: an FP8 pool holds K / k_scale and V / v_scale. The dense kernel reads
            16-bit keys, so the rows it reads are widened to q's dtype (times the scale) once per
            layer: a paged plan's distinct pages (plan it through ``widened_page_plan``), and the
            packed keys on their gather. Passed-in new K/V are used as they are.
        causal: each new token sees the prefix and the new tokens up to itself (decoders); False:
            every key of its request (encoder-only layers of embedding models).
        window_left: a causal sliding window (``attention``'s), -1 for none; plan such layers with
            ``key_start`` at ``prefix_lens - window_left`` so that no key left of it is read.
        softcap: the logit soft-cap (``attention``'s), 0 for none.
    """
    check_tensor("k_cache", k_cache, ndim=(3, 4))
    check_window("window_left", window_left, causal)
    softcap = check_softcap("softcap", softcap)
    if plan.paged and k_cache.dim() != 3:
        raise ValueError("k_cache: a plan that reads pages in place needs SGLang's pool [slots, Hkv, D]")
    if plan.paged and k_cache.dtype in FP8_KV_DTYPES and plan.widen_slots is None:
        raise ValueError(f"plan: a {k_cache.dtype} pool's pages are widened before they are read; pass the plan "
                         f"through widened_page_plan (or plan with paged=False)")
    if k_new is None and not new_kv_in_cache:
        raise ValueError("k_new: needed when the new tokens' K/V are not in the pool (new_kv_in_cache=False)")
    if plan.key_slots is None:  # the packed keys are the new tokens
        if k_new is None:
            if out_cache_loc is None:
                raise ValueError("out_cache_loc: needed to read the new tokens' K/V from the pool")
            k_new = dequantize(_pool_rows(k_cache, out_cache_loc), k_scale, q.dtype)
            v_new = dequantize(_pool_rows(v_cache, out_cache_loc), v_scale, q.dtype)
        keys, values = k_new, v_new
    else:
        keys = dequantize(_pool_rows(k_cache, plan.key_slots), k_scale, q.dtype)
        values = dequantize(_pool_rows(v_cache, plan.key_slots), v_scale, q.dtype)
        if not new_kv_in_cache:  # the pool holds stale K/V at the new tokens' slots
            keys[plan.new_key_index] = k_new.to(keys.dtype)
            values[plan.new_key_index] = v_new.to(values.dtype)
    keys, values = keys.to(q.dtype), values.to(q.dtype)
    if plan.paged:
        if plan.widen_slots is not None:  # the kernel reads the widened copy's pages in place
            k_cache = dequantize(k_cache[plan.widen_slots], k_scale, q.dtype)
            v_cache = dequantize(v_cache[plan.widen_slots], v_scale, q.dtype)
        return ops.paged_prefill_op(q, keys, values, plan.cu_seqlens_q, plan.cu_seqlens_k, k_cache, v_cache,
                                    plan.key_pages, plan.key_page_offsets, plan.page_size, plan.max_seqlen_q,
                                    causal, softmax_scale, plan.grid_order, window_left, softcap)
    return ops.attention_op(q, keys, values, plan.cu_seqlens_q, plan.cu_seqlens_k, plan.max_seqlen_q,
                            plan.max_seqlen_k, causal, softmax_scale, window_left, softcap)


def pages_in_place(req_to_token: Tensor, prefix_lens: Tensor, page_size: int) -> bool:
    """Whether every whole prefix page of every request is one pool page, in order: the tokens at
    positions ``p * page_size + i`` sit in slots ``s + i`` with ``s`` a multiple of ``page_size``
    (SGLang's paged allocator guarantees it; a hand-built layout may not). One device sync."""
    whole = torch.div(prefix_lens.to(torch.int64), page_size, rounding_mode="floor") * page_size
    width = min(req_to_token.shape[1], int(whole.max()) if whole.numel() else 0)
    if width == 0:
        return True
    j = torch.arange(width, device=req_to_token.device)
    table = req_to_token[:, :width].to(torch.int64)
    start = table[:, j - j % page_size]
    ok = (table == start + j % page_size) & (start % page_size == 0)
    return bool((ok | (j >= whole.unsqueeze(1))).all())


@torch.library.register_kernel("flashcore::paged_extend", "cuda")
def _paged_extend_cuda(q, k_new, v_new, k_cache, v_cache, row_offsets, cols, page_offsets, counts, prefix_lens,
                       cu_seqlens_q, max_seqlen_q, page_size, softmax_scale, k_scale=1.0, v_scale=1.0):
    """``paged_extend`` through the backend's path: the prefix layout as a page table, an
    ``ExtendPlan`` over it (whole pages read in place where the pool and the table allow), and
    ``extend_attention`` with the new K/V passed in (they are not in the pool)."""
    if not config.use_kernels(q.device):
        return ops.paged_extend_reference(q, k_new, v_new, k_cache, v_cache, row_offsets, cols, page_offsets, counts,
                                          prefix_lens, cu_seqlens_q, page_size, softmax_scale, k_scale, v_scale)
    layout = ops.layout_view(row_offsets, cols, page_offsets, counts, page_size, prefix_lens)
    table, rows, prefix = layout.page_table()
    ext = cu_seqlens_q[1:] - cu_seqlens_q[:-1]
    pre_host = [int(x) for x in prefix.tolist()]
    ext_host = [int(x) for x in ext.tolist()]
    width = max((p + e for p, e in zip(pre_host, ext_host)), default=0)
    if width > table.shape[1]:  # room for the new tokens' positions (their slots come from out_cache_loc)
        table = torch.nn.functional.pad(table, (0, width - table.shape[1]))
    paged = (k_cache.dim() == 3 and can_page(page_size) and sum(pre_host) > 0
             and pages_in_place(table, prefix, page_size))
    total_q = q.shape[0]
    placeholder_slots = torch.zeros(total_q, dtype=torch.int64, device=q.device)  # replaced by k_new/v_new
    plan = plan_extend(table, rows, prefix, ext, placeholder_slots,
                       prefix_lens_cpu=pre_host, extend_lens_cpu=ext_host, page_size=page_size, paged=paged)
    if k_cache.dtype in FP8_KV_DTYPES:
        plan = widened_page_plan(plan)
    return extend_attention(q, k_new, v_new, k_cache, v_cache, plan, softmax_scale, new_kv_in_cache=False,
                            k_scale=k_scale, v_scale=v_scale)
