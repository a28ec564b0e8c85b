"""Sliding-window attention (SGLang's ``layer.sliding_window_size``, FlashAttention's
``window_size[0]``): the query at position i sees keys i - window_left .. i.

Decode reads each request's last ``min(len, window_left + 1)`` keys. Rather than teach the
decode planner a start position, ``window_table`` copies those slots into the first columns of a
small table (one row per request, ``window_left + 1`` wide) and the planner runs over it as over
SGLang's own: same kernels, same chunking, and requests whose windows hold the same slots (equal
lengths over a shared prefix: parallel samples, a batch of one prompt) still share their loads.
The copy is one gather per step, shared by every windowed layer, and into fixed buffers under
CUDA graphs. SGLang's hybrid SWA pool keeps windowed layers' K/V in a pool of its own; its
``full_to_swa_index_mapping`` is applied in the same gather (``slot_map``).

Extend needs no table: ``plan_extend(key_start=...)`` starts each request's keys at its first
query's window, and the dense kernel masks (and skips whole key tiles) left of each row's window.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

Tensor = torch.Tensor


def window_width(window_left: int, max_context: int) -> int:
    """Columns of a window table: the keys one query sees, at most the page table's width."""
    return max(1, min(window_left + 1, max_context))


def extend_key_start(prefix_lens: Tensor, window_left: int) -> Tensor:
    """The first prefix position an extend request's first new token sees."""
    return (prefix_lens.to(torch.int64) - window_left).clamp(min=0)


def window_table(
    req_to_token: Tensor,
    req_pool_indices: Tensor,
    seq_lens: Tensor,
    window_left: int,
    *,
    slot_map: Optional[Tensor] = None,
    query_pos: Optional[Tensor] = None,
    out: Optional[Tensor] = None,
    out_lens: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor]:
    """Each decode request's window as a page-table row: ``(table [B, W], lens [B])``.

    Row b holds the slots of positions ``start[b] .. seq_lens[b] - 1`` of
    ``req_to_token[req_pool_indices[b]]`` (through ``slot_map`` when given): the cached keys a
    query at position ``query_pos[b]`` sees, ``start[b] = max(0, query_pos[b] - window_left)``
    (``query_pos`` default: ``seq_lens - 1``, decode; a speculative draft token sits past its
    context), ``lens[b] = seq_lens[b] - start[b]`` (at least 0), ``W = window_width(window_left,
    req_to_token.shape[1])``; columns past ``lens[b]`` hold 0. ``out`` [>= B, W] and
    ``out_lens`` [>= B]: fixed buffers (CUDA graphs) to write into; the views of their first B
    rows are returned. No host sync.
    """
    width = window_width(window_left, req_to_token.shape[1])
    i64 = torch.int64
    lens = seq_lens.to(i64)
    qpos = lens - 1 if query_pos is None else query_pos.to(i64)
    start = (qpos - window_left).clamp(min=0)
    keys = (lens - start).clamp(min=0, max=width)
    col = torch.arange(width, device=req_to_token.device)
    pos = start.unsqueeze(1) + col  # [B, W]
    inside = col < keys.unsqueeze(1)
    pos = torch.where(inside, pos, torch.zeros_like(pos))
    slots = req_to_token[req_pool_indices.to(i64).unsqueeze(1), pos]
    if slot_map is not None:
        slots = slot_map[slots.to(i64)]
    slots = torch.where(inside, slots.to(req_to_token.dtype), torch.zeros((), dtype=req_to_token.dtype,
                                                                           device=slots.device))
    if out is None:
        return slots, keys.to(seq_lens.dtype)
    batch = seq_lens.shape[0]
    if out.shape[0] < batch or out.shape[1] != width or out.dtype != req_to_token.dtype:
        raise ValueError(f"out: expected a [>= {batch}, {width}] {req_to_token.dtype} buffer, got "
                         f"{tuple(out.shape)} {out.dtype}")
    out[:batch].copy_(slots)
    out_lens[:batch].copy_(keys)
    return out[:batch], out_lens[:batch]
