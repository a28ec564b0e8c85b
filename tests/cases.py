"""Test batches shaped like SGLang's radix cache makes them, and plain-Python models.

``make_page_table`` allocates whole pages from a shuffled free list (as SGLang's paged
allocator hands them out), shares page-aligned prefixes between requests according
to a sharing pattern, and returns ``req_to_token`` / ``req_pool_indices`` / ``seq_lens``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import torch

PATTERNS = ("none", "prefix", "tree", "identical", "empty_rows")
HEAD_DIMS = (64, 128, 256, 80, 96, 192)  # compiled (64, 128, 256) and served padded to the next one (heuristics.kernel_head_dim)


@dataclass
class PageTable:
    req_to_token: torch.Tensor  # [max_reqs, max_ctx] int32
    req_pool_indices: torch.Tensor  # [B] int64
    seq_lens: torch.Tensor  # [B] int64
    page_size: int
    num_slots: int
    rows: List[List[int]]  # the slots of each request, in position order


class _Allocator:
    def __init__(self, num_pages: int, page_size: int, rng: random.Random):
        self.free = list(range(num_pages))
        rng.shuffle(self.free)
        self.page_size = page_size

    def slots(self, n: int) -> List[int]:
        out: List[int] = []
        while len(out) < n:
            page = self.free.pop()
            take = min(self.page_size, n - len(out))
            out.extend(page * self.page_size + i for i in range(take))
        return out


def _share_len(n: int, page_size: int) -> int:
    return (n // page_size) * page_size  # radix sharing is page-granular


def make_page_table(
    pattern: str, lengths: Sequence[int], page_size: int, seed: int = 0, shared: int | None = None
) -> PageTable:
    """Requests of the given lengths sharing prefixes per ``pattern`` (see PATTERNS).

    ``shared``: tokens of the common prefix (rounded down to whole pages), default half the shortest.
    """
    rng = random.Random(seed)
    lengths = list(lengths)
    batch = len(lengths)
    if pattern == "empty_rows":
        lengths = [0 if i % 3 == 1 else n for i, n in enumerate(lengths)]
    if pattern == "identical":
        lengths = [lengths[0]] * batch if batch else []
    max_len = max(lengths, default=0)
    num_pages = sum(-(-n // page_size) for n in lengths) + 2 * -(-max_len // page_size) + 4
    alloc = _Allocator(num_pages, page_size, rng)
    rows: List[List[int]] = []
    nonzero = [n for n in lengths if n]
    base = shared if shared is not None else (min(nonzero) // 2 if nonzero else 0)
    if pattern in ("prefix", "tree"):
        common = alloc.slots(_share_len(min(base, min(nonzero, default=0)), page_size))
    if pattern == "tree":
        branch_len = _share_len(max(0, min(nonzero, default=0) - len(common)) // 2, page_size)
        branches = [alloc.slots(branch_len), alloc.slots(branch_len)]
    if pattern == "identical":
        same = alloc.slots(lengths[0]) if batch else []
    for i, n in enumerate(lengths):
        if pattern in ("none", "empty_rows"):
            row = alloc.slots(n)
        elif pattern == "prefix":
            row = common[:n] + alloc.slots(max(0, n - len(common)))
        elif pattern == "tree":
            head = common + branches[i % 2]
            row = head[:n] + alloc.slots(max(0, n - len(head)))
        elif pattern == "identical":
            row = list(same)
        else:
            raise ValueError(pattern)
        rows.append(row)
    # rows of the request pool are scattered, and the pool has spare rows
    pool_rows = list(range(batch + 3))
    rng.shuffle(pool_rows)
    req_to_token = torch.zeros((batch + 3, max(max_len, 1) + 5), dtype=torch.int32)
    for i, row in enumerate(rows):
        req_to_token[pool_rows[i], : len(row)] = torch.tensor(row, dtype=torch.int32)
    return PageTable(
        req_to_token=req_to_token,
        req_pool_indices=torch.tensor(pool_rows[:batch], dtype=torch.int64),
        seq_lens=torch.tensor(lengths, dtype=torch.int64),
        page_size=page_size,
        num_slots=num_pages * page_size,
        rows=rows,
    )


def model_runs(rows: Sequence[Sequence[int]], page_size: int) -> List[List[Tuple[int, int, int, int]]]:
    """Plain-Python model of the layout: per request, its runs (page, in-page slot, count, position)."""
    out = []
    for row in rows:
        runs: List[List[int]] = []
        for pos, slot in enumerate(row):
            page, off = divmod(slot, page_size)
            last = runs[-1] if runs else None
            if last and last[0] == page and last[1] + last[2] == off:
                last[2] += 1
            else:
                runs.append([page, off, 1, pos])
        out.append([tuple(r) for r in runs])
    return out


def model_build_layout(token_to_page, seq_starts, seq_ends, resident, page_tokens):
    """Plain-Python model of the seed's build_layout."""
    row_offsets, cols, counts, staging = [0], [], [], []
    staged: Dict[int, int] = {}
    for s, e in zip(seq_starts, seq_ends):
        prev = None
        for t in range(s, e):
            p = token_to_page[t]
            if p == prev:
                counts[-1] += 1
            else:
                cols.append(p)
                counts.append(1)
                if resident[p]:
                    staging.append(-1)
                else:
                    staging.append(staged.setdefault(p, len(staged)))
            prev = p
        row_offsets.append(len(cols))
    return row_offsets, cols, counts, staging


