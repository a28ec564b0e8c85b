"""CSR page layouts: which KV pages each request reads, and who shares them.

Two levels:

* ``PagedLayout`` — request -> runs of KV slots (CSR). A *run* is a maximal
  stretch of a request's consecutive tokens that sit in consecutive slots of one
  page. Entry ``e`` of row ``b`` covers slots
  ``cols[e] * page_size + page_offsets[e] + [0, counts[e])`` and the request's
  token positions ``positions[e] + [0, counts[e])``.
* ``SharingPlan`` — the transpose (unique run -> requests that read it) and a
  deterministic work list for the decode kernel: each work item is a chunk of
  runs read by the *same* set of requests, so the kernel loads that chunk once
  and multiplies it against all of its readers' queries. Long rows are cut into
  chunks of at most ``chunk_tokens`` tokens (split-KV). Each (work item, reader)
  pair is one partial result; ``merge_offsets``/``merge_partials`` list each
  request's partials in token order, so merging them is deterministic.

Everything here is vectorized torch code: it runs on CPU and CUDA tensors alike,
with no Python loop over tokens, pages or requests. It is the general, user-facing view
of a batch (reports, the seed's CSR builder, the references). The kernels run from the
page table instead: ``PagedLayout.page_table()`` turns a layout into one, and
``paged_decode`` / ``paged_extend`` plan from it exactly as the SGLang backend does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Tuple

import torch

from .heuristics import DEFAULT_CHUNK_TOKENS
from .indexing import count_values, exclusive_cumsum, segment_arange
from .checks import (
    INDEX_DTYPES,
    MAX_SLOTS,
    check_index,
    check_len,
    check_nonnegative,
    check_nonnegative_int,
    check_positive_int,
    check_range,
    check_tensor,
    reads_values,
)

__all__ = [
    "PagedLayout",
    "SharingPlan",
    "build_layout",
    "from_sglang",
    "plan_sharing",
    "decode_bytes",
]

_I32 = torch.int32


@dataclass
class PagedLayout:
    """Request -> page runs, in CSR form (all index tensors int32, on one device).

    Attributes:
        page_size: slots per page (1 allowed).
        num_pages: pages in the pool; every ``cols`` value is below it.
        row_offsets: [B+1] start of each request's entries.
        cols: [nnz] page id of each entry.
        page_offsets: [nnz] first slot of the entry inside its page.
        counts: [nnz] tokens the entry contributes (1..page_size).
        positions: [nnz] token position of the entry's first token within its request.
        staging_ids: [nnz] -1 for a resident page, else the page's slot in a staging
            buffer (dense, numbered by first appearance, one slot per distinct page).
        seq_lens: [B] tokens per request (sum of its counts).
    """

    page_size: int
    num_pages: int
    row_offsets: torch.Tensor
    cols: torch.Tensor
    page_offsets: torch.Tensor
    counts: torch.Tensor
    positions: torch.Tensor
    staging_ids: torch.Tensor
    seq_lens: torch.Tensor
    max_position: int = 1 << 62  # bound on positions (a host number: no device sync)
    _plan: Optional["SharingPlan"] = field(default=None, repr=False)
    _table: Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(default=None, repr=False)

    # the entry fields every reader of slots needs; positions and staging_ids may be left empty
    # by views that do not read them (``ops.layout_view``)
    _ENTRY_FIELDS = ("cols", "page_offsets", "counts")

    def __post_init__(self) -> None:
        """Types and shapes (host facts only, no device sync): a hand-built layout fails here,
        naming the field, instead of deep inside a kernel or the reference."""
        check_positive_int("layout.page_size", self.page_size)
        check_nonnegative_int("layout.num_pages", self.num_pages)
        check_nonnegative_int("layout.max_position", self.max_position)
        check_index("layout.row_offsets", self.row_offsets)
        if self.row_offsets.shape[0] < 1:
            raise ValueError("layout.row_offsets: expected B+1 offsets, got an empty tensor")
        device = self.row_offsets.device
        for name in self._ENTRY_FIELDS + ("positions", "staging_ids", "seq_lens"):
            check_index("layout." + name, getattr(self, name), device=device)
        for name in self._ENTRY_FIELDS[1:]:
            check_len("layout." + name, getattr(self, name), self.nnz, "one per entry, like layout.cols")
        for name in ("positions", "staging_ids"):
            if getattr(self, name).shape[0] not in (0, self.nnz):
                check_len("layout." + name, getattr(self, name), self.nnz, "one per entry, like layout.cols")
        check_len("layout.seq_lens", self.seq_lens, self.batch_size, "one per request, B = len(row_offsets) - 1")

    def check(self, num_slots: Optional[int] = None) -> None:
        """The values: CSR offsets, runs inside their pages, lengths that add up, and (with
        ``num_slots``) every slot inside the pool. A few device syncs on CUDA."""
        ro = self.row_offsets.to(torch.int64)
        if int(ro[0]) != 0 or int(ro[-1]) != self.nnz or bool((ro[1:] < ro[:-1]).any()):
            raise ValueError(f"layout.row_offsets: expected non-decreasing offsets from 0 to {self.nnz} "
                             f"(the number of entries), got {ro.tolist()[:16]}")
        check_range("layout.counts", self.counts, 1, self.page_size + 1, "tokens of a run")
        check_range("layout.page_offsets", self.page_offsets, 0, self.page_size, "first slot in the page")
        check_range("layout.page_offsets", self.page_offsets.to(torch.int64) + self.counts, 0,
                    self.page_size + 1, "end of a run (page_offsets + counts)")
        check_range("layout.cols", self.cols, 0, self.num_pages or MAX_SLOTS // self.page_size, "page id")
        sums = torch.zeros(self.batch_size, dtype=torch.int64, device=self.device).index_add_(
            0, self.entry_rows(), self.counts.to(torch.int64))
        bad = sums != self.seq_lens.to(torch.int64)
        if bool(bad.any()):
            b = int(bad.nonzero()[0, 0])
            raise ValueError(f"layout.seq_lens: request {b} has {int(self.seq_lens[b])} tokens, but its runs "
                             f"hold {int(sums[b])}")
        if num_slots is not None and self.nnz:
            ends = self.cols.to(torch.int64) * self.page_size + self.page_offsets + self.counts
            check_range("layout.cols", ends - 1, 0, num_slots, "last KV slot of a page run")

    @property
    def batch_size(self) -> int:
        return self.row_offsets.shape[0] - 1

    @property
    def nnz(self) -> int:
        return self.cols.shape[0]

    @property
    def device(self) -> torch.device:
        return self.row_offsets.device

    def entry_rows(self) -> torch.Tensor:
        """[nnz] request index of each entry."""
        lengths = (self.row_offsets[1:] - self.row_offsets[:-1]).to(torch.int64)
        return torch.repeat_interleave(torch.arange(self.batch_size, device=self.device), lengths)

    def token_slots(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(request index, KV slot) of every token, in request then position order."""
        entry, within = segment_arange(self.counts)
        slots = self.cols.to(torch.int64)[entry] * self.page_size + self.page_offsets[entry] + within
        return self.entry_rows()[entry], slots

    def page_table(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The layout as SGLang's page table: ``(req_to_token [B, max(1, longest)] int32,
        req_pool_indices [B] int32 (row b for request b), seq_lens [B] int32)``, where request b's
        token at position j sits in slot ``req_to_token[b, j]``. What the decode planner and the
        extend plan read; kept on the layout, so the layers of a step build it once (one sync)."""
        if self._table is None:
            batch, device = self.batch_size, self.device
            lens = self.seq_lens.to(torch.int64)
            width = max(1, int(lens.max())) if batch else 1
            table = torch.zeros(batch, width, dtype=_I32, device=device)
            rows, slots = self.token_slots()
            if slots.numel():
                if int(slots.max()) >= 1 << 31:
                    raise ValueError("layout: a KV slot does not fit int32, which the kernels' page table uses")
                pos = torch.arange(slots.shape[0], device=device) - exclusive_cumsum(lens)[rows]
                table[rows, pos] = slots.to(_I32)
            self._table = (table, torch.arange(batch, dtype=_I32, device=device), lens.to(_I32))
        return self._table

    def plan(self, chunk_tokens: int = DEFAULT_CHUNK_TOKENS) -> "SharingPlan":
        """The sharing plan (cached for the last ``chunk_tokens`` asked for)."""
        if self._plan is None or self._plan.chunk_tokens != chunk_tokens:
            self._plan = plan_sharing(self, chunk_tokens)
        return self._plan

    def to(self, device: torch.device | str) -> "PagedLayout":
        move = lambda t: t.to(device)  # noqa: E731
        return PagedLayout(
            self.page_size, self.num_pages, move(self.row_offsets), move(self.cols),
            move(self.page_offsets), move(self.counts), move(self.positions),
            move(self.staging_ids), move(self.seq_lens), self.max_position,
        )


def _runs_to_layout(
    rows: torch.Tensor,
    pages: torch.Tensor,
    in_page: torch.Tensor,
    pos: torch.Tensor,
    batch_size: int,
    page_size: int,
    num_pages: int,
    resident: Optional[torch.Tensor],
    max_position: int,
) -> PagedLayout:
    """Collapses per-token (row, page, in-page slot, position) into runs.

    Tokens must be grouped by row, in position order within the row.
    """
    device = rows.device
    n = rows.shape[0]
    if n:
        starts = torch.ones(n, dtype=torch.bool, device=device)
        starts[1:] = (
            (rows[1:] != rows[:-1])
            | (pages[1:] != pages[:-1])
            | (in_page[1:] != in_page[:-1] + 1)
        )
        start_idx = starts.nonzero().squeeze(1)
        counts = torch.diff(start_idx, append=torch.tensor([n], device=device))
    else:
        start_idx = torch.zeros(0, dtype=torch.int64, device=device)
        counts = start_idx
    entry_rows = rows[start_idx]
    per_row = count_values(entry_rows, batch_size)
    row_offsets = exclusive_cumsum(per_row)
    seq_lens = count_values(rows, batch_size)
    cols = pages[start_idx]
    staging = _staging_ids(cols, resident, num_pages)
    return PagedLayout(
        page_size=page_size,
        num_pages=num_pages,
        row_offsets=row_offsets.to(_I32),
        cols=cols.to(_I32),
        page_offsets=in_page[start_idx].to(_I32),
        counts=counts.to(_I32),
        positions=pos[start_idx].to(_I32),
        staging_ids=staging,
        seq_lens=seq_lens.to(_I32),
        max_position=max_position,
    )


def _staging_ids(cols: torch.Tensor, resident: Optional[torch.Tensor], num_pages: int) -> torch.Tensor:
    """-1 for resident pages; distinct non-resident pages get 0, 1, ... by first appearance."""
    out = torch.full(cols.shape, -1, dtype=_I32, device=cols.device)
    if resident is None or cols.numel() == 0:
        return out
    missing = ~resident[cols]
    if not bool(missing.any()):
        return out
    idx = missing.nonzero().squeeze(1)
    first_seen = torch.full((num_pages,), cols.shape[0], dtype=torch.int64, device=cols.device)
    first_seen.scatter_reduce_(0, cols[idx].to(torch.int64), idx, reduce="amin")
    # rank each missing page by where it first appears
    order = torch.argsort(first_seen)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(num_pages, device=cols.device)
    out[idx] = rank[cols[idx].to(torch.int64)].to(_I32)
    return out


def build_layout(
    token_to_page: torch.Tensor,
    seq_starts: torch.Tensor,
    seq_ends: torch.Tensor,
    page_resident_bitmap: torch.Tensor,
    page_tokens: int,
    num_pages: int,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The seed's CSR builder: requests -> the pages they read.

    Args:
        token_to_page: [T] page id of each token of a flat token stream.
        seq_starts, seq_ends: [B] request ``b`` owns tokens ``seq_starts[b]:seq_ends[b]``
            of the stream (ranges may overlap: that is how requests share tokens).
        page_resident_bitmap: [num_pages] bool (or 0/1 integers): is the page in HBM.
        page_tokens: tokens per page.
        num_pages: number of pages.

    Returns:
        ``(row_offsets [B+1], cols [nnz], counts [nnz], staging_ids [nnz])``, int32.
        Each entry is a maximal run of a request's consecutive tokens on one page;
        ``counts`` is how many tokens it holds (at most ``page_tokens``).
        ``staging_ids`` is -1 for a resident page and, for a page that must be
        brought in, its slot in a staging buffer: distinct missing pages are
        numbered 0, 1, ... in order of first appearance, so a page read by many
        requests is staged once.
    """
    layout = _layout_from_stream(
        token_to_page, seq_starts, seq_ends, page_resident_bitmap, page_tokens, num_pages
    )
    return layout.row_offsets, layout.cols, layout.counts, layout.staging_ids


