"""Input validation shared by the layout builders, the references and the ops.

Every check raises a plain ``ValueError`` (or ``TypeError`` for a wrong dtype)
whose message names the argument and says what was expected, so a bad call
fails in Python before any kernel sees it.
"""

from __future__ import annotations

import math
import numbers
from typing import Iterable, Optional, Sequence

import torch

INDEX_DTYPES = (torch.int32, torch.int64)
ATTENTION_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# KV pools may also hold FP8 (SGLang's --kv-cache-dtype fp8_e4m3 / fp8_e5m2), read with a scale each for K and V.
FP8_KV_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
# Head dims the float32 reference accepts; the CUDA kernels check their own (kernels.py).
SUPPORTED_HEAD_DIMS = tuple(range(1, 257))
# KV slots must fit the int32 page tables of the kernels (and PagedLayout's int32 page ids).
MAX_SLOTS = 1 << 31


def reads_values(requested: bool, t: torch.Tensor) -> bool:
    """Whether to run the checks that read ``t``'s values on the host: always for CPU tensors
    (no device sync to save), on other devices when the caller asked (``check_bounds``,
    ``validate``). Never while torch.compile traces: a host read would break the graph, and the
    CPU reference checks the ids again when the compiled op runs."""
    if torch.compiler.is_compiling():
        return False
    return requested or t.device.type == "cpu"


def _dtype_names(dtypes: Iterable[torch.dtype]) -> str:
    return " or ".join(str(d).replace("torch.", "") for d in dtypes)


def check_tensor(
    name: str,
    t: object,
    *,
    ndim: Optional[int | Sequence[int]] = None,
    dtypes: Optional[Sequence[torch.dtype]] = None,
    device: Optional[torch.device] = None,
    contiguous: bool = False,
    last_dim_contiguous: bool = False,
) -> torch.Tensor:
    """Checks that ``t`` is a tensor with the given rank, dtype and device."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if t.dim() not in allowed:
            want = " or ".join(str(n) for n in allowed)
            raise ValueError(
                f"{name}: expected {want} dimensions, got shape {tuple(t.shape)}"
            )
    if dtypes is not None and t.dtype not in dtypes:
        raise TypeError(f"{name}: expected dtype {_dtype_names(dtypes)}, got {t.dtype}")
    if device is not None and t.device != device:
        raise ValueError(
            f"{name}: expected a tensor on {device} (like the other inputs), got {t.device}"
        )
    if contiguous and not t.is_contiguous():
        raise ValueError(f"{name}: expected a contiguous tensor, got strides {t.stride()}")
    if last_dim_contiguous and t.dim() > 0 and t.shape[-1] > 1 and t.stride(-1) != 1:
        raise ValueError(
            f"{name}: expected the last dimension to be contiguous (stride 1), "
            f"got strides {t.stride()}"
        )
    return t


def check_index(name: str, t: object, *, ndim: int = 1, device=None) -> torch.Tensor:
    """An integer index tensor (int32 or int64)."""
    return check_tensor(name, t, ndim=ndim, dtypes=INDEX_DTYPES, device=device)


def check_len(name: str, t: torch.Tensor, expected: int, what: str) -> None:
    if t.shape[0] != expected:
        raise ValueError(f"{name}: expected length {expected} ({what}), got {t.shape[0]}")


def check_range(
    name: str, t: torch.Tensor, low: int, high: int, what: str = "index"
) -> None:
    """All values of ``t`` lie in [low, high). Costs one device sync on CUDA."""
    if t.numel() == 0:
        return
    flat = t.reshape(-1)
    bad = (flat < low) | (flat >= high)
    if bool(bad.any()):
        pos = int(bad.nonzero()[0, 0])
        where = pos if t.dim() == 1 else tuple(int(i) for i in torch.unravel_index(torch.tensor(pos), t.shape))
        raise ValueError(
            f"{name}: {what} out of range at {where}: got {int(flat[pos])}, "
            f"expected a value in [{low}, {high})"
        )


def check_nonnegative(name: str, t: torch.Tensor) -> None:
    if t.numel() and bool((t < 0).any()):
        pos = int((t < 0).nonzero()[0, 0])
        raise ValueError(f"{name}: expected non-negative values, got {int(t[pos])} at {pos}")


def check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")
    return value


def check_window(name: str, value: object, causal: bool = True) -> int:
    """A causal sliding window's left extent: -1 (none) or the keys before the query it sees."""
    if isinstance(value, bool) or not isinstance(value, int) or value < -1:
        raise ValueError(f"{name}: expected -1 (no window) or a non-negative int, got {value!r}")
    if value >= 0 and not causal:
        raise ValueError(f"{name}: a sliding window needs causal=True")
    return value