def random_qkv(batch, hq, hkv, d, num_slots, dtype=torch.float32, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, hq, d, generator=g, dtype=torch.float32).to(dtype).to(device)
    k = torch.randn(num_slots, hkv, d, generator=g, dtype=torch.float32).to(dtype).to(device)
    v = torch.randn(num_slots, hkv, d, generator=g, dtype=torch.float32).to(dtype).to(device)
    return q, k, v


@dataclass
class ExtendCase:
    """An extend batch on SGLang's pools: the new tokens' slots are already in req_to_token and
    their K/V already stored in the pool (as SGLang does before attention runs)."""

    table: PageTable
    prefix: List[int]
    extend: List[int]
    out_cache_loc: torch.Tensor  # [sum(extend)] int64, request-major
    q: torch.Tensor  # [sum(extend), Hq, D]
    k_cache: torch.Tensor
    v_cache: torch.Tensor

    @property
    def k_new(self) -> torch.Tensor:
        return self.k_cache[self.out_cache_loc]

    @property
    def v_new(self) -> torch.Tensor:
        return self.v_cache[self.out_cache_loc]

    def cu_seqlens_q(self) -> torch.Tensor:
        cu = torch.zeros(len(self.extend) + 1, dtype=torch.int32, device=self.q.device)
        cu[1:] = torch.tensor(self.extend, device=self.q.device).cumsum(0)
        return cu


def varlen_qkv(lq: Sequence[int], lk: Sequence[int], hq: int, hkv: int, d: int, dtype, seed: int,
               device="cuda"):
    """Ragged q [sum(lq), Hq, D] and k/v [sum(lk), Hkv, D] (standard normal, then ``dtype``) and
    their int32 offsets cu_q, cu_k."""
    g = torch.Generator(device=device).manual_seed(seed)
    q = torch.randn(sum(lq), hq, d, device=device, generator=g).to(dtype)
    k = torch.randn(sum(lk), hkv, d, device=device, generator=g).to(dtype)
    v = torch.randn(sum(lk), hkv, d, device=device, generator=g).to(dtype)
    cu = [torch.tensor([0] + list(lens), device=device).cumsum(0).to(torch.int32) for lens in (lq, lk)]
    return q, k, v, cu[0], cu[1]


def make_extend_case(prefix: Sequence[int], extend: Sequence[int], page: int, hq: int, hkv: int, d: int,
                     dtype=torch.float32, device="cpu", seed: int = 0, shared: bool = False) -> ExtendCase:
    """``shared``: every request's prefix is one common page-aligned prefix (a radix-cache hit)."""
    pattern = "prefix" if shared else "none"
    pt = make_page_table(pattern, [p + e for p, e in zip(prefix, extend)], page, seed=seed,
                         shared=min(prefix, default=0))
    g = torch.Generator().manual_seed(seed)
    k_cache = torch.randn(pt.num_slots, hkv, d, generator=g).to(dtype).to(device)
    v_cache = torch.randn(pt.num_slots, hkv, d, generator=g).to(dtype).to(device)
    q = torch.randn(sum(extend), hq, d, generator=g).to(dtype).to(device)
    loc = torch.tensor([s for row, p in zip(pt.rows, prefix) for s in row[p:]], dtype=torch.long, device=device)
    return ExtendCase(pt, list(prefix), list(extend), loc, q, k_cache, v_cache)


DECODE_HEADS = [(8, 8), (8, 2), (32, 8), (16, 16), (4, 1), (32, 4), (6, 2), (5, 5), (10, 2)]


def random_decode_case(rng: random.Random, heads=DECODE_HEADS, batches=(1, 2, 3, 5, 8, 17)):
    """A randomized decode batch: (pattern, page, hq, hkv, d, dtype, lengths); one in ten has a
    5K-20K-token request among short ones."""
    pattern = rng.choice(PATTERNS)
    page = rng.choice([1, 16, 64, 128])
    hq, hkv = rng.choice(heads)
    d = rng.choice(HEAD_DIMS)
    dtype = rng.choice([torch.float16, torch.bfloat16])
    batch = rng.choice(batches)
    long = rng.random() < 0.1
    lengths = [rng.choice([1, 2, 7, rng.randint(1, 600), rng.randint(1, 3000)] + ([rng.randint(5000, 20000)] if long else []))
               for _ in range(batch)]
    return pattern, page, hq, hkv, d, dtype, lengths


def random_extend_case(rng: random.Random):
    """A randomized extend batch: (page, d, hq, hkv, dtype, prefix lengths, extend lengths, shared);
    half of them share one page-aligned prefix, as the radix cache hands it out."""
    page = rng.choice([1, 16, 64, 128])
    d = rng.choice(HEAD_DIMS)
    hkv = rng.choice([1, 2, 8])
    hq = hkv * rng.choice([1, 4, 8])
    dtype = rng.choice([torch.float16, torch.bfloat16])
    batch = rng.choice([1, 2, 4, 7])
    shared = rng.random() < 0.5
    prefix = [rng.choice([0, 1, page, 3 * page, rng.randint(0, 900)]) for _ in range(batch)]
    if shared:
        common = (rng.randint(0, 900) // page) * page
        prefix = [common] * batch
    ext = [rng.choice([0, 1, 2, 17, 128, rng.randint(1, 400)]) for _ in range(batch)]
    return page, d, hq, hkv, dtype, prefix, ext, shared
