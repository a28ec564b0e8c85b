"""Extend (prefill over a cached prefix) planned once per batch straight from SGLang's page table.

Every layer of an extend batch attends over the same keys: request b's cached prefix (slots
``req_to_token[req_pool_indices[b], :prefix_lens[b]]``) followed by its new tokens (slots
``out_cache_loc``, where SGLang stores them before attention runs). ``plan_extend`` turns that
into one packed list of pool slots and the varlen offsets of the dense kernel, with a few
vectorized ops and no host sync when the host already knows the lengths (SGLang's
``*_cpu`` lists). Each layer then costs one gather of K and one of V (none at all when no
request has a prefix: the new K/V go to the kernel as they are) and one dense, bottom-right
causal varlen call — instead of rebuilding slots and checking offsets per layer.

A prefix that several requests share is still gathered once per reader here (see the notes in
``kernels._paged_extend_cuda``); the decode path is where sharing is exploited.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from . import ops
from .checks import check_index, check_len, check_tensor
from .layout import _exclusive_cumsum

Tensor = torch.Tensor

__all__ = ["ExtendPlan", "plan_extend", "extend_attention"]


@dataclass
class ExtendPlan:
    """The keys of one extend batch, shared by every layer.

    Attributes:
        cu_seqlens_q: int32 [B+1] offsets of each request's new tokens in the packed queries.
        cu_seqlens_k: int32 [B+1] offsets of each request's keys (prefix, then new tokens).
        key_slots: int64 [total keys] the pool slot of every key, packed; None when no request
            has a prefix (then the keys are exactly the new tokens, in query order).
        new_key_index: int64 [new tokens] where each new token's key sits among the packed keys
            (used when the new K/V are not in the pool: ``save_kv_cache=False``).
        max_seqlen_q, max_seqlen_k: the longest request's new tokens and keys.
    """

    cu_seqlens_q: Tensor
    cu_seqlens_k: Tensor
    key_slots: Optional[Tensor]
    new_key_index: Optional[Tensor]
    max_seqlen_q: int
    max_seqlen_k: int

    @property
    def has_prefix(self) -> bool:
        return self.key_slots is not None


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
) -> ExtendPlan:
    """Plans an extend batch (see the module docstring).

    Args:
        req_to_token: [rows, max_context] KV slot of each request position.
        req_pool_indices, prefix_lens, extend_lens: [B] per request.
        out_cache_loc: [sum(extend_lens)] the slots of the new tokens, request-major.
        prefix_lens_cpu, extend_lens_cpu: the same lengths on the host; with them the plan
            needs no device-to-host copy.
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
    total_q, total_prefix = sum(ext_host), sum(pre_host)
    check_len("out_cache_loc", out_cache_loc, total_q, "one slot per new token")
    if any(p + e > req_to_token.shape[1] for p, e in zip(pre_host, ext_host)):
        raise ValueError(f"prefix_lens + extend_lens: a request is longer than req_to_token's "
                         f"{req_to_token.shape[1]} positions")

    i64 = torch.int64
    ext, pre = extend_lens.to(i64), prefix_lens.to(i64)
    cu_q = _exclusive_cumsum(ext)
    max_q = max(ext_host, default=0)
    if total_prefix == 0:
        return ExtendPlan(cu_q.to(torch.int32), cu_q.to(torch.int32), None, None, max_q, max_q)

    batch = ext.shape[0]
    seq = pre + ext
    cu_k = _exclusive_cumsum(seq)
    total_k = total_q + total_prefix
    arange_b = torch.arange(batch, device=device)
    # key j: request r, position i in it; a prefix position reads req_to_token, a new one out_cache_loc
    r = torch.repeat_interleave(arange_b, seq, output_size=total_k)
    i = torch.arange(total_k, device=device) - cu_k[r]
    in_prefix = i < pre[r]
    from_table = req_to_token[req_pool_indices.to(i64)[r], i].to(i64)
    from_new = out_cache_loc.to(i64)[(cu_q[r] + i - pre[r]).clamp(0, max(total_q - 1, 0))] if total_q else from_table
    key_slots = torch.where(in_prefix, from_table, from_new)
    rq = torch.repeat_interleave(arange_b, ext, output_size=total_q)
    new_key_index = cu_k[rq] + pre[rq] + torch.arange(total_q, device=device) - cu_q[rq]
    max_k = max((p + e for p, e in zip(pre_host, ext_host)), default=0)
    return ExtendPlan(cu_q.to(torch.int32), cu_k.to(torch.int32), key_slots, new_key_index, max_q, max_k)


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
) -> Tensor:
    """One layer of an extend batch: ``out [Tq, Hq, D]`` in q's dtype.

    Args:
        q: [Tq, Hq, D] the new tokens' queries, request-major.
        k_new, v_new: [Tq, Hkv, D] their keys and values, or None when only the pool has them.
        k_cache, v_cache: SGLang's pool [slots, Hkv, D].
        new_kv_in_cache: the new K/V were stored in the pool before this call (SGLang's
            ``save_kv_cache``); then all keys come from one gather.
        out_cache_loc: the new tokens' slots, needed when k_new is None and no request has a prefix.
    """
    check_tensor("k_cache", k_cache, ndim=3)
    if k_new is None and not new_kv_in_cache:
        raise ValueError("k_new: needed when the new tokens' K/V are not in the pool (new_kv_in_cache=False)")
    if not plan.has_prefix:
        if k_new is None:
            if out_cache_loc is None:
                raise ValueError("out_cache_loc: needed to read the new tokens' K/V from the pool")
            k_new, v_new = k_cache[out_cache_loc], v_cache[out_cache_loc]
        keys, values = k_new, v_new
    else:
        keys, values = k_cache[plan.key_slots], v_cache[plan.key_slots]
        if not new_kv_in_cache:  # the pool holds stale K/V at the new tokens' slots
            keys[plan.new_key_index] = k_new.to(keys.dtype)
            values[plan.new_key_index] = v_new.to(values.dtype)
    out, _ = ops.attention_op(q, keys.to(q.dtype), values.to(q.dtype), plan.cu_seqlens_q, plan.cu_seqlens_k,
                              plan.max_seqlen_q, plan.max_seqlen_k, True, softmax_scale)
    return out