def check_softcap(name: str, value: object) -> float:
    """A logit soft-cap: 0 (none) or a finite positive cap (SGLang's layer.logit_cap)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name}: expected 0 (no cap) or a finite positive float, got {value!r}")
    return float(value)


def check_nonnegative_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name}: expected a non-negative int, got {value!r}")
    return value


def check_heads(q_name: str, hq: int, kv_name: str, hkv: int) -> int:
    """GQA/MQA: the query head count is a multiple of the KV head count."""
    if hkv <= 0 or hq % hkv != 0:
        raise ValueError(
            f"{q_name} has {hq} heads, {kv_name} has {hkv}: the query head count must be "
            f"a positive multiple of the KV head count (GQA/MQA)"
        )
    return hq // hkv


def check_head_dim(name: str, d: int, allowed: Sequence[int] = SUPPORTED_HEAD_DIMS) -> None:
    if d not in allowed:
        want = f"1..{allowed[-1]}" if allowed == SUPPORTED_HEAD_DIMS else str(tuple(allowed))
        raise ValueError(f"{name}: head dim {d} is not supported, expected {want}")


def check_same(name_a: str, a: int, name_b: str, b: int, what: str) -> None:
    if a != b:
        raise ValueError(f"{name_a} and {name_b} disagree on {what}: {a} vs {b}")


def check_cu_seqlens(name: str, cu: torch.Tensor, total: int, device) -> torch.Tensor:
    """Cumulative sequence lengths: [B+1], starts at 0, non-decreasing, ends at ``total``."""
    check_index(name, cu, device=device)
    if cu.shape[0] < 1:
        raise ValueError(f"{name}: expected at least one element (B+1 offsets), got none")
    if torch.compiler.is_compiling():  # the values are checked by the reference when it runs
        return cu
    if int(cu[0]) != 0:
        raise ValueError(f"{name}: expected the first offset to be 0, got {int(cu[0])}")
    if cu.shape[0] > 1 and bool((cu[1:] < cu[:-1]).any()):
        raise ValueError(f"{name}: expected non-decreasing offsets, got {cu.tolist()[:16]}")
    if int(cu[-1]) != total:
        raise ValueError(
            f"{name}: the last offset is {int(cu[-1])} but the packed tensor has {total} tokens"
        )
    return cu


def softmax_scale_for(softmax_scale: object, head_dim: int) -> float:
    """The scale to use: ``head_dim ** -0.5`` for None, else a positive finite float."""
    if softmax_scale is None:
        return head_dim ** -0.5
    # numbers.Real takes numpy scalars too; a tensor would need a host read (and a sync)
    if isinstance(softmax_scale, bool) or not isinstance(softmax_scale, numbers.Real) \
            or not math.isfinite(softmax_scale) or softmax_scale <= 0:
        raise ValueError(f"softmax_scale: expected a positive finite float, got {softmax_scale!r}")
    return float(softmax_scale)


def check_cache(name: str, cache: object, q: torch.Tensor, page_size: int, allow_fp8: bool = False) -> int:
    """A KV pool for ``q``: SGLang's [slots, Hkv, D] or head-major pages [pages, Hkv, page_size, D],
    in q's dtype (or, with ``allow_fp8``, an FP8 one). Returns its number of slots."""
    dtypes = (q.dtype,) + (FP8_KV_DTYPES if allow_fp8 else ())
    check_tensor(name, cache, ndim=(3, 4), dtypes=dtypes, device=q.device, last_dim_contiguous=True)
    check_same("q", q.shape[-1], name, cache.shape[-1], "head dim")
    if cache.dim() == 4:
        check_same(name + ".shape[2] (tokens per page)", cache.shape[2], "page_size", page_size, "page size")
        return cache.shape[0] * page_size
    return cache.shape[0]


def check_pools(k_cache: object, v_cache: object, q: torch.Tensor, page_size: int, allow_fp8: bool = False) -> int:
    """Both pools valid and alike; returns the number of slots."""
    num_slots = check_cache("k_cache", k_cache, q, page_size, allow_fp8)
    check_cache("v_cache", v_cache, q, page_size, allow_fp8)
    if k_cache.shape != v_cache.shape:
        raise ValueError(
            f"k_cache and v_cache: expected the same shape, got {tuple(k_cache.shape)} and {tuple(v_cache.shape)}"
        )
    if k_cache.dtype != v_cache.dtype:
        raise TypeError(f"k_cache and v_cache: expected one dtype, got {k_cache.dtype} and {v_cache.dtype}")
    return num_slots


def check_kv_scale(name: str, scale: object) -> float:
    """A pool's dequantization scale (the stored values times ``scale`` are the keys or values):
    a finite positive number, or a one-element floating tensor (SGLang's ``layer.k_scale``; read
    on the host, so a GPU tensor syncs). Returns it as a float."""
    if isinstance(scale, torch.Tensor):
        if scale.numel() != 1:
            raise ValueError(f"{name}: expected one scale for the whole pool, got a tensor of shape "
                             f"{tuple(scale.shape)}")
        if not scale.dtype.is_floating_point:
            raise TypeError(f"{name}: expected a floating-point scale, got dtype {scale.dtype}")
        scale = float(scale.reshape(()).item())
    elif isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"{name}: expected a float or a one-element tensor, got {type(scale).__name__}")
    scale = float(scale)
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"{name}: expected a finite positive scale, got {scale}")
    return scale


def check_table_slots(req_to_token: torch.Tensor, req_pool_indices: torch.Tensor, seq_lens: torch.Tensor,
                      num_slots: int) -> None:
    """Every slot a request reads (``req_to_token[req_pool_indices[b], :seq_lens[b]]``) lies in the
    pool. The rows and lengths must be in range already. One device sync."""
    if req_pool_indices.numel() == 0 or req_to_token.shape[1] == 0:
        return
    rows = req_to_token[req_pool_indices.to(torch.int64)].to(torch.int64)
    used = torch.arange(req_to_token.shape[1], device=rows.device) < seq_lens.to(torch.int64).unsqueeze(1)
    bad = used & ((rows < 0) | (rows >= num_slots))
    if bool(bad.any()):
        b, j = (int(i) for i in bad.nonzero()[0])
        raise ValueError(f"req_to_token: KV slot out of range for request {b} at position {j}: got "
                         f"{int(rows[b, j])}, expected a value in [0, {num_slots})")