def _layout_from_stream(
    token_to_page, seq_starts, seq_ends, page_resident_bitmap, page_tokens, num_pages
) -> PagedLayout:
    check_positive_int("page_tokens", page_tokens)
    check_positive_int("num_pages", num_pages)
    check_index("token_to_page", token_to_page)
    device = token_to_page.device
    check_index("seq_starts", seq_starts, device=device)
    check_index("seq_ends", seq_ends, device=device)
    check_len("seq_ends", seq_ends, seq_starts.shape[0], "one end per request, like seq_starts")
    check_tensor("page_resident_bitmap", page_resident_bitmap, ndim=1, device=device)
    check_len("page_resident_bitmap", page_resident_bitmap, num_pages, "one flag per page")
    check_range("token_to_page", token_to_page, 0, num_pages, "page id")
    check_nonnegative("seq_starts", seq_starts)
    if bool((seq_starts > seq_ends).any()):
        b = int((seq_starts > seq_ends).nonzero()[0, 0])
        raise ValueError(
            f"seq_starts/seq_ends: request {b} starts at {int(seq_starts[b])} after it ends at "
            f"{int(seq_ends[b])}; expected seq_starts <= seq_ends"
        )
    check_range("seq_ends", seq_ends, 0, token_to_page.shape[0] + 1, "end offset")
    batch = seq_starts.shape[0]
    rows, pos = segment_arange(seq_ends.to(torch.int64) - seq_starts.to(torch.int64))
    pages = token_to_page.to(torch.int64)[seq_starts.to(torch.int64)[rows] + pos]
    # A page's tokens are laid out in the order the request reads them: the
    # in-page slot advances by one per token and restarts when the page changes.
    new_page = torch.ones_like(pages, dtype=torch.bool)
    if pages.numel():
        new_page[1:] = (pages[1:] != pages[:-1]) | (rows[1:] != rows[:-1])
    run_id = torch.cumsum(new_page.to(torch.int64), 0) - 1
    run_start = new_page.nonzero().squeeze(1)
    in_page = torch.arange(pages.shape[0], device=device) - run_start[run_id] if pages.numel() else pages
    if pages.numel() and bool((in_page >= page_tokens).any()):
        t = int((in_page >= page_tokens).nonzero()[0, 0])
        raise ValueError(
            f"token_to_page: request {int(rows[t])} reads more than page_tokens={page_tokens} "
            f"consecutive tokens from page {int(pages[t])}"
        )
    resident = page_resident_bitmap.to(torch.bool)
    return _runs_to_layout(rows, pages, in_page, pos, batch, page_tokens, num_pages, resident,
                           max_position=token_to_page.shape[0])


