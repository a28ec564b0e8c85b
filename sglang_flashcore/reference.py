"""Reference attention in float32 (float64 if the inputs are): the oracle of the tests
and the CPU path of the ops.

Conventions shared with the kernels:
* layouts are token-major: q [tokens, Hq, D], k/v [tokens, Hkv, D] (or a batch dim first);
* GQA/MQA: query head h reads KV head h // (Hq // Hkv);
* causal masks are aligned bottom-right: with Sq queries over Sk keys, query i sees
  keys j <= i + Sk - Sq (SGLang's extend: new tokens after a cached prefix);
* the LSE is the natural-log log-sum-exp of the scaled scores, shaped like q without D;
  a query that sees no key gets output 0 and LSE -inf.

Non-finite inputs propagate as in torch SDPA (its math backend): a query whose scores include a
NaN or +inf (NaN or Inf in q, or in a key it sees) gets NaN output and NaN LSE; a NaN or Inf value
that a query weighs gives NaN or Inf in those output columns and leaves its LSE finite; scores of
-inf weigh nothing, so a query whose every score is -inf is empty (0, -inf), as SDPA gives 0 for a
fully masked row. Where SDPA has no counterpart, the LSE: its flash kernel returns NaN for a row
with a +inf score (``logsumexp`` would say +inf) and so do we, as an online softmax must. A
non-finite value at a key the causal mask hides from a query may still reach that query through
the product 0 x NaN (SDPA's math and CPU flash backends do the same; the kernels only within one
key tile), so no caller should rely on masked keys' values being ignored.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from .checks import check_cu_seqlens, check_range
from .indexing import segment_arange
from .layout import PagedLayout, SharingPlan

__all__ = [
    "attention_ref",
    "paged_decode_ref",
    "paged_decode_planned_ref",
    "paged_extend_ref",
    "merge_states_ref",
    "gather_kv",
    "page_list_slots",
    "paged_prefill_ref",
    "dequantize",
]


def _compute_dtype(*ts: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in ts) else torch.float32


def _poisoned(lse: torch.Tensor) -> torch.Tensor:
    """An LSE of +inf means a +inf score: its row's softmax is undefined (NaN), as in SDPA."""
    return torch.where(lse == float("inf"), torch.full_like(lse, float("nan")), lse)


