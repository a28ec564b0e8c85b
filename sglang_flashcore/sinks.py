"""Attention sinks (gpt-oss): one learned logit per query head that joins every row's softmax
denominator and contributes no value.

With a row's output ``o`` and log-sum-exp ``lse`` over its keys, the sink ``s`` turns them into
``o * exp(lse) / (exp(lse) + exp(s)) = o * sigmoid(lse - s)`` and ``logaddexp(lse, s)``. So any
kernel that returns the LSE serves sinks with one elementwise step after it, and split-KV
partials need not know about them: the step runs once, on the merged row.
"""

from __future__ import annotations

from typing import Tuple

import torch

from .checks import check_tensor

Tensor = torch.Tensor

SINK_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def check_sinks(sinks: Tensor, num_heads: int, device: torch.device) -> None:
    """``sinks``: a floating tensor of ``num_heads`` logits on ``device``."""
    check_tensor("sinks", sinks, ndim=1, dtypes=SINK_DTYPES, device=device)
    if sinks.shape[0] != num_heads:
        raise ValueError(f"sinks: expected one logit per query head ({num_heads}), got shape {tuple(sinks.shape)}")


def apply_sinks(out: Tensor, lse: Tensor, sinks: Tensor) -> Tuple[Tensor, Tensor]:
    """Adds per-head sink logits to finished attention rows.

    out: [..., H, D] (any float dtype); lse: [..., H] float32, natural log, -inf for a row with
    no key; sinks: [H]. Returns ``(out [..., H, D] in out's dtype, lse [..., H] float32)``. A row
    with no key gives zeros and ``lse = sink``; a NaN in ``out``, ``lse`` or a sink stays NaN.
    """
    if out.dim() < 2 or lse.shape != out.shape[:-1]:
        raise ValueError(f"out and lse: expected [..., H, D] and [..., H], got shapes {tuple(out.shape)} "
                         f"and {tuple(lse.shape)}")
    check_tensor("lse", lse, dtypes=(torch.float32,), device=out.device)
    check_sinks(sinks, out.shape[-2], out.device)
    s = sinks.float()
    # exp(lse) / (exp(lse) + exp(s)); a row with no key (lse -inf) keeps weight 0 even when the sink is -inf too
    weight = torch.where(lse == float("-inf"), torch.zeros_like(lse), torch.sigmoid(lse - s))
    scaled = (out.float() * weight.unsqueeze(-1)).to(out.dtype)
    return scaled, torch.logaddexp(lse, s.expand_as(lse))
