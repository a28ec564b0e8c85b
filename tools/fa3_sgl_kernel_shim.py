"""``sgl_kernel.flash_attn`` for the GPU box, over the FlashAttention-3 build of tools/build_baselines.py.

sgl-kernel's own module loads ``flash_ops`` (1.1 GB, too large to carry) and calls
``torch.ops.sgl_kernel.fwd``. ``build_baselines.py`` installs this file in its place, next to
``fa3_hopper/_C.so``: FlashAttention-3's Hopper forward from Dao-AILab/flash-attention's ``hopper/``
folder, restricted to bf16, head dim 128, paged KV, split-KV, GQA packing and local windows (sm90a). The functions
keep sgl-kernel 0.4.5's signatures, which SGLang 0.5.17's ``fa3`` backend calls
(``flash_attn_with_kvcache``, ``flash_attn_varlen_func``, ``get_scheduler_metadata``), and pass the
arguments to ``torch.ops.flash_attn_3`` (upstream's schema: sgl-kernel's without ``sinks``,
``sparse_mask_fine`` and ``only_qv``). Features outside the build (attention sinks, ``only_qv``,
soft-cap, appending K/V, fp16/fp8, other head dims) raise instead of computing something else; its
sliding windows (``window_size``) are FlashAttention-3's local attention.

Importable without a GPU or the library for tests: ``FA3_OPS`` is None then, and the calls raise.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Optional, Union

import torch

try:
    import fa3_hopper._C  # noqa: F401  (registers torch.ops.flash_attn_3)

    FA3_OPS = torch.ops.flash_attn_3
except ImportError as exc:  # the library is absent: say so at call time
    FA3_OPS = None
    _IMPORT_ERROR = exc


def _ops():
    if FA3_OPS is None:
        raise ImportError(f"FlashAttention-3 (fa3_hopper._C) is not built or not loadable: {_IMPORT_ERROR}")
    return FA3_OPS


@lru_cache(maxsize=1)
def is_fa3_supported(device=None) -> bool:
    return FA3_OPS is not None and torch.cuda.get_device_capability(device)[0] == 9


def maybe_contiguous(x):
    return x.contiguous() if x is not None and x.stride(-1) != 1 else x


def _refuse(sinks=None, only_qv=False, score_mod=None, aux_tensors=None):
    if sinks is not None or only_qv or score_mod is not None or aux_tensors is not None:
        raise NotImplementedError("this FlashAttention-3 build has no attention sinks, only_qv or score_mod")


def flash_attn_with_kvcache(
    q,
    k_cache,
    v_cache,
    k=None,
    v=None,
    qv=None,
    rotary_cos=None,
    rotary_sin=None,
    cache_seqlens: Optional[Union[int, torch.Tensor]] = None,
    cache_batch_idx: Optional[torch.Tensor] = None,
    cache_leftpad: Optional[torch.Tensor] = None,
    page_table: Optional[torch.Tensor] = None,
    cu_seqlens_q: Optional[torch.Tensor] = None,
    cu_seqlens_k_new: Optional[torch.Tensor] = None,
    max_seqlen_q: Optional[int] = None,
    rotary_seqlens: Optional[torch.Tensor] = None,
    q_descale: Optional[torch.Tensor] = None,
    k_descale: Optional[torch.Tensor] = None,
    v_descale: Optional[torch.Tensor] = None,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),
    attention_chunk: Optional[int] = None,
    softcap=0.0,
    rotary_interleaved=True,
    scheduler_metadata=None,
    num_splits=0,
    pack_gqa=None,
    only_qv=False,
    sm_margin=0,
    return_softmax_lse=False,
    sinks=None,
    score_mod=None,
    aux_tensors=None,
    ver=3,
    out=None,
):
    """sgl-kernel 0.4.5's ``flash_attn_with_kvcache`` (same arguments and returns): attention of ``q``
    over a (paged, with ``page_table``) KV cache; ``(out, softmax_lse, *rest)`` with
    ``return_softmax_lse``, else ``out``."""
    _refuse(sinks, only_qv, score_mod, aux_tensors)
    assert k_cache.stride(-1) == 1 and v_cache.stride(-1) == 1, "k_cache and v_cache need a contiguous last dim"
    if softmax_scale is None:
        softmax_scale = (q.shape[-1] + (qv.shape[-1] if qv is not None else 0)) ** (-0.5)
    if cache_seqlens is not None and isinstance(cache_seqlens, int):
        cache_seqlens = torch.full((q.shape[0],), cache_seqlens, dtype=torch.int32, device=k_cache.device)
    q, k_cache, k, v = [maybe_contiguous(x) for x in (q, k_cache, k, v)]
    v_cache = v_cache.contiguous() if v_cache.stride(-1) != 1 and v_cache.stride(-3) != 1 else v_cache
    cu_seqlens_q, cu_seqlens_k_new, page_table, cache_batch_idx, cache_leftpad, rotary_cos, rotary_sin, \
        rotary_seqlens = [maybe_contiguous(x) for x in (cu_seqlens_q, cu_seqlens_k_new, page_table, cache_batch_idx,
                                                       cache_leftpad, rotary_cos, rotary_sin, rotary_seqlens)]
    attention_chunk = 0 if attention_chunk is None else int(attention_chunk)
    out, softmax_lse, *rest = _ops().fwd(
        q, k_cache, v_cache, k, v, qv, out,
        cu_seqlens_q, None, cu_seqlens_k_new, None, cache_seqlens,  # cu_seqlens_k, seqused_q, seqused_k
        max_seqlen_q, None, page_table, cache_batch_idx, cache_leftpad,
        rotary_cos, rotary_sin, rotary_seqlens, q_descale, k_descale, v_descale,
        softmax_scale, causal, window_size[0], window_size[1], attention_chunk, softcap, rotary_interleaved,
        scheduler_metadata, num_splits, pack_gqa, sm_margin,
    )
    return (out, softmax_lse, *rest) if return_softmax_lse else out


def flash_attn_varlen_func(
    q,
    k,
    v,
    cu_seqlens_q,
    cu_seqlens_k,
    max_seqlen_q=None,
    max_seqlen_k=None,
    seqused_q=None,
    seqused_k=None,
    page_table=None,
    softmax_scale=None,
    causal=False,
    qv=None,
    q_descale=None,
    k_descale=None,
    v_descale=None,
    window_size=(-1, -1),
    attention_chunk=0,
    softcap=0.0,
    num_splits=1,
    pack_gqa=None,
    only_qv=False,
    sm_margin=0,
    return_softmax_lse=False,
    sinks=None,
    score_mod=None,
    aux_tensors=None,
    ver=3,
    out=None,
):
    """sgl-kernel 0.4.5's ``flash_attn_varlen_func``: attention over packed variable-length
    sequences (``cu_seqlens_q``/``cu_seqlens_k``), ``page_table`` ignored as there."""
    _refuse(sinks, only_qv, score_mod, aux_tensors)
    if max_seqlen_q is None or max_seqlen_k is None:
        raise ValueError("max_seqlen_q and max_seqlen_k are required for FA3")
    if softmax_scale is None:
        softmax_scale = (q.shape[-1] + (qv.shape[-1] if qv is not None else 0)) ** (-0.5)
    attention_chunk = 0 if attention_chunk is None else int(attention_chunk)
    out, softmax_lse, *rest = _ops().fwd(
        q, k, v, None, None, qv, out,
        cu_seqlens_q, cu_seqlens_k, None, seqused_q, seqused_k, max_seqlen_q, max_seqlen_k,
        None, None, None, None, None, None,  # page_table, kv_batch_idx, leftpad_k, rotary cos/sin/seqlens
        q_descale, k_descale, v_descale, softmax_scale, causal, window_size[0], window_size[1],
        attention_chunk, softcap, False, None, num_splits, pack_gqa, sm_margin,
    )
    return (out, softmax_lse, *rest) if return_softmax_lse else out


def get_scheduler_metadata(
    batch_size: int,
    max_seqlen_q: int,
    max_seqlen_k: int,
    num_heads: int,
    num_heads_k: int,
    headdim: int,
    cache_seqlens: torch.Tensor,
    qkv_dtype=torch.bfloat16,
    headdim_v: Optional[int] = None,
    cu_seqlens_q: Optional[torch.Tensor] = None,
    cu_seqlens_k: Optional[torch.Tensor] = None,
    cu_seqlens_k_new: Optional[torch.Tensor] = None,
    seqused_q: Optional[torch.Tensor] = None,
    leftpad_k: Optional[torch.Tensor] = None,
    page_size: Optional[int] = None,
    max_seqlen_k_new: int = 0,
    causal: bool = False,
    window_size=(-1, -1),
    attention_chunk: int = 0,
    has_softcap: bool = False,
    num_splits: int = 0,
    pack_gqa: Optional[bool] = None,
    sm_margin: int = 0,
):
    """The tile-scheduler metadata of one batch, computed once for all layers (same schema in
    sgl-kernel and upstream)."""
    return _ops().get_scheduler_metadata(
        batch_size, max_seqlen_q, max_seqlen_k, num_heads, num_heads_k, headdim,
        headdim if headdim_v is None else headdim_v, qkv_dtype, maybe_contiguous(cache_seqlens),
        cu_seqlens_q, cu_seqlens_k, cu_seqlens_k_new, seqused_q, leftpad_k, page_size, max_seqlen_k_new,
        causal, window_size[0], window_size[1], attention_chunk, has_softcap, num_splits, pack_gqa, sm_margin,
    )
