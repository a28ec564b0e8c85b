"""CUDA kernels: loads the JIT-built extension and registers it with ``ops.CUDA_IMPLS``."""

from __future__ import annotations

from typing import List

import torch

from .layout import SharingPlan

_loaded = False


def ensure_loaded() -> None:
    """Builds (once) and registers our CUDA kernels. No kernel is registered yet."""
    global _loaded
    _loaded = True


def plan_tensors(plan: SharingPlan) -> List[torch.Tensor]:
    """The SharingPlan tensors the decode kernel reads, in its argument order."""
    return [
        plan.work_entry_offsets, plan.work_reader_offsets, plan.work_readers,
        plan.entry_pages, plan.entry_offsets, plan.entry_counts,
        plan.merge_offsets, plan.merge_partials,
    ]
