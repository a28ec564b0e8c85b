"""FlashCore: a sharing-aware paged attention backend for SGLang on Hopper GPUs.

Public API:

* ``attention(q, k, v, causal=..., cu_seqlens_q=..., ...)`` — dense (prefill) attention with LSE.
* ``paged_decode_table(q, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens)`` — decode
  straight from SGLang's page table, planned on the GPU (``DecodePlanner`` keeps its buffers
  across steps and CUDA-graph replays; the SGLang backend uses it).
* ``paged_decode(q, k_cache, v_cache, layout)`` — the same decode over a ``PagedLayout``.
* ``paged_extend(q, k_new, v_new, k_cache, v_cache, prefix_layout, cu_seqlens_q)`` — extend.
* ``merge_states(v_a, s_a, v_b, s_b)`` — combine partial results by their LSEs.
* ``from_sglang(...)`` / ``build_layout(...)`` -> ``PagedLayout`` (request -> page runs), and
  ``plan_sharing(layout)`` / ``PagedLayout.plan()`` -> ``SharingPlan`` (page -> requests, the
  unique bytes of a step): the general view of a batch, for reports.

The attention ops are ``torch.library`` custom ops (``torch.ops.flashcore.*``). CPU tensors run the
float32 reference; CUDA tensors run our kernels (``kernels.py``, ``decode.py``, ``extend.py``
register them), or the reference with ``FLASHCORE_IMPL=reference`` (``config.py``).
"""

from . import ops  # noqa: F401  (defines the flashcore:: ops before their CUDA kernels register)
from . import kernels  # noqa: F401
from .api import attention, merge_states, paged_decode, paged_extend
from .decode import DecodePlanner, paged_decode_table
from .extend import ExtendPlan, extend_attention, plan_extend
from .layout import PagedLayout, SharingPlan, build_layout, decode_bytes, from_sglang, plan_sharing

__version__ = "0.1.0"

__all__ = [
    "DecodePlanner",
    "ExtendPlan",
    "PagedLayout",
    "SharingPlan",
    "attention",
    "build_layout",
    "decode_bytes",
    "extend_attention",
    "from_sglang",
    "merge_states",
    "paged_decode",
    "paged_decode_table",
    "paged_extend",
    "plan_extend",
    "plan_sharing",
]
