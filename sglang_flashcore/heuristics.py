"""Every launch, chunk and split policy of the kernels, in one place.

The numbers that the CUDA side also needs are defined in ``cuda/include/flashcore/heuristics.h``
and mirrored here; ``MIRRORED`` names each pair, and a CPU test (``tests/test_heuristics.py``)
parses the header and checks that both sides agree. The rest are policies decided here and
passed to the kernels as launch arguments.

Where a number was chosen by measurement, ``docs/performance.md`` has the figures.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch

# ---------------------------------------------------------------- mirrored in heuristics.h
DECODE_MAX_CHUNK_TOKENS = 1024  # the largest page size the decode bindings take; the automatic chunk is twice it at most
DECODE_TILE_TOKENS = 64  # tokens per pipeline stage of the decode kernel; the tail split cuts between tiles
DECODE_ROWS_PER_TASK = 32  # query rows (readers x GQA group) of one decode CTA
DECODE_CTAS_PER_SM = 3  # resident decode CTAs per SM: the fixed grid is this times the SM count
DECODE_NARROW_ROWS = 8  # tasks of at most this many rows run the token-major MMA
DECODE_MAX_GROUP = 64  # query heads per KV head the decode kernel takes
SPLIT_MAX_ITEMS = 64  # one-reader items the tail split may cut in one plan
SPLIT_EVEN_WAVE = 32  # the longest wave (in tasks) that is cut evenly; longer waves are cut guided
SPLIT_GUIDED_PARTS = 2  # a guided cut: the first three quarters, then the last quarter after all others
SPLIT_MAX_PARTS = 4  # parts of an evenly cut item
WAVE_MAX_BATCH = 2048  # requests the wave-filling move's no-sharing check holds
WAVE_MAX_WAVES = 12  # batches with more waves at the power-of-two chunk keep it
WAVE_FILL_NUM, WAVE_FILL_DEN = 17, 20  # the wave-filling chunk fills the last wave at least 85%
WAVE_CANDIDATES = 256  # chunk counts the wave-filling move tries

MIRRORED: Dict[str, str] = {
    "DECODE_MAX_CHUNK_TOKENS": "kDecodeMaxChunkTokens",
    "DECODE_TILE_TOKENS": "kDecodeTileTokens",
    "DECODE_ROWS_PER_TASK": "kDecodeRowsPerCta",
    "DECODE_CTAS_PER_SM": "kDecodeCtasPerSm",
    "DECODE_NARROW_ROWS": "kDecodeNarrowRows",
    "DECODE_MAX_GROUP": "kDecodeMaxGroup",
    "SPLIT_MAX_ITEMS": "kDecodeSplitMaxItems",
    "SPLIT_EVEN_WAVE": "kDecodeSplitEvenWave",
    "SPLIT_GUIDED_PARTS": "kDecodeSplitGuidedParts",
    "SPLIT_MAX_PARTS": "kDecodeSplitMaxParts",
    "WAVE_MAX_BATCH": "kWaveMaxBatch",
    "WAVE_MAX_WAVES": "kWaveMaxWaves",
    "WAVE_FILL_NUM": "kWaveFillNum",
    "WAVE_FILL_DEN": "kWaveFillDen",
    "WAVE_CANDIDATES": "kWaveCandidates",
}

# ------------------------------------------------------------------------ Python-side policy
KERNEL_DTYPES = (torch.float16, torch.bfloat16)  # what the CUDA kernels compute in
BUILT_HEAD_DIMS = (64, 128, 256)  # the head dims the CUDA kernels are compiled for


def kernel_head_dim(head_dim: int) -> int:
    """The compiled head dim that serves ``head_dim`` (heuristics.h's ``kernel_head_dim_for``): 64,
    128 or 256 itself, a multiple of 16 between them the next one up (its columns past the head
    dim load as zeros and are never stored: Phi-3's 96 runs in the 128 kernels); 0 for none. The
    padded columns cost their share of a prefill's tensor-core work, not of decode's bytes."""
    d = int(head_dim)
    if d < 64 or d > 256 or d % 16:
        return 0
    return next(built for built in BUILT_HEAD_DIMS if d <= built)


DENSE_HEAD_DIMS = tuple(d for d in range(1, 257) if kernel_head_dim(d))  # the dense / extend kernel's
DECODE_HEAD_DIMS = DENSE_HEAD_DIMS  # the decode kernel's (and the verify draft kernel's)


def head_dims_text(dims: Sequence[int]) -> str:
    """Head dims in words: "64 to 256 in multiples of 16" for the kernels' set, else a list."""
    dims = sorted(dims)
    if len(dims) > 2 and dims == list(range(dims[0], dims[-1] + 1, dims[1] - dims[0])):
        return f"{dims[0]} to {dims[-1]} in multiples of {dims[1] - dims[0]}"
    text = [str(d) for d in dims]
    return text[0] if len(text) == 1 else f"{', '.join(text[:-1])} and {text[-1]}"

# The automatic split-KV chunk: the largest power of two in [MIN_CHUNK_TOKENS, MAX_AUTO_CHUNK_TOKENS]
# that still gives about two waves of (chunk, KV head) tasks. 2048-token chunks timed 2-3% faster
# than 1024 with 8 KV heads (each chunk is one partial, written and merged again).
MIN_CHUNK_TOKENS = 64
MAX_AUTO_CHUNK_TOKENS = 2 * DECODE_MAX_CHUNK_TOKENS
DEFAULT_CHUNK_TOKENS = 256  # SharingPlan reports when no chunk is named
TARGET_CTAS_PER_SM = 2  # the chunk policy aims at TARGET_WAVES waves of this many CTAs per SM
TARGET_WAVES = 2
# The wave-filling chunk: without sharing and with 12 or fewer KV heads, the automatic chunk moves
# to the longest of at most this many tokens whose tasks fill the last wave (see wave_filling_chunk).
WAVE_MAX_CHUNK_TOKENS = 4608
DEFAULT_WORKSPACE_BYTES = 256 << 20  # a DecodePlanner's partial results; bounds the chunks of a step
# Deterministic (batch-invariant) decode, SGLang's --enable-deterministic-inference: every request
# is cut at the same positions whatever its batch (a fixed chunk, no tail split, no wave-filling
# move), no chunk is shared with another request, and the merge has one shape. 1024 tokens keep a
# lone 128K request at 128 chunks per KV head, and a 4K one at 4.
DETERMINISTIC_CHUNK_TOKENS = 1024
MIN_PAGED_PREFILL_PAGE = 8  # the dense kernel reads pool pages in place in TMA boxes of 8 rows


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of ``device`` (132, an H100 SXM's, for CPU tensors)."""
    if device.type != "cuda":
        return 132
    return torch.cuda.get_device_properties(device).multi_processor_count


def can_page(page_size: int) -> bool:
    """Whether the dense kernel can read pool pages of this size in place (TMA boxes of 8 rows)."""
    return page_size >= MIN_PAGED_PREFILL_PAGE and page_size % MIN_PAGED_PREFILL_PAGE == 0


def target_chunks(num_kv_heads: int, device: torch.device) -> int:
    """Chunks the automatic policy aims for: TARGET_WAVES waves of TARGET_CTAS_PER_SM CTAs per SM,
    over all KV heads."""
    ctas = TARGET_WAVES * TARGET_CTAS_PER_SM * num_sms(device)
    return -(-ctas // max(num_kv_heads, 1))


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
    """The planner's wave-filling move of the automatic ``chunk`` (what the device computes).

    It returns ``chunk`` when two non-empty requests share a first slot, when the tail split evens
    out the last wave instead (a wave of at most ``SPLIT_EVEN_WAVE`` tasks: 16 or more KV heads on
    132 SMs), or when the batch holds more than ``WAVE_MAX_WAVES`` waves of ``slots`` (chunk, KV
    head) tasks at ``chunk``. Otherwise: the first ``ceil(longest / n)``, n = 1, 2, ..., of at most
    ``max_chunk`` and at least ``max(min_chunk, chunk // 2)`` tokens whose tasks fill the last wave
    at least WAVE_FILL_NUM / WAVE_FILL_DEN full (``chunk`` if none does)."""
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
        if WAVE_FILL_DEN * (x - (waves - 1) * slots) >= WAVE_FILL_NUM * slots:
            return c
    return chunk


def choose_chunk_tokens(lengths: Sequence[int], max_chunks: int, fixed: int = 0, target: int = 0,
                        min_chunk: int = MIN_CHUNK_TOKENS, max_auto: int = MAX_AUTO_CHUNK_TOKENS,
                        first_slots: Optional[Sequence[int]] = None, num_kv_heads: int = 0,
                        tasks_per_chunk: int = 1, slots: int = 0, wave_max_chunk: int = WAVE_MAX_CHUNK_TOKENS) -> int:
    """The planner's chunk size C (what the device computes): ``fixed`` if given, else the largest
    power of two in [min_chunk, max_auto] that still gives ``target`` chunks of the requested
    tokens, moved by ``wave_filling_chunk`` when ``first_slots`` (each request's first KV slot) is
    given; then doubled until the chunks fit ``max_chunks``."""
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


def split_guided(num_kv_heads: int, resident_ctas: int) -> bool:
    """Whether the tail split is guided (a wave of more than ``SPLIT_EVEN_WAVE`` tasks)."""
    return wave_tasks(resident_ctas, max(num_kv_heads, 1)) > SPLIT_EVEN_WAVE


def split_part_count(guided: bool, parts: int, tiles: int) -> int:
    """Parts of a cut item of ``tiles`` (>= 2) tiles: even, at most one a tile; guided, the head and
    the last quarter."""
    return min(parts, SPLIT_GUIDED_PARTS) if guided else min(parts, tiles)


def split_items(tasks: int, splittable: int, num_kv_heads: int, resident_ctas: int, grid_work: int,
                parts: int) -> int:
    """How many one-reader items the tail split cuts: with more than one wave of tasks
    (``resident_ctas / num_kv_heads`` run at once), up to a wave of them and ``SPLIT_MAX_ITEMS``,
    while every task still gets one of the ``grid_work`` CTAs a KV head."""
    if parts <= 1 or num_kv_heads <= 0 or grid_work <= tasks:
        return 0
    wave = wave_tasks(resident_ctas, num_kv_heads)
    if tasks <= wave:
        return 0
    return min(splittable, wave, SPLIT_MAX_ITEMS, (grid_work - tasks) // (parts - 1))
