"""Decode steps planned on the GPU straight from SGLang's page table: the one decode planner.

The SGLang backend, ``paged_decode_table`` and ``paged_decode`` (a ``PagedLayout`` turned into a
page table) all run it. The radix cache guarantees that the same KV slot at the same position
holds the same token, so the ``DecodePlanner`` cuts every request into position-aligned chunks of C tokens, groups the
chunks of different requests whose slots are identical (a hash of the last slot and the end
position, then a slot-by-slot check), and writes the decode kernel's work list into
fixed-capacity device buffers — five kernel launches, no host sync, the same buffers every
step, so it also runs before each CUDA-graph replay. See ``cuda/include/flashcore/decode_plan.h``;
the chunk and split policies are in ``heuristics.py``.

* chunk i is partial result i (or, when the tail split cut it, several in a row); request b owns
  chunks ``chunk_base[b]:chunk_base[b+1]`` and merges them in position order (deterministic);
* a work item = one chunk's K/V, loaded once per KV head and multiplied against all of its
  readers' query rows on tensor cores.

``plan_table_reference`` is the same plan built in plain torch (the tests' model of it), and
``execute_plan_ref`` runs any such plan in float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple, Union

import torch

from . import config, kernels
from .checks import (ATTENTION_DTYPES, check_head_dim, check_heads, check_kv_scale, check_len, check_pools,
                     check_positive_int, check_range, check_softcap, check_table_slots, check_tensor, check_window,
                     reads_values,
                     softmax_scale_for)
from .heuristics import (DECODE_CTAS_PER_SM, DECODE_HEAD_DIMS, DECODE_MAX_GROUP, DECODE_ROWS_PER_TASK,
                         DECODE_TILE_TOKENS, DEFAULT_WORKSPACE_BYTES, DETERMINISTIC_CHUNK_TOKENS,
                         MAX_AUTO_CHUNK_TOKENS, MIN_CHUNK_TOKENS, SPLIT_MAX_PARTS, WAVE_MAX_CHUNK_TOKENS,
                         kernel_head_dim, num_sms, split_guided, split_items, split_part_count, target_chunks)
from .ops import paged_decode_table_op, paged_decode_table_reference
from .reference import attend_one, gather_kv, merge_states_ref
from .window import window_table

__all__ = [
    "DecodePlanner",
    "TablePlan",
    "paged_decode_table",
    "plan_table_reference",
    "execute_plan_ref",
    "planner_group",
]

META_FIELDS = ("chunk_tokens", "chunks", "work_items", "tasks", "tokens", "unique_tokens", "clamped", "hash_size")
@dataclass
class TablePlan:
    """A page-table plan in host form (for tests and reports).

    Attributes:
        chunk_tokens: C.
        chunk_base: [B+1] request b's chunks (= partials) are chunk_base[b]:chunk_base[b+1].
        work: one ``(req_to_token row, first position, tokens, partials)`` per work item, in
            order of their leading (smallest) chunk; ``partials`` ascending (they name the
            reader chunks; a reader's request owns that chunk).
        tasks: kernel tasks (work items split into 32-row groups of readers x GQA group, and the
            tail split's parts).
        tokens: tokens requested; unique_tokens: tokens of all work items (loaded once each).
        split: ``(chunk, parts)`` of each one-reader item the tail split cut, ascending.
    """

    chunk_tokens: int
    chunk_base: List[int]
    work: List[Tuple[int, int, int, Tuple[int, ...]]]
    tasks: int
    tokens: int
    unique_tokens: int
    clamped: int = 0
    split: Tuple[Tuple[int, int], ...] = ()

    @property
    def num_chunks(self) -> int:
        return self.chunk_base[-1] if self.chunk_base else 0

    def chunk_owner(self) -> List[int]:
        owner = []
        for b in range(len(self.chunk_base) - 1):
            owner += [b] * (self.chunk_base[b + 1] - self.chunk_base[b])
        return owner


def _as_list(t: torch.Tensor) -> List[int]:
    return [int(x) for x in t.tolist()]


def plan_table_reference(req_to_token: torch.Tensor, req_pool_indices: torch.Tensor, seq_lens: torch.Tensor,
                         chunk_tokens: int, group: int = 1, num_kv_heads: int = 0, resident_ctas: int = 0,
                         grid_work: int = 0, split_parts: int = 1) -> TablePlan:
    """The planner's plan in plain Python: chunks grouped by identical slots at identical
    positions, each group's leader its smallest chunk index; with ``split_parts`` > 1, the tail
    split of ``split_items`` (the last one-reader, one-task items of two or more tiles; the order
    of the tasks is not modelled)."""
    check_positive_int("chunk_tokens", chunk_tokens)
    r2t = req_to_token.cpu()
    rows, lens = _as_list(req_pool_indices), _as_list(seq_lens)
    base, groups, order = [0], {}, []
    tasks = 0
    for b, (row, n) in enumerate(zip(rows, lens)):
        for pos0 in range(0, n, chunk_tokens):
            end = min(n, pos0 + chunk_tokens)
            key = (pos0, end, tuple(_as_list(r2t[row, pos0:end])))
            i = base[-1] + pos0 // chunk_tokens
            if key not in groups:
                groups[key] = (row, pos0, end - pos0, [])
                order.append(key)
            groups[key][3].append(i)
        base.append(base[-1] + -(-n // chunk_tokens))
    work = []
    for key in order:
        row, pos0, ntok, parts = groups[key]
        work.append((row, pos0, ntok, tuple(sorted(parts))))
        tasks += -(-len(parts) * group // DECODE_ROWS_PER_TASK)
    splittable = [(w[3][0], -(-w[2] // DECODE_TILE_TOKENS)) for w in work
                  if len(w[3]) == 1 and group <= DECODE_ROWS_PER_TASK and w[2] > DECODE_TILE_TOKENS]
    m = split_items(tasks, len(splittable), num_kv_heads, resident_ctas, grid_work, split_parts)
    guided = split_guided(num_kv_heads, resident_ctas)
    split = tuple(sorted((chunk, split_part_count(guided, split_parts, tiles))
                         for chunk, tiles in splittable[len(splittable) - m:]))
    tasks += sum(parts - 1 for _, parts in split)
    return TablePlan(chunk_tokens, base, work, tasks, sum(lens), sum(w[2] for w in work), split=split)


def execute_plan_ref(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, req_to_token: torch.Tensor,
                     plan: TablePlan, page_size: int = 1,
                     softmax_scale: Optional[float] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Runs a page-table plan in float32, as the kernel does: one partial per (work item, reader),
    then each request's partials merged in chunk order."""
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
    parts_o = [None] * plan.num_chunks
    parts_lse = [None] * plan.num_chunks
    owner = plan.chunk_owner()
    for row, pos0, ntok, partials in plan.work:
        slots = req_to_token[row, pos0:pos0 + ntok].to(torch.int64).to(k_cache.device)
        k = gather_kv(k_cache, slots, page_size).float()
        v = gather_kv(v_cache, slots, page_size).float()
        for i in partials:
            o, lse = attend_one(q[owner[i]].float().unsqueeze(0), k, v, scale, causal=False)
            parts_o[i], parts_lse[i] = o[0], lse[0]
    out = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    lse = torch.full(q.shape[:-1], float("-inf"), dtype=torch.float32, device=q.device)
    for b in range(q.shape[0]):
        for i in range(plan.chunk_base[b], plan.chunk_base[b + 1]):
            out[b], lse[b] = merge_states_ref(out[b], lse[b], parts_o[i], parts_lse[i])
    return out, lse


def planner_group(num_q_heads: int, num_kv_heads: int) -> int:
    """The GQA group a planner sizes its tasks for: query heads per KV head, at least 1 and at most
    what the decode kernel takes (``DECODE_MAX_GROUP``)."""
    return max(1, min(DECODE_MAX_GROUP, num_q_heads // max(num_kv_heads, 1)))


class DecodePlanner:
    """Plans decode steps on the GPU and runs the decode kernel over them.

    All buffers are allocated once, here: ``plan`` and ``run`` allocate nothing but the outputs,
    never sync, and ``run`` can be captured in a CUDA graph (``plan`` runs before each replay).

    Args:
        max_batch: most requests a step may have (SGLang: ``req_to_token.shape[0]``).
        num_q_heads, head_dim: size the partial-result workspace (upper bounds are fine).
        device: a Hopper GPU.
        workspace_bytes: memory for partial results; it bounds the chunks of a step, and the
            planner makes chunks longer when a step would need more.
        deterministic: batch-invariant decode (SGLang's ``--enable-deterministic-inference``): a
            request's output does not change by a bit with the other requests of its step. Chunks
            of ``DETERMINISTIC_CHUNK_TOKENS`` at fixed positions, none shared between requests (a
            shared prefix is read once per reader), one merge shape. Up to the workspace's chunks:
            a step that needs more chunks gets longer ones.
    """

    def __init__(self, max_batch: int, num_q_heads: int, head_dim: int, device,
                 workspace_bytes: int = DEFAULT_WORKSPACE_BYTES, deterministic: bool = False):
        check_positive_int("num_q_heads", num_q_heads)
        check_positive_int("head_dim", head_dim)
        check_positive_int("workspace_bytes", workspace_bytes)
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise ValueError(f"device: the decode planner runs on a CUDA GPU, got {self.device}; on other devices "
                             "paged_decode_table runs the float32 reference")
        if self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        kernels.check_device(self.device)
        self.max_batch = max(int(max_batch), 1)
        self.num_q_heads, self.head_dim = num_q_heads, head_dim
        # the partials keep the kernel's head dim (a smaller one runs padded: heuristics.kernel_head_dim)
        partial_dim = kernel_head_dim(head_dim) or head_dim
        per_partial = num_q_heads * (partial_dim + 1) * 4
        self.max_chunks = max(self.max_batch, workspace_bytes // per_partial)
        ints, hash_slots, partials = kernels.planner_sizes(self.max_batch, self.max_chunks)
        self.ints = torch.zeros(ints, dtype=torch.int32, device=self.device)
        self.hash = torch.zeros(hash_slots, dtype=torch.int64, device=self.device)
        # the chunks' partials and the tail split's
        self.partial_o = torch.empty(partials * num_q_heads * partial_dim, dtype=torch.float32, device=self.device)
        self.partial_lse = torch.empty(partials * num_q_heads, dtype=torch.float32, device=self.device)
        self.grid_work = DECODE_CTAS_PER_SM * num_sms(self.device)  # the fixed grid loops over the tasks
        self.deterministic = bool(deterministic)
        self._batch: Optional[int] = None
        self._group = 0
        self._req_to_token: Optional[torch.Tensor] = None

    def plan(self, req_to_token: torch.Tensor, req_pool_indices: torch.Tensor, seq_lens: torch.Tensor,
             num_kv_heads: int, group: int, chunk_tokens: Optional[int] = None) -> None:
        """Plans one step (asynchronously, on the current stream).

        Args:
            req_to_token: [rows, max_context] int32 KV slot of each request position.
            req_pool_indices, seq_lens: [B] int32/int64 on the same device.
            num_kv_heads: KV heads of the pool (the chunk policy aims at enough CTAs).
            group: query heads per KV head, or an upper bound (it sizes the tasks).
            chunk_tokens: a fixed chunk size; default: chosen on the device from the lengths.
        """
        if chunk_tokens is not None:
            check_positive_int("chunk_tokens", chunk_tokens)
        check_positive_int("num_kv_heads", num_kv_heads)
        check_tensor("req_to_token", req_to_token, ndim=2, dtypes=(torch.int32,), device=self.device)
        for name, t in (("req_pool_indices", req_pool_indices), ("seq_lens", seq_lens)):
            check_tensor(name, t, ndim=1, dtypes=(torch.int32, torch.int64), device=self.device)
        check_len("req_pool_indices", req_pool_indices, seq_lens.shape[0], "one pool row per request, like seq_lens")
        if seq_lens.shape[0] > self.max_batch:
            raise ValueError(f"seq_lens: {seq_lens.shape[0]} requests, the planner holds {self.max_batch}")
        if isinstance(group, bool) or not isinstance(group, int) or not 1 <= group <= DECODE_MAX_GROUP:
            raise ValueError(f"group: expected 1..{DECODE_MAX_GROUP} query heads per KV head, got {group!r}")
        det = self.deterministic
        if det and chunk_tokens is None:
            chunk_tokens = DETERMINISTIC_CHUNK_TOKENS
        kernels.plan_decode_table(
            req_to_token, req_pool_indices, seq_lens, self.ints, self.hash, self.max_batch, self.max_chunks,
            group, int(chunk_tokens or 0), MIN_CHUNK_TOKENS, MAX_AUTO_CHUNK_TOKENS,
            target_chunks(num_kv_heads, self.device), num_kv_heads, self.grid_work, 1 if det else SPLIT_MAX_PARTS,
            0 if det else WAVE_MAX_CHUNK_TOKENS, not det,
        )
        self._batch, self._group, self._req_to_token = seq_lens.shape[0], group, req_to_token

    def run(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, softmax_scale: float,
            page_size: int = 1, k_scale: float = 1.0, v_scale: float = 1.0,
            softcap: float = 0.0) -> Tuple[torch.Tensor, torch.Tensor]:
        """Decode over the last plan: ``(out [B, Hq, D], lse [B, Hq] float32)``. The pools are in q's
        dtype, or FP8 holding K / k_scale and V / v_scale (floats: fixed in a captured graph);
        ``softcap`` > 0: the logit soft-cap."""
        kernels.check_kernel_input(q, "decode", DECODE_HEAD_DIMS)
        softmax_scale = softmax_scale_for(softmax_scale, q.shape[-1])
        check_positive_int("page_size", page_size)
        k_scale, v_scale = check_kv_scale("k_scale", k_scale), check_kv_scale("v_scale", v_scale)
        softcap = check_softcap("softcap", softcap)
        if self._batch is None:
            raise RuntimeError("DecodePlanner.run: call plan() first")
        if q.shape[0] != self._batch:
            raise ValueError(f"q: {q.shape[0]} requests, the last plan has {self._batch}")
        group = q.shape[1] // max(k_cache.shape[1], 1)
        if group > self._group:
            raise ValueError(f"q/k_cache: {group} query heads per KV head, the plan was made for at most {self._group}")
        return kernels.run_decode_table(
            q, k_cache, v_cache, self._req_to_token, self.ints, self.hash, self.max_batch, self.max_chunks,
            page_size, softmax_scale, self.partial_o, self.partial_lse, self.grid_work, k_scale, v_scale,
            self.deterministic, softcap,
        )

    # ---- host-side views (each syncs; for reports and tests)
    def _views(self) -> Dict[str, torch.Tensor]:
        return kernels.plan_views(self.ints, self.hash, self.max_batch, self.max_chunks)

    def meta(self) -> Dict[str, int]:
        return dict(zip(META_FIELDS, _as_list(self._views()["meta"])))

    def snapshot(self) -> TablePlan:
        """The last plan, copied to the host in ``TablePlan`` form."""
        v = {name: t.cpu() for name, t in self._views().items()}
        meta = dict(zip(META_FIELDS, _as_list(v["meta"])))
        w_count = meta["work_items"]
        offs = _as_list(v["work_reader_offsets"][: w_count + 1])
        work = []
        for w in range(w_count):
            parts = tuple(sorted(_as_list(v["work_partials"][offs[w]:offs[w + 1]])))
            work.append((int(v["work_row"][w]), int(v["work_pos0"][w]), int(v["work_ntok"][w]), parts))
        work.sort(key=lambda item: item[3][0])
        first_partial = _as_list(v["chunk_partial"][: meta["chunks"] + 1])
        split = tuple((i, first_partial[i + 1] - first_partial[i]) for i in range(meta["chunks"])
                      if first_partial[i + 1] - first_partial[i] > 1)
        return TablePlan(meta["chunk_tokens"], _as_list(v["chunk_base"][: self._batch + 1]), work, meta["tasks"],
                         meta["tokens"], meta["unique_tokens"], meta["clamped"], split)


_PLANNERS: Dict[tuple, "DecodePlanner"] = {}


def _planner_for(q: torch.Tensor) -> "DecodePlanner":
    """The cached planner for q's device, current stream and heads (its workspace is reused by
    every call on that stream, which orders them)."""
    stream = torch.cuda.current_stream(q.device).cuda_stream
    key = (q.device, stream, q.shape[1], q.shape[2])
    planner = _PLANNERS.get(key)
    if planner is None or planner.max_batch < q.shape[0]:
        batch = q.shape[0] if planner is None else max(q.shape[0], 2 * planner.max_batch)
        planner = _PLANNERS[key] = DecodePlanner(batch, q.shape[1], q.shape[2], q.device)
    return planner


def paged_decode_table(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    seq_lens: torch.Tensor,
    *,
    page_size: int = 1,
    softmax_scale: Optional[float] = None,
    chunk_tokens: Optional[int] = None,
    check_bounds: bool = True,
    k_scale: Union[float, torch.Tensor] = 1.0,
    v_scale: Union[float, torch.Tensor] = 1.0,
    window_left: int = -1,
    softcap: float = 0.0,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Decode straight from SGLang's page table (one query token per request).

    Request b attends to the KV slots ``req_to_token[req_pool_indices[b], :seq_lens[b]]`` of
    ``k_cache``/``v_cache`` (SGLang's [slots, Hkv, D] pool, or head-major pages
    [num_pages, Hkv, page_size, D]). On a Hopper GPU the plan is made on the device and chunks
    with identical slots are loaded once for all their readers; elsewhere the float32 reference
    runs. This convenience call reuses one ``DecodePlanner`` per device, stream and head shape
    (made on first use, remade larger when a batch outgrows it); a server keeps its own.

    Args:
        chunk_tokens: a fixed split-KV chunk; default: the planner's automatic chunk.
        check_bounds: check rows, lengths and slots against the table and the pool (one device
            sync). Without it CUDA inputs are trusted: a slot outside the pool is undefined
            behaviour for the kernel (the SGLang backend passes SGLang's own table). CPU inputs are
            always checked, and under torch.compile the checks are skipped (a host read would
            break the graph; the CPU reference still checks when it runs).
        k_scale, v_scale: the pools hold K / k_scale and V / v_scale (SGLang's FP8 KV cache,
            ``float8_e4m3fn`` or ``float8_e5m2`` pools); a float or a one-element tensor (read on the host).
        window_left: a sliding window (the query, at position ``seq_lens[b] - 1``, sees the last
            ``window_left + 1`` keys; ``window.py``); -1: every key.
        softcap: the logit soft-cap (each scaled score s becomes softcap * tanh(s / softcap)); 0: none.

    Returns ``(out [B, Hq, D], lse [B, Hq] float32)``; an empty request gives 0 and -inf.
    """
    check_tensor("q", q, ndim=3, dtypes=ATTENTION_DTYPES, last_dim_contiguous=True)
    check_head_dim("q", q.shape[-1])
    check_tensor("req_to_token", req_to_token, ndim=2, dtypes=(torch.int32, torch.int64), device=q.device)
    for name, t in (("req_pool_indices", req_pool_indices), ("seq_lens", seq_lens)):
        check_tensor(name, t, ndim=1, dtypes=(torch.int32, torch.int64), device=q.device)
        check_len(name, t, q.shape[0], "one entry per request of q")
    check_positive_int("page_size", page_size)
    num_slots = check_pools(k_cache, v_cache, q, page_size, allow_fp8=True)
    check_heads("q", q.shape[1], "k_cache", k_cache.shape[1])
    if chunk_tokens is not None:
        check_positive_int("chunk_tokens", chunk_tokens)
    scale = softmax_scale_for(softmax_scale, q.shape[-1])
    k_scale, v_scale = check_kv_scale("k_scale", k_scale), check_kv_scale("v_scale", v_scale)
    check_window("window_left", window_left)
    softcap = check_softcap("softcap", softcap)
    if reads_values(check_bounds, q):
        check_range("req_pool_indices", req_pool_indices, 0, req_to_token.shape[0], "request pool row")
        check_range("seq_lens", seq_lens, 0, req_to_token.shape[1] + 1, "sequence length")
        check_table_slots(req_to_token, req_pool_indices, seq_lens, num_slots)
    if window_left >= 0:
        req_to_token, seq_lens = window_table(req_to_token, req_pool_indices, seq_lens, window_left)
        req_pool_indices = torch.arange(q.shape[0], dtype=req_pool_indices.dtype, device=q.device)
    return paged_decode_table_op(q, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens, page_size, scale,
                                 int(chunk_tokens or 0), k_scale, v_scale, softcap)


@torch.library.register_kernel("flashcore::paged_decode_table", "cuda")
def _paged_decode_table_cuda(q, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens, page_size, softmax_scale,
                             chunk_tokens, k_scale=1.0, v_scale=1.0, softcap=0.0):
    if not config.use_kernels(q.device):
        return paged_decode_table_reference(q, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens,
                                            page_size, softmax_scale, k_scale, v_scale, softcap)
    kernels.check_kernel_input(q, "decode", DECODE_HEAD_DIMS)
    planner = _planner_for(q)
    planner.plan(req_to_token.to(torch.int32), req_pool_indices, seq_lens, k_cache.shape[1],
                 q.shape[1] // k_cache.shape[1], chunk_tokens or None)
    return planner.run(q, k_cache, v_cache, softmax_scale, page_size, k_scale, v_scale, softcap)
