"""Small vectorized index helpers shared by the layout builders, the planners and the references.

Each works on CPU and CUDA tensors alike and, where the caller passes the sizes it already
knows, without a device-to-host sync.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

__all__ = ["exclusive_cumsum", "count_values", "segment_arange"]


def exclusive_cumsum(x: torch.Tensor) -> torch.Tensor:
    """[n] -> [n+1] int64 offsets: 0, x[0], x[0]+x[1], ..."""
    out = torch.zeros(x.shape[0] + 1, dtype=torch.int64, device=x.device)
    if x.numel():
        torch.cumsum(x.to(torch.int64), 0, out=out[1:])
    return out


def count_values(index: torch.Tensor, n: int) -> torch.Tensor:
    """How often each of 0..n-1 occurs in ``index`` (bincount without its device sync)."""
    out = torch.zeros(n, dtype=torch.int64, device=index.device)
    return out.index_add_(0, index, torch.ones_like(index, dtype=torch.int64))


def segment_arange(lengths: torch.Tensor, total: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """For ragged segments of the given lengths: (segment id, index within segment) of each element.
    ``total`` (the sum of lengths, if the caller knows it) saves a device sync."""
    lengths = lengths.to(torch.int64)
    seg = torch.repeat_interleave(torch.arange(lengths.shape[0], device=lengths.device), lengths,
                                  output_size=total)
    starts = exclusive_cumsum(lengths)[:-1]
    idx = torch.arange(seg.shape[0], device=lengths.device) - starts[seg]
    return seg, idx