def _softmax_rows(scores: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Softmax over the last dim: (probabilities, lse). A row of -inf scores (no key) gets zeros
    and -inf; a row with a NaN or +inf score gets NaN (see the module doc)."""
    lse = _poisoned(torch.logsumexp(scores, dim=-1))
    empty = lse == float("-inf")
    # exp(-inf - 0) = 0 for empty rows; NaN lse rows stay NaN
    p = torch.exp(scores - torch.where(empty, torch.zeros_like(lse), lse).unsqueeze(-1))
    return p, lse


def capped(scores: torch.Tensor, softcap: float) -> torch.Tensor:
    """Logit soft-cap (Gemma 2, Grok): ``softcap * tanh(s / softcap)`` of the scaled scores; 0: none."""
    return softcap * torch.tanh(scores / softcap) if softcap > 0 else scores


def attend_one(q, k, v, scale: float, causal: bool, window_left: int = -1, softcap: float = 0.0):
    """q [Sq, Hq, D], k/v [Sk, Hkv, D] (compute dtype) -> out [Sq, Hq, D], lse [Sq, Hq]. Causal:
    query i (position i + Sk - Sq) sees keys j <= i + Sk - Sq, and with ``window_left`` >= 0 only
    those with j >= i + Sk - Sq - window_left. ``softcap``: see ``capped``."""
    sq, hq, _ = q.shape
    sk, hkv, _ = k.shape
    group = hq // hkv
    kh = k.repeat_interleave(group, dim=1).transpose(0, 1)  # [Hq, Sk, D]
    vh = v.repeat_interleave(group, dim=1).transpose(0, 1)
    scores = capped(torch.matmul(q.transpose(0, 1), kh.transpose(1, 2)) * scale, softcap)  # [Hq, Sq, Sk]
    if causal:
        i = torch.arange(sq, device=q.device).unsqueeze(1)
        j = torch.arange(sk, device=q.device).unsqueeze(0)
        scores = scores.masked_fill(j > i + (sk - sq), float("-inf"))
        if window_left >= 0:
            scores = scores.masked_fill(j < i + (sk - sq) - window_left, float("-inf"))
    p, lse = _softmax_rows(scores)
    out = torch.matmul(p, vh)  # [Hq, Sq, D]
    return out.transpose(0, 1), lse.transpose(0, 1)


def attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    softmax_scale: Optional[float] = None,
    cu_seqlens_q: Optional[torch.Tensor] = None,
    cu_seqlens_k: Optional[torch.Tensor] = None,
    window_left: int = -1,
    softcap: float = 0.0,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Dense attention. Batched: q [B, Sq, Hq, D], k/v [B, Sk, Hkv, D].
    Ragged: q [Tq, Hq, D], k/v [Tk, Hkv, D] with cu_seqlens_q/k [B+1]. ``window_left``: the
    causal sliding window (``attend_one``), -1 for none; ``softcap``: the logit soft-cap, 0 for none.

    Returns (out, lse) in the compute dtype: out shaped like q, lse like q without D.
    """
    cd = _compute_dtype(q, k, v)
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
    if cu_seqlens_q is None:
        outs, lses = zip(*(
            attend_one(q[b].to(cd), k[b].to(cd), v[b].to(cd), scale, causal, window_left, softcap)
            for b in range(q.shape[0])
        )) if q.shape[0] else ((), ())
        if not outs:
            return q.new_zeros(q.shape, dtype=cd), q.new_zeros(q.shape[:-1], dtype=cd)
        return torch.stack(outs), torch.stack(lses)
    out = torch.zeros(q.shape, dtype=cd, device=q.device)
    lse = torch.full(q.shape[:-1], float("-inf"), dtype=cd, device=q.device)
    # the offsets drive the slicing below: bad ones would cut wrong rows silently
    check_cu_seqlens("cu_seqlens_q", cu_seqlens_q, q.shape[0], q.device)
    check_cu_seqlens("cu_seqlens_k", cu_seqlens_k, k.shape[0], q.device)
    cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    for b in range(len(cq) - 1):
        qs, qe, ks, ke = cq[b], cq[b + 1], ck[b], ck[b + 1]
        if qe == qs:
            continue
        o, s = attend_one(q[qs:qe].to(cd), k[ks:ke].to(cd), v[ks:ke].to(cd), scale, causal, window_left, softcap)
        out[qs:qe], lse[qs:qe] = o, s
    return out, lse


def checked_slots(name: str, slots: torch.Tensor, cache: torch.Tensor, page_size: int) -> torch.Tensor:
    """``slots`` after checking they lie in the pool: the reference indexes with them, where an id
    past the pool would be a raw IndexError and -1 would wrap to the last slot."""
    num_slots = cache.shape[0] * (page_size if cache.dim() == 4 else 1)
    check_range(name, slots, 0, num_slots, "KV slot")
    return slots


def gather_kv(cache: torch.Tensor, slots: torch.Tensor, page_size: int) -> torch.Tensor:
    """Rows of a KV pool by slot id -> [n, Hkv, D].

    ``cache`` is SGLang's slot-major pool [slots, Hkv, D] or the seed's head-major
    pages [num_pages, Hkv, page_size, D].
    """
    if cache.dim() == 3:
        return cache[slots]
    return cache[slots // page_size, :, slots % page_size]


def page_list_slots(key_pages: torch.Tensor, page_size: int) -> torch.Tensor:
    """Pool slots of every token of every listed (whole) page, request after request."""
    pages = key_pages.to(torch.int64)
    return (pages.unsqueeze(1) * page_size + torch.arange(page_size, device=pages.device)).reshape(-1)


def paged_prefill_ref(q, k, v, cu_seqlens_q, cu_seqlens_k, k_cache, v_cache, key_pages, key_page_offsets,
                      page_size: int, causal: bool, softmax_scale: float, window_left: int = -1,
                      softcap: float = 0.0):
    """Varlen attention whose request b attends to its whole pool pages (``key_pages[key_page_offsets[b]:
    key_page_offsets[b+1]]`` of the pool [slots, Hkv, D]) followed by its packed k/v rows."""
    i64 = torch.int64
    batch = cu_seqlens_q.shape[0] - 1
    po, ck = key_page_offsets.to(i64).tolist(), cu_seqlens_k.to(i64).tolist()
    page_slots = checked_slots("key_pages", page_list_slots(key_pages, page_size), k_cache, page_size)
    keys, values, lens = [], [], []
    for b in range(batch):
        slots = page_slots[po[b] * page_size: po[b + 1] * page_size]
        keys.append(torch.cat([k_cache[slots], k[ck[b]:ck[b + 1]].to(k_cache.dtype)]))
        values.append(torch.cat([v_cache[slots], v[ck[b]:ck[b + 1]].to(v_cache.dtype)]))
        lens.append(keys[-1].shape[0])
    cu_all = torch.tensor([0] + lens, device=q.device).cumsum(0)
    hkv, d = k_cache.shape[1], k_cache.shape[2]
    cat = lambda ts: torch.cat(ts) if ts else k_cache.new_zeros(0, hkv, d)  # noqa: E731
    return attention_ref(q, cat(keys), cat(values), causal=causal, softmax_scale=softmax_scale,
                         cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_all, window_left=window_left, softcap=softcap)


def _segment_softmax_attend(scores, values, seg, num_segments):
    """Softmax of scores [n, H] within segments seg [n], weighted sum of values [n, H, D].

    Returns out [num_segments, H, D] and lse [num_segments, H] (0 / -inf for empty segments).
    """
    n, h = scores.shape
    d = values.shape[-1]
    cd = scores.dtype
    m = torch.full((num_segments, h), float("-inf"), dtype=cd, device=scores.device)
    m = m.scatter_reduce(0, seg.unsqueeze(1).expand(n, h), scores, "amax")  # NaN propagates
    # a segment whose scores are all -inf shifts by 0, so its weights are 0, not exp(-inf + inf)
    m = torch.where(m == float("-inf"), torch.zeros_like(m), m)
    e = torch.exp(scores - m[seg])
    denom = torch.zeros((num_segments, h), dtype=cd, device=scores.device).index_add_(0, seg, e)
    acc = torch.zeros((num_segments, h, d), dtype=cd, device=scores.device)
    acc.index_add_(0, seg, e.unsqueeze(-1) * values)
    empty = denom == 0
    out = acc / torch.where(empty, torch.ones_like(denom), denom).unsqueeze(-1)
    # a +inf score gives m = +inf and a NaN denominator, so a NaN LSE (as _softmax_rows)
    lse = torch.where(empty, torch.full_like(m, float("-inf")), m + torch.log(denom))
    return out, lse


def dequantize(rows: torch.Tensor, scale: float, dtype: torch.dtype) -> torch.Tensor:
    """Pool rows as ``dtype`` values: the stored ones times the pool's scale (FP8 pools)."""
    rows = rows.to(dtype)
    return rows * scale if scale != 1.0 else rows


def paged_decode_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    layout: PagedLayout,
    softmax_scale: Optional[float] = None,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
    softcap: float = 0.0,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """One query token per request over its pages: q [B, Hq, D] -> (out [B, Hq, D], lse [B, Hq]).
    The pools hold K / k_scale and V / v_scale (FP8 pools; 1 otherwise); ``softcap``: ``capped``."""
    cd = _compute_dtype(q, k_cache, v_cache)
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
    rows, slots = layout.token_slots()
    checked_slots("layout", slots, k_cache, layout.page_size)
    group = q.shape[1] // k_cache.shape[-3 if k_cache.dim() == 4 else 1]
    k = dequantize(gather_kv(k_cache, slots, layout.page_size), k_scale, cd).repeat_interleave(group, dim=1)
    v = dequantize(gather_kv(v_cache, slots, layout.page_size), v_scale, cd).repeat_interleave(group, dim=1)
    scores = capped((q.to(cd)[rows] * k).sum(-1) * scale, softcap)
    return _segment_softmax_attend(scores, v, rows, q.shape[0])


def paged_decode_planned_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    layout: PagedLayout,
    plan: SharingPlan,
    softmax_scale: Optional[float] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The decode kernel's algorithm in torch: one partial (O, LSE) per (work item, reader),
    then each request's partials merged in ``merge_partials`` order."""
    cd = _compute_dtype(q, k_cache, v_cache)
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
    group = q.shape[1] // k_cache.shape[-3 if k_cache.dim() == 4 else 1]
    i64 = torch.int64
    w_runs = (plan.work_entry_offsets[1:] - plan.work_entry_offsets[:-1]).to(i64)
    w_readers = (plan.work_reader_offsets[1:] - plan.work_reader_offsets[:-1]).to(i64)
    # every (partial, run) pair, then every token of that run
    part_w, _ = segment_arange(w_readers)
    pr_part, pr_j = segment_arange(w_runs[part_w])
    run = plan.work_entry_offsets.to(i64)[part_w[pr_part]] + pr_j
    tok_pair, tok_i = segment_arange(plan.entry_counts.to(i64)[run])
    tok_part = pr_part[tok_pair]
    slots = (plan.entry_pages.to(i64) * layout.page_size + plan.entry_offsets)[run[tok_pair]] + tok_i
    req = plan.work_readers.to(i64)[tok_part]
    k = gather_kv(k_cache, slots, layout.page_size).to(cd).repeat_interleave(group, dim=1)
    v = gather_kv(v_cache, slots, layout.page_size).to(cd).repeat_interleave(group, dim=1)
    scores = (q.to(cd)[req] * k).sum(-1) * scale
    part_o, part_lse = _segment_softmax_attend(scores, v, tok_part, plan.num_partials)
    # merge each request's partials, in the plan's fixed order
    batch = q.shape[0]
    out = torch.zeros(q.shape, dtype=cd, device=q.device)
    lse = torch.full(q.shape[:-1], float("-inf"), dtype=cd, device=q.device)
    ordered = plan.merge_partials.to(i64)
    owner = plan.work_readers.to(i64)[ordered]
    for step in range(int(torch.bincount(owner, minlength=batch).max()) if ordered.numel() else 0):
        # step-th partial of every request that has one: a fixed left-to-right fold
        pos = plan.merge_offsets.to(i64)[:-1] + step
        has = pos < plan.merge_offsets.to(i64)[1:]
        reqs = has.nonzero().squeeze(1)
        p = ordered[pos[reqs]]
        out[reqs], lse[reqs] = merge_states_ref(out[reqs], lse[reqs], part_o[p], part_lse[p])
    return out, lse


def paged_extend_ref(
    q: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    prefix_layout: PagedLayout,
    cu_seqlens_q: torch.Tensor,
    softmax_scale: Optional[float] = None,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Extend: request b's new tokens q[cu[b]:cu[b+1]] attend to all of its cached prefix
    (pages of ``prefix_layout`` row b, stored as K / k_scale and V / v_scale) and causally to the
    new tokens k/v_new[cu[b]:cu[b+1]] (as they are)."""
    cd = _compute_dtype(q, k_new, v_new)
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
    rows, slots = prefix_layout.token_slots()
    checked_slots("prefix_layout", slots, k_cache, prefix_layout.page_size)
    k_pre = dequantize(gather_kv(k_cache, slots, prefix_layout.page_size), k_scale, cd)
    v_pre = dequantize(gather_kv(v_cache, slots, prefix_layout.page_size), v_scale, cd)
    pre_off = torch.zeros(prefix_layout.batch_size + 1, dtype=torch.int64)
    pre_off[1:] = torch.cumsum(prefix_layout.seq_lens.to(torch.int64).cpu(), 0)
    out = torch.zeros(q.shape, dtype=cd, device=q.device)
    lse = torch.full(q.shape[:-1], float("-inf"), dtype=cd, device=q.device)
    cq = cu_seqlens_q.tolist()
    for b in range(len(cq) - 1):
        qs, qe = cq[b], cq[b + 1]
        if qe == qs:
            continue
        ps, pe = int(pre_off[b]), int(pre_off[b + 1])
        k = torch.cat([k_pre[ps:pe], k_new[qs:qe]]).to(cd)
        v = torch.cat([v_pre[ps:pe], v_new[qs:qe]]).to(cd)
        out[qs:qe], lse[qs:qe] = attend_one(q[qs:qe].to(cd), k, v, scale, causal=True)
    return out, lse


def merge_states_ref(
    v_a: torch.Tensor, s_a: torch.Tensor, v_b: torch.Tensor, s_b: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Combines two partial attention results over disjoint key sets.

    v_* [..., D] are softmax-normalised outputs, s_* [...] their LSEs. Returns the
    output and LSE over the union of the key sets. Two empty parts (-inf) give 0, -inf; a NaN
    (or +inf) LSE, or a NaN value, gives NaN, as the product of a NaN weight or value would.
    """
    cd = _compute_dtype(v_a, v_b)
    s_a, s_b = s_a.to(cd), s_b.to(cd)
    s = _poisoned(torch.logaddexp(s_a, s_b))
    s_safe = torch.where(s == float("-inf"), torch.zeros_like(s), s)  # two empty parts: weights 0
    w_a, w_b = torch.exp(s_a - s_safe), torch.exp(s_b - s_safe)
    v = v_a.to(cd) * w_a.unsqueeze(-1) + v_b.to(cd) * w_b.unsqueeze(-1)
    return v, s