def from_sglang(
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    seq_lens: torch.Tensor,
    page_size: int,
    num_slots: Optional[int] = None,
    validate: bool = True,
    total_tokens: Optional[int] = None,
) -> PagedLayout:
    """The layout of an SGLang batch, from its radix-cache page table.

    Args:
        req_to_token: [max_reqs, max_context_len] KV slot of each request position
            (``ReqToTokenPool.req_to_token``).
        req_pool_indices: [B] row of ``req_to_token`` for each request of the batch.
        seq_lens: [B] tokens each request attends to (for an extend's prefix, its prefix length).
        page_size: the server's page size; page id = slot // page_size.
        num_slots: size of the KV pool, to check slots against (optional; at most 2**31, as the
            kernels' page tables hold int32 slots).
        validate: check rows, lengths, ``total_tokens`` and slots (in [0, num_slots), or below
            2**31 without it), a few device syncs on CUDA. ``validate=False`` skips them on CUDA
            tensors, which must then be valid (the SGLang backend never calls this); on CPU
            tensors the checks cost no sync and always run.
        total_tokens: ``seq_lens.sum()`` if known on the host (SGLang's ``seq_lens_sum``): saves a sync.
    """
    check_positive_int("page_size", page_size)
    check_tensor("req_to_token", req_to_token, ndim=2, dtypes=INDEX_DTYPES)
    device = req_to_token.device
    check_index("req_pool_indices", req_pool_indices, device=device)
    check_index("seq_lens", seq_lens, device=device)
    check_len("seq_lens", seq_lens, req_pool_indices.shape[0], "one length per request")
    if num_slots is not None and check_nonnegative_int("num_slots", num_slots) > MAX_SLOTS:
        raise ValueError(f"num_slots: {num_slots} slots do not fit the kernels' int32 page tables (at most 2**31)")
    if total_tokens is not None:
        check_nonnegative_int("total_tokens", total_tokens)
    checked = reads_values(validate, req_to_token)
    if checked:
        _check_table_rows(req_to_token, req_pool_indices, seq_lens, total_tokens)
    rows, pos = segment_arange(seq_lens, total_tokens)
    slots = req_to_token[req_pool_indices.to(torch.int64)[rows], pos].to(torch.int64)
    if checked:  # never let an int64 slot wrap into the int32 page ids below
        check_range("req_to_token", slots, 0, MAX_SLOTS if num_slots is None else num_slots, "KV slot")
        if num_slots is None and slots.numel():
            num_slots = int(slots.max()) + 1
    num_pages = -(-num_slots // page_size) if num_slots else 0
    return _runs_to_layout(
        rows, slots // page_size, slots % page_size, pos,
        req_pool_indices.shape[0], page_size, num_pages, None, max_position=req_to_token.shape[1],
    )


def _check_table_rows(req_to_token: torch.Tensor, req_pool_indices: torch.Tensor, seq_lens: torch.Tensor,
                      total_tokens: Optional[int]) -> None:
    max_reqs, max_ctx = req_to_token.shape
    check_range("req_pool_indices", req_pool_indices, 0, max_reqs, "request pool row")
    check_range("seq_lens", seq_lens, 0, max_ctx + 1, "sequence length")
    if total_tokens is not None and total_tokens != int(seq_lens.to(torch.int64).sum()):
        raise ValueError(f"total_tokens: expected seq_lens.sum() = {int(seq_lens.to(torch.int64).sum())}, "
                         f"got {total_tokens}")


@dataclass
class SharingPlan:
    """Unique runs, who reads them, and the decode work list.

    Unique runs ("entries", indexed by u) are keyed by (first slot, count, position): the
    radix cache gives requests with a common prefix the same slots at the same positions,
    so equal keys mean equal K/V.

    Attributes:
        chunk_tokens: the split-KV chunk size the plan was made for.
        entry_pages, entry_offsets, entry_counts: [U] the unique runs, in work order.
        entry_token_offsets: [U+1] exclusive prefix sum of ``entry_counts`` (where each run's
            tokens start in the work order; a work item's tokens are one contiguous range).
        reader_offsets: [U+1], readers: [nnz] the transpose, run -> requests (ascending), runs in
            work order like ``entry_*``.
        work_entry_offsets: [W+1] each work item's runs in the ``entry_*`` arrays.
        work_reader_offsets: [W+1] each work item's readers in ``work_readers``.
        work_readers: [P] requests of each work item; P partial results in all.
        merge_offsets: [B+1], merge_partials: [P] each request's partials in token order.
        max_readers: largest reader set of a work item (the one host number a launch needs).
    """

    chunk_tokens: int
    page_size: int
    entry_pages: torch.Tensor
    entry_offsets: torch.Tensor
    entry_counts: torch.Tensor
    entry_token_offsets: torch.Tensor
    reader_offsets: torch.Tensor
    readers: torch.Tensor
    work_entry_offsets: torch.Tensor
    work_reader_offsets: torch.Tensor
    work_readers: torch.Tensor
    merge_offsets: torch.Tensor
    merge_partials: torch.Tensor
    max_readers: int
    _layout_cols: torch.Tensor = field(repr=False)
    _layout_counts: torch.Tensor = field(repr=False)

    @property
    def num_work_items(self) -> int:
        return self.work_entry_offsets.shape[0] - 1

    @property
    def num_partials(self) -> int:
        return self.work_readers.shape[0]

    # Figures for reports; each costs a device sync, so the hot path never reads them.
    @property
    def total_tokens(self) -> int:
        """Tokens all requests read (shared tokens counted once per reader)."""
        return int(self._layout_counts.to(torch.int64).sum())

    @property
    def unique_tokens(self) -> int:
        """Tokens a step must load when each shared run is loaded once."""
        return int(self.entry_counts.to(torch.int64).sum())

    @property
    def unique_pages(self) -> int:
        return int(torch.unique(self._layout_cols).numel())

    @property
    def total_pages(self) -> int:
        """(request, page run) pairs: pages requested, shared ones once per reader."""
        return self._layout_cols.shape[0]

    def stats(self, num_kv_heads: int, head_dim: int, num_q_heads: int, elem_bytes: int = 2) -> dict:
        """Token, page and byte counts of one decode step (see ``decode_bytes``)."""
        _check_sizes(num_kv_heads=num_kv_heads, head_dim=head_dim, num_q_heads=num_q_heads, elem_bytes=elem_bytes)
        batch = self.merge_offsets.shape[0] - 1
        total, unique = self.total_tokens, self.unique_tokens
        return {
            "requests": batch,
            "tokens_requested": total,
            "tokens_unique": unique,
            "pages_requested": self.total_pages,
            "pages_unique": self.unique_pages,
            "work_items": self.num_work_items,
            "partials": self.num_partials,
            "bytes_dense": decode_bytes(total, batch, num_kv_heads, num_q_heads, head_dim, elem_bytes),
            "bytes_shared": decode_bytes(unique, batch, num_kv_heads, num_q_heads, head_dim, elem_bytes),
        }


def decode_bytes(kv_tokens: int, batch: int, num_kv_heads: int, num_q_heads: int, head_dim: int,
                 elem_bytes: int = 2) -> int:
    """Bytes a decode step must move: K and V of ``kv_tokens`` tokens, plus Q read and O written."""
    check_nonnegative_int("kv_tokens", kv_tokens)
    check_nonnegative_int("batch", batch)
    _check_sizes(num_kv_heads=num_kv_heads, num_q_heads=num_q_heads, head_dim=head_dim, elem_bytes=elem_bytes)
    return (2 * kv_tokens * num_kv_heads + 2 * batch * num_q_heads) * head_dim * elem_bytes


def _check_sizes(**sizes: object) -> None:
    for name, value in sizes.items():
        check_positive_int(name, value)


# Packed sort key of a run: first slot (31 bits) | position (21 bits) | count (11 bits).
_POS_BITS, _COUNT_BITS = 21, 11


def _key_fits(layout: PagedLayout) -> bool:
    """Whether every run's key packs into 64 bits (see ``_POS_BITS``)."""
    return layout.page_size < (1 << _COUNT_BITS) and layout.max_position < (1 << _POS_BITS) \
        and layout.num_pages * layout.page_size < (1 << 31)


def _unique_runs(layout: PagedLayout):
    """(keys [U, 4] as page, offset, count, position; inverse [nnz]) of the layout's runs."""
    i64 = torch.int64
    cols, offs = layout.cols.to(i64), layout.page_offsets.to(i64)
    counts, pos = layout.counts.to(i64), layout.positions.to(i64)
    slot = cols * layout.page_size + offs
    if _key_fits(layout):  # one 64-bit key: a 1-D unique is much faster than a row-wise one
        key = (slot << (_POS_BITS + _COUNT_BITS)) | (pos << _COUNT_BITS) | counts
        ukey, inverse = torch.unique(key, return_inverse=True)
        uslot = ukey >> (_POS_BITS + _COUNT_BITS)
        upos = (ukey >> _COUNT_BITS) & ((1 << _POS_BITS) - 1)
        ucount = ukey & ((1 << _COUNT_BITS) - 1)
        ukeys = torch.stack([uslot // layout.page_size, uslot % layout.page_size, ucount, upos], dim=1)
        return ukeys, inverse
    keys = torch.stack([cols, offs, counts, pos], dim=1)
    return torch.unique(keys, dim=0, return_inverse=True)


def plan_sharing(layout: PagedLayout, chunk_tokens: int = DEFAULT_CHUNK_TOKENS) -> SharingPlan:
    """Builds the transpose and the work list of a layout (see the module doc).

    A chain is a maximal sequence of unique runs that the same requests read
    one after the other; it is cut into work items of at most
    ``max(1, chunk_tokens // page_size)`` runs, so at most
    ``max(chunk_tokens, page_size)`` tokens.
    """
    check_positive_int("chunk_tokens", chunk_tokens)
    device = layout.device
    nnz, batch = layout.nnz, layout.batch_size
    i64 = torch.int64
    rows = layout.entry_rows()
    if nnz:
        ukeys, u = _unique_runs(layout)
    else:
        ukeys, u = torch.zeros((0, 4), dtype=i64, device=device), torch.zeros(0, dtype=i64, device=device)
    num_u = ukeys.shape[0]
    n_readers = count_values(u, num_u)
    arange_u = torch.arange(num_u, device=device)

    # The run each entry follows in its own row (-1 at a row's start).
    prev = torch.full((nnz,), -1, dtype=i64, device=device)
    if nnz > 1:
        same_row = rows[1:] == rows[:-1]
        prev[1:] = torch.where(same_row, u[:-1], torch.full_like(u[:-1], -1))
    pmin = torch.full((num_u,), num_u, dtype=i64, device=device).scatter_reduce(0, u, prev, "amin")
    pmax = torch.full((num_u,), -1, dtype=i64, device=device).scatter_reduce(0, u, prev, "amax")
    # u continues its predecessor's chain when every reader of u read the same run p just before
    # and p has exactly as many readers (so the reader sets are equal).
    p_safe = pmin.clamp(0, max(num_u - 1, 0))
    cont = (pmin == pmax) & (pmin >= 0) & (n_readers[p_safe] == n_readers)

    # Order unique runs by their first occurrence: chains become contiguous.
    first_e = torch.full((num_u,), nnz, dtype=i64, device=device).scatter_reduce(
        0, u, torch.arange(nnz, device=device), "amin"
    )
    order = torch.argsort(first_e)
    head = ~cont[order]
    # index of each run within its chain: distance to the last chain head at or before it
    if num_u:
        last_head = torch.cummax(torch.where(head, arange_u, torch.zeros_like(arange_u)), 0).values
    else:
        last_head = arange_u
    idx_in_chain = arange_u - last_head
    runs_per_item = max(1, chunk_tokens // layout.page_size)
    new_item = head | (idx_in_chain % runs_per_item == 0)
    item_start = new_item.nonzero().squeeze(1)
    num_w = item_start.shape[0]
    work_entry_offsets = torch.cat([item_start, torch.tensor([num_u], device=device)])

    # Each unique run's readers in row order (entries are row-major), runs in key order.
    by_u = torch.sort(u, stable=True).indices
    key_offsets = exclusive_cumsum(n_readers)
    # The transpose, runs in work order like the entry_* arrays.
    readers_at = n_readers[order]
    reader_offsets = exclusive_cumsum(readers_at)
    k_of, j_of = segment_arange(readers_at, nnz)
    readers = rows[by_u[key_offsets[order][k_of] + j_of]]

    # Work item w inherits the readers of its first run; one partial per (item, reader).
    first_u = order[item_start]
    w_n = n_readers[first_u]
    work_reader_offsets = exclusive_cumsum(w_n)
    w_of_p, j = segment_arange(w_n)
    src = key_offsets[first_u][w_of_p] + j
    work_readers = rows[by_u[src]]
    # Merge order: by request, then by position (entry indices are row-major, position-ordered).
    merge_partials = torch.argsort(by_u[src])
    merge_offsets = exclusive_cumsum(count_values(work_readers, batch))

    up = ukeys[order]
    return SharingPlan(
        chunk_tokens=chunk_tokens,
        page_size=layout.page_size,
        entry_pages=up[:, 0].to(_I32),
        entry_offsets=up[:, 1].to(_I32),
        entry_counts=up[:, 2].to(_I32),
        entry_token_offsets=exclusive_cumsum(up[:, 2]).to(_I32),
        reader_offsets=reader_offsets.to(_I32),
        readers=readers.to(_I32),
        work_entry_offsets=work_entry_offsets.to(_I32),
        work_reader_offsets=work_reader_offsets.to(_I32),
        work_readers=work_readers.to(_I32),
        merge_offsets=merge_offsets.to(_I32),
        merge_partials=merge_partials.to(_I32),
        max_readers=int(w_n.max()) if num_w else 0,
        _layout_cols=layout.cols,
        _layout_counts=layout.counts,
    )
