"""Decode steps planned on the GPU straight from SGLang's page table.

``PagedLayout`` + ``SharingPlan`` describe a step in general, but building them takes two host
syncs (their sizes) and 0.2-0.4 ms a step even on the GPU (``layout_cuda.py``), and cannot run
inside a CUDA graph. Serving needs less: the radix cache
already guarantees that the same KV slot at the same position holds the same token. So the
``DecodePlanner`` cuts every request into position-aligned chunks of C tokens, groups the
chunks of different requests whose slots are identical (a hash of the last slot and the end
position, then a slot-by-slot check), and writes the decode kernel's work list into
fixed-capacity device buffers — five kernel launches, no host sync, the same buffers every
step, so it also runs before each CUDA-graph replay. See ``cuda/include/flashcore/decode_plan.h``.

* chunk i is partial result i (or, when the tail split cut it, several in a row); request b owns
  chunks ``chunk_base[b]:chunk_base[b+1]`` and merges them in position order (deterministic);
* a work item = one chunk's K/V, loaded once per KV head and multiplied against all of its
  readers' query rows on tensor cores.

``plan_table_reference`` is the same plan built in plain torch (the tests' model of it), and
``execute_plan_ref`` runs any such plan in float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .api import MAX_CHUNK_TOKENS, MIN_CHUNK_TOKENS, _check_pools, _num_sms, _scale, target_work_items
from .checks import ATTENTION_DTYPES, check_head_dim, check_heads, check_len, check_positive_int, check_range, check_tensor

__all__ = [
    "DecodePlanner",
    "TablePlan",
    "paged_decode_table",
    "plan_table_reference",
    "execute_plan_ref",
    "choose_chunk_tokens",
    "wave_filling_chunk",
    "chunk_tasks",
]

META_FIELDS = ("chunk_tokens", "chunks", "work_items", "tasks", "tokens", "unique_tokens", "clamped", "hash_size")
ROWS_PER_TASK = 32  # kDecodeRowsPerCta: query rows (readers x GQA group) per CTA
MAX_GROUP = 64  # kDecodeMaxGroup: query heads per KV head
# The page-table kernel reads a chunk's slots straight from req_to_token (no per-item offset
# table in shared memory, which bounds the layout path at MAX_CHUNK_TOKENS), so its automatic
# chunks may be longer: each chunk is a partial (O, LSE) written and merged again, and with
# 8 KV heads 2048-token chunks time 2-3% faster than 1024 (benchmarks/results/h100/decode_chunks).
MAX_AUTO_CHUNK_TOKENS = 2 * MAX_CHUNK_TOKENS
TABLE_WAVES_DIVISOR = 2  # aim for half the layout policy's CTAs: two waves instead of four
DEFAULT_WORKSPACE_BYTES = 256 << 20
# The tail split (cuda/include/flashcore/paged_decode.h): the last one-reader items, up to one wave
# of tasks, cut so that short tasks fill the last wave. With a wave of at most SPLIT_EVEN_WAVE
# tasks (16 or more KV heads) an item is cut evenly into SPLIT_PARTS tasks; with a longer wave the
# cut is guided: the first three quarters stay one task in place and the last quarter is a second
# task after all the others (see split_items in cuda/decode_plan.cu for the measurements).
SPLIT_PARTS = 4  # kDecodeSplitMaxParts
SPLIT_MAX_ITEMS = 64  # kDecodeSplitMaxItems: items a plan may cut
SPLIT_EVEN_WAVE = 32  # kDecodeSplitEvenWave: the longest wave (in tasks) that is cut evenly
SPLIT_GUIDED_PARTS = 2  # kDecodeSplitGuidedParts
TILE_TOKENS = 64  # kDecodeTileTokens: the split cuts between 64-token tiles
CTAS_PER_SM = 3  # kDecodeCtasPerSm
# The wave-filling chunk (cuda/include/flashcore/decode_plan.h, TablePlanArgs::wave_max_chunk):
# without sharing, the automatic chunk becomes the longest of at most WAVE_MAX_CHUNK_TOKENS whose
# tasks fill the last wave of resident CTAs at least WAVE_FILL full (12 or fewer KV heads: with more, the
# tail split evens the last wave out). With 8 KV heads on the H200 it read up to 10% more of cuDNN's
# speed than the power-of-two chunk (benchmarks/results/h200/decode_waves_s17).
WAVE_MAX_CHUNK_TOKENS = 4608
WAVE_MAX_BATCH = 2048  # kWaveMaxBatch
WAVE_MAX_WAVES = 12  # kWaveMaxWaves
WAVE_FILL = (17, 20)  # kWaveFillNum / kWaveFillDen
WAVE_CANDIDATES = 256  # kWaveCandidates


def target_chunks(num_kv_heads: int, device: torch.device) -> int:
    """Chunks the automatic policy aims for: half of ``api.target_work_items`` (two waves of two
    CTAs per SM) over all KV heads."""
    return -(-target_work_items(device) // (TABLE_WAVES_DIVISOR * max(num_kv_heads, 1)))


def wave_tasks(resident_ctas: int, num_kv_heads: int) -> int:
    """Tasks of one KV head that run at once (a wave): the resident CTAs over the KV heads."""
    return -(-resident_ctas // num_kv_heads)


def chunk_tasks(lengths: Sequence[int], chunk: int, tasks_per_chunk: int = 1) -> int:
    """(chunk, KV head) tasks of a batch cut into ``chunk``-token chunks: its chunks times
    ``tasks_per_chunk`` (with the default 1, the chunk count)."""
    return tasks_per_chunk * sum(-(-n // chunk) for n in lengths)


def wave_filling_chunk(lengths: Sequence[int], first_slots: Sequence[int], chunk: int, num_kv_heads: int,
                       tasks_per_chunk: int, slots: int, max_chunk: int = WAVE_MAX_CHUNK_TOKENS,
                       min_chunk: int = MIN_CHUNK_TOKENS) -> int:
    """The planner's wave-filling move of the automatic ``chunk`` (in Python).

    It returns ``chunk`` when two non-empty requests share a first slot, when the tail split evens
    out the last wave instead (a wave of at most ``SPLIT_EVEN_WAVE`` tasks: 16 or more KV heads on
    132 SMs), or when the batch holds more than ``WAVE_MAX_WAVES`` waves of ``slots`` (chunk, KV
    head) tasks at ``chunk``. Otherwise: the first ``ceil(longest / n)``, n = 1, 2, ..., of at most
    ``max_chunk`` and at least ``max(min_chunk, chunk // 2)`` tokens whose tasks fill the last wave
    at least ``WAVE_FILL`` full (``chunk`` if none does)."""
    longest = max(lengths, default=0)
    per_chunk = num_kv_heads * tasks_per_chunk

    def tasks(c: int) -> int:
        return chunk_tasks(lengths, c, per_chunk)

    if (max_chunk <= 0 or len(lengths) > WAVE_MAX_BATCH or longest <= 0 or slots <= 0 or per_chunk <= 0
            or wave_tasks(slots, num_kv_heads) <= SPLIT_EVEN_WAVE or tasks(chunk) > WAVE_MAX_WAVES * slots):
        return chunk
    firsts = [s for s, n in zip(first_slots, lengths) if n > 0]
    if len(set(firsts)) < len(firsts):
        return chunk
    lowest = max(min_chunk, chunk // 2)
    n0 = -(-longest // max_chunk)
    for n in range(n0, n0 + WAVE_CANDIDATES):
        c = -(-longest // n)
        if c < lowest:
            break
        x = tasks(c)
        waves = -(-x // slots)
        if WAVE_FILL[1] * (x - (waves - 1) * slots) >= WAVE_FILL[0] * slots:
            return c
    return chunk


def choose_chunk_tokens(lengths: Sequence[int], max_chunks: int, fixed: int = 0, target: int = 0,
                        min_chunk: int = MIN_CHUNK_TOKENS, max_auto: int = MAX_AUTO_CHUNK_TOKENS,
                        first_slots: Optional[Sequence[int]] = None, num_kv_heads: int = 0,
                        tasks_per_chunk: int = 1, slots: int = 0, wave_max_chunk: int = WAVE_MAX_CHUNK_TOKENS) -> int:
    """The planner's chunk size C (what the device computes, in Python): ``fixed`` if given, else
    the largest power of two in [min_chunk, max_auto] that still gives ``target`` chunks of the
    requested tokens, moved by ``wave_filling_chunk`` when ``first_slots`` (each request's first
    KV slot) is given; then doubled until the chunks fit ``max_chunks``."""
    tokens, longest = sum(lengths), max(lengths, default=0)
    chunk = fixed
    if chunk <= 0:
        chunk = max_auto
        while chunk > min_chunk and tokens < target * chunk:
            chunk //= 2
        if first_slots is not None:
            chunk = wave_filling_chunk(lengths, first_slots, chunk, num_kv_heads, tasks_per_chunk, slots,
                                       wave_max_chunk, min_chunk)
    while chunk_tasks(lengths, chunk) > max_chunks and chunk < longest:
        chunk *= 2
    return chunk


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


def split_guided(num_kv_heads: int, resident_ctas: int) -> bool:
    """Whether the tail split is guided (a wave of more than ``SPLIT_EVEN_WAVE`` tasks)."""
    return wave_tasks(resident_ctas, max(num_kv_heads, 1)) > SPLIT_EVEN_WAVE


def split_part_count(guided: bool, parts: int, tiles: int) -> int:
    """Parts of a cut item of ``tiles`` (>= 2) 64-token tiles: even, at most one a tile; guided,
    the head and the last quarter."""
    return min(parts, SPLIT_GUIDED_PARTS) if guided else min(parts, tiles)


def split_items(tasks: int, splittable: int, num_kv_heads: int, resident_ctas: int, grid_work: int,
                parts: int) -> int:
    """How many one-reader items the tail split cuts (the planner's rule, in Python): with more
    than one wave of tasks (``resident_ctas / num_kv_heads`` run at once), up to a wave of them
    and ``SPLIT_MAX_ITEMS``, while every task still gets one of the ``grid_work`` CTAs a KV head."""
    if parts <= 1 or num_kv_heads <= 0 or grid_work <= tasks:
        return 0
    wave = wave_tasks(resident_ctas, num_kv_heads)
    if tasks <= wave:
        return 0
    return min(splittable, wave, SPLIT_MAX_ITEMS, (grid_work - tasks) // (parts - 1))


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
        tasks += -(-len(parts) * group // ROWS_PER_TASK)
    splittable = [(w[3][0], -(-w[2] // TILE_TOKENS)) for w in work
                  if len(w[3]) == 1 and group <= ROWS_PER_TASK and w[2] > TILE_TOKENS]
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
    from .reference import _attend_one, gather_kv, merge_states_ref

    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
    parts_o = [None] * plan.num_chunks
    parts_lse = [None] * plan.num_chunks
    owner = plan.chunk_owner()
    for row, pos0, ntok, partials in plan.work:
        slots = req_to_token[row, pos0:pos0 + ntok].to(torch.int64).to(k_cache.device)
        k = gather_kv(k_cache, slots, page_size).float()
        v = gather_kv(v_cache, slots, page_size).float()
        for i in partials:
            o, lse = _attend_one(q[owner[i]].float().unsqueeze(0), k, v, scale, causal=False)
            parts_o[i], parts_lse[i] = o[0], lse[0]
    out = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    lse = torch.full(q.shape[:-1], float("-inf"), dtype=torch.float32, device=q.device)
    for b in range(q.shape[0]):
        for i in range(plan.chunk_base[b], plan.chunk_base[b + 1]):
            out[b], lse[b] = merge_states_ref(out[b], lse[b], parts_o[i], parts_lse[i])
    return out, lse


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
    """

    def __init__(self, max_batch: int, num_q_heads: int, head_dim: int, device,
                 workspace_bytes: int = DEFAULT_WORKSPACE_BYTES):
        from . import _jit

        check_positive_int("num_q_heads", num_q_heads)
        check_positive_int("head_dim", head_dim)
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.max_batch = max(int(max_batch), 1)
        self.num_q_heads, self.head_dim = num_q_heads, head_dim
        per_partial = num_q_heads * (head_dim + 1) * 4
        self.max_chunks = max(self.max_batch, workspace_bytes // per_partial)
        self._mod = _jit.load()
        i32 = dict(dtype=torch.int32, device=self.device)
        self.ints = torch.zeros(self._mod.table_plan_ints(self.max_batch, self.max_chunks), **i32)
        self.hash = torch.zeros(self._mod.table_plan_hash_size(self.max_chunks), dtype=torch.int64, device=self.device)
        partials = self._mod.table_plan_partials(self.max_chunks)  # the chunks' and the tail split's
        self.partial_o = torch.empty(partials * num_q_heads * head_dim, dtype=torch.float32, device=self.device)
        self.partial_lse = torch.empty(partials * num_q_heads, dtype=torch.float32, device=self.device)
        self.grid_work = CTAS_PER_SM * _num_sms(self.device)  # three CTAs per SM loop over the tasks
        self.split_parts = SPLIT_PARTS  # the tail split's parts per item (1: no split)
        self.wave_max_chunk = WAVE_MAX_CHUNK_TOKENS  # the wave-filling chunk's bound (0: off)
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
        check_tensor("req_to_token", req_to_token, ndim=2, dtypes=(torch.int32,), device=self.device)
        for name, t in (("req_pool_indices", req_pool_indices), ("seq_lens", seq_lens)):
            check_tensor(name, t, ndim=1, dtypes=(torch.int32, torch.int64), device=self.device)
        check_len("req_pool_indices", req_pool_indices, seq_lens.shape[0], "one pool row per request, like seq_lens")
        if seq_lens.shape[0] > self.max_batch:
            raise ValueError(f"seq_lens: {seq_lens.shape[0]} requests, the planner holds {self.max_batch}")
        if not 1 <= group <= MAX_GROUP:
            raise ValueError(f"group: expected 1..{MAX_GROUP} query heads per KV head, got {group}")
        self._mod.plan_decode_table(
            req_to_token, req_pool_indices, seq_lens, self.ints, self.hash, self.max_batch, self.max_chunks,
            int(group), int(chunk_tokens or 0), MIN_CHUNK_TOKENS, MAX_AUTO_CHUNK_TOKENS,
            target_chunks(num_kv_heads, self.device), int(num_kv_heads), int(self.grid_work), int(self.split_parts),
            int(self.wave_max_chunk),
        )
        self._batch, self._group, self._req_to_token = seq_lens.shape[0], int(group), req_to_token

    def run(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, softmax_scale: float,
            page_size: int = 1) -> Tuple[torch.Tensor, torch.Tensor]:
        """Decode over the last plan: ``(out [B, Hq, D], lse [B, Hq] float32)``."""
        from .kernels import DECODE_HEAD_DIMS, _check_kernel_input

        _check_kernel_input(q, "decode", DECODE_HEAD_DIMS)
        if self._batch is None:
            raise RuntimeError("DecodePlanner.run: call plan() first")
        if q.shape[0] != self._batch:
            raise ValueError(f"q: {q.shape[0]} requests, the last plan has {self._batch}")
        group = q.shape[1] // max(k_cache.shape[1], 1)
        if group > self._group:
            raise ValueError(f"q/k_cache: {group} query heads per KV head, the plan was made for at most {self._group}")
        return self._mod.paged_decode_table(
            q, k_cache, v_cache, self._req_to_token, self.ints, self.hash, self.max_batch, self.max_chunks,
            page_size, softmax_scale, self.partial_o, self.partial_lse, self.grid_work,
        )

    # ---- host-side views (each syncs; for reports and tests)
    def _views(self) -> Dict[str, torch.Tensor]:
        return dict(self._mod.table_plan_views(self.ints, self.hash, self.max_batch, self.max_chunks))

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
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Decode straight from SGLang's page table (one query token per request).

    Request b attends to the KV slots ``req_to_token[req_pool_indices[b], :seq_lens[b]]`` of
    ``k_cache``/``v_cache`` (SGLang's [slots, Hkv, D] pool, or head-major pages
    [num_pages, Hkv, page_size, D]). On a Hopper GPU the plan is made on the device and chunks
    with identical slots are loaded once for all their readers; elsewhere the float32 reference
    runs. This convenience call reuses one ``DecodePlanner`` per device, stream and head shape
    (made on first use, remade larger when a batch outgrows it); a server keeps its own.

    Returns ``(out [B, Hq, D], lse [B, Hq] float32)``; an empty request gives 0 and -inf.
    """
    from . import ops
    from .layout import from_sglang
    from .reference import paged_decode_ref

    check_tensor("q", q, ndim=3, dtypes=ATTENTION_DTYPES, last_dim_contiguous=True)
    check_head_dim("q", q.shape[-1])
    check_tensor("req_to_token", req_to_token, ndim=2, dtypes=(torch.int32, torch.int64), device=q.device)
    for name, t in (("req_pool_indices", req_pool_indices), ("seq_lens", seq_lens)):
        check_tensor(name, t, ndim=1, dtypes=(torch.int32, torch.int64), device=q.device)
        check_len(name, t, q.shape[0], "one entry per request of q")
    num_slots = _check_pools(k_cache, v_cache, q, page_size)
    check_heads("q", q.shape[1], "k_cache", k_cache.shape[1])
    scale = _scale(softmax_scale, q.shape[-1])
    if check_bounds:
        check_range("req_pool_indices", req_pool_indices, 0, req_to_token.shape[0], "request pool row")
        check_range("seq_lens", seq_lens, 0, req_to_token.shape[1] + 1, "sequence length")
    layout = None
    if check_bounds or not (q.is_cuda and ops.impl_mode() != "reference"):
        layout = from_sglang(req_to_token, req_pool_indices, seq_lens, page_size, num_slots=num_slots,
                             validate=check_bounds)
    if not (q.is_cuda and ops.impl_mode() != "reference"):
        out, lse = paged_decode_ref(q, k_cache, v_cache, layout, softmax_scale=scale)
        return out.to(q.dtype), lse.float()
    planner = _planner_for(q)
    planner.plan(req_to_token.to(torch.int32), req_pool_indices, seq_lens, k_cache.shape[1],
                 q.shape[1] // k_cache.shape[1], chunk_tokens)
    return planner.run(q, k_cache, v_cache, scale, page_size)
