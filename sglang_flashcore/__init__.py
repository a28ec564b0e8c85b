"""FlashCore: a sharing-aware paged attention backend for SGLang on Hopper GPUs.

Public API:

* ``attention(q, k, v, causal=..., cu_seqlens_q=..., ...)`` — dense (prefill) attention with LSE.
* ``build_layout(...)`` — the seed's CSR builder (request -> pages, with staging ids).
* ``from_sglang(req_to_token, req_pool_indices, seq_lens, page_size)`` -> ``PagedLayout``.
* ``plan_sharing(layout)`` / ``PagedLayout.plan()`` -> ``SharingPlan``: page -> requests and
  the decode work list, so a page shared by many requests is read once per step.
* ``paged_decode(q, k_cache, v_cache, layout)`` — decode over the layout.
* ``paged_decode_table(q, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens)`` — decode
  straight from SGLang's page table, planned on the GPU (``DecodePlanner`` keeps its buffers
  across steps and CUDA-graph replays; the SGLang backend uses it).
* ``paged_extend(q, k_new, v_new, k_cache, v_cache, prefix_layout, cu_seqlens_q)`` — extend.
* ``merge_states(v_a, s_a, v_b, s_b)`` — combine partial results by their LSEs.

All of them are ``torch.library`` custom ops (``flashcore::*``). CPU tensors run the float32
reference; CUDA tensors run our kernels where one is built for the op (see ``kernels.py``)
and the reference otherwise; ``FLASHCORE_IMPL=reference`` forces the reference.
"""

from .api import DEFAULT_CHUNK_TOKENS, attention, auto_chunk_tokens, merge_states, paged_decode, paged_extend
from .decode_plan import DecodePlanner, paged_decode_table
from .layout import PagedLayout, SharingPlan, build_layout, decode_bytes, from_sglang, plan_sharing

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_CHUNK_TOKENS",
    "DecodePlanner",
    "PagedLayout",
    "SharingPlan",
    "attention",
    "auto_chunk_tokens",
    "build_layout",
    "decode_bytes",
    "from_sglang",
    "merge_states",
    "paged_decode",
    "paged_decode_table",
    "paged_extend",
    "plan_sharing",
]
