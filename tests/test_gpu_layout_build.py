"""The GPU layout builders (``layout_cuda.py``, ``cuda/layout_build.cu``) against the torch code
they replace on CUDA tensors: every array of ``from_sglang`` and ``plan_sharing``, bit for bit,
over sharing patterns, page sizes, lengths (0, 1, several tiles), index dtypes and chunk sizes."""

import random

import pytest
import torch

import sglang_flashcore as fc
from cases import PATTERNS, make_page_table
from sglang_flashcore.layout import PagedLayout, _from_sglang_torch, _key_fits, _layout_from_stream

pytestmark = pytest.mark.gpu

LAYOUT_FIELDS = ("row_offsets", "cols", "page_offsets", "counts", "positions", "staging_ids", "seq_lens")
PLAN_FIELDS = ("entry_pages", "entry_offsets", "entry_counts", "entry_token_offsets", "reader_offsets", "readers",
               "work_entry_offsets", "work_reader_offsets", "work_readers", "merge_offsets", "merge_partials")


def _assert_same(a, b, fields, what):
    for name in fields:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype, f"{what}.{name}: {x.dtype} vs {y.dtype}"
        assert torch.equal(x.cpu(), y.cpu()), f"{what}.{name} differs:\n{x.cpu()[:40]}\n{y.cpu()[:40]}"


def _assert_same_layout(gpu: PagedLayout, cpu: PagedLayout):
    assert gpu.device.type == "cuda"
    assert (gpu.page_size, gpu.num_pages, gpu.max_position) == (cpu.page_size, cpu.num_pages, cpu.max_position)
    _assert_same(gpu, cpu, LAYOUT_FIELDS, "layout")


def _assert_same_plan(layout: PagedLayout, chunk: int):
    cpu_layout = layout.to("cpu")
    gpu, cpu = fc.plan_sharing(layout, chunk), fc.plan_sharing(cpu_layout, chunk)
    assert gpu.entry_pages.device.type == "cuda"
    assert gpu.max_readers == cpu.max_readers
    _assert_same(gpu, cpu, PLAN_FIELDS, f"plan(chunk={chunk})")


def _table_case(i: int):
    rng = random.Random(9100 + i)
    pattern = rng.choice(PATTERNS)
    page = rng.choice([1, 1, 16, 64, 128])
    batch = rng.choice([1, 2, 3, 5, 8, 17, 40])
    lengths = [rng.choice([0, 1, rng.randint(1, 300), rng.randint(300, 3000)]) for _ in range(batch)]
    if rng.random() < 0.15:
        lengths[rng.randrange(batch)] = rng.randint(4096, 9000)  # several 2048-token tiles
    return pattern, page, lengths, rng.choice([torch.int32, torch.int64]), 9100 + i


@pytest.mark.parametrize("i", range(120))
def test_from_sglang_and_plan_match_torch(i):
    pattern, page, lengths, index_dtype, seed = _table_case(i)
    pt = make_page_table(pattern, lengths, page, seed)
    r2t = pt.req_to_token.to(index_dtype)
    gpu = fc.from_sglang(r2t.cuda(), pt.req_pool_indices.cuda(), pt.seq_lens.cuda(), page, num_slots=pt.num_slots)
    cpu = fc.from_sglang(r2t, pt.req_pool_indices, pt.seq_lens, page, num_slots=pt.num_slots)
    _assert_same_layout(gpu, cpu)
    if gpu.nnz:
        for chunk in (1, 64, 256, 1024):
            _assert_same_plan(gpu, chunk)


def test_scattered_slots_of_serving_decode():
    # page 1, SGLang's decode allocation: every decoded token a slot of its own, interleaved
    rng = random.Random(3)
    batch, prompt = 12, 700
    r2t = torch.zeros(batch, prompt + 64, dtype=torch.int32)
    base = 0
    for r in range(batch):
        r2t[r, :prompt] = torch.arange(base, base + prompt)
        base += prompt
    for step in range(64):
        for r in range(batch):
            r2t[r, prompt + step] = base
            base += 1
    lens = torch.tensor([prompt + rng.randint(0, 64) for _ in range(batch)])
    idx = torch.arange(batch)
    gpu = fc.from_sglang(r2t.cuda(), idx.cuda(), lens.cuda(), 1, num_slots=base)
    cpu = fc.from_sglang(r2t, idx, lens, 1, num_slots=base)
    _assert_same_layout(gpu, cpu)
    _assert_same_plan(gpu, 128)


def test_without_validation_or_pool_size():
    pt = make_page_table("tree", [500, 300, 700, 20, 0], 16, seed=9)
    args = (pt.req_to_token, pt.req_pool_indices, pt.seq_lens, 16)
    for validate in (True, False):
        gpu = fc.from_sglang(*(t.cuda() for t in args[:3]), 16, validate=validate)
        cpu = fc.from_sglang(*args, validate=validate)
        _assert_same_layout(gpu, cpu)
        _assert_same_plan(gpu, 64)  # num_pages 0 without validation: a 64-bit sort


def test_bad_slot_raises_the_torch_error():
    pt = make_page_table("none", [40, 50], 16, seed=1)
    r2t = pt.req_to_token.clone()
    r2t[int(pt.req_pool_indices[1]), 7] = pt.num_slots + 3
    with pytest.raises(ValueError) as cpu_err:
        fc.from_sglang(r2t, pt.req_pool_indices, pt.seq_lens, 16, num_slots=pt.num_slots)
    with pytest.raises(ValueError) as gpu_err:
        fc.from_sglang(r2t.cuda(), pt.req_pool_indices.cuda(), pt.seq_lens.cuda(), 16, num_slots=pt.num_slots)
    assert str(gpu_err.value) == str(cpu_err.value)


@pytest.mark.parametrize("validate", (True, False))
def test_empty_batches_and_rows(validate):
    r2t = torch.zeros(4, 10, dtype=torch.int32, device="cuda")
    for lens in ([], [0, 0, 0]):
        idx = torch.arange(len(lens), device="cuda")
        seq = torch.tensor(lens, dtype=torch.int64, device="cuda")
        gpu = fc.from_sglang(r2t, idx, seq, 16, num_slots=64, validate=validate)
        cpu = fc.from_sglang(r2t.cpu(), idx.cpu(), seq.cpu(), 16, num_slots=64, validate=validate)
        _assert_same_layout(gpu, cpu)
        plan = fc.plan_sharing(gpu, 64)
        assert plan.num_work_items == 0 and plan.merge_offsets.tolist() == [0] * (len(lens) + 1)


def test_seed_build_layout_plans_match():
    # the seed's builder (token stream, overlapping ranges, staged pages), then the GPU plan
    g = torch.Generator().manual_seed(5)
    pages = torch.cat([torch.randperm(50, generator=g) for _ in range(8)])  # no page twice in a row...
    pages = pages[torch.cat([torch.ones(1, dtype=torch.bool), pages[1:] != pages[:-1]])]  # ...at the seams either
    token_to_page = torch.repeat_interleave(pages, 8)[:3000]
    starts = torch.tensor([0, 100, 0, 1500, 2990])
    ends = torch.tensor([900, 900, 2000, 3000, 3000])
    resident = torch.rand(50, generator=g) > 0.3
    layout = _layout_from_stream(token_to_page.cuda(), starts.cuda(), ends.cuda(), resident.cuda(), 8, 50)
    assert _key_fits(layout)
    for chunk in (8, 64, 512):
        _assert_same_plan(layout, chunk)


def test_long_positions_fall_back_to_torch():
    # positions past 2^21 do not fit the packed key: the torch code plans (on the GPU)
    pt = make_page_table("prefix", [64, 64], 16, seed=2)
    layout = fc.from_sglang(pt.req_to_token.cuda(), pt.req_pool_indices.cuda(), pt.seq_lens.cuda(), 16,
                            num_slots=pt.num_slots)
    layout.max_position = 1 << 22
    assert not _key_fits(layout)
    _assert_same_plan(layout, 32)


def test_switch_keeps_the_torch_build(monkeypatch):
    pt = make_page_table("prefix", [300, 200], 16, seed=4)
    args = (pt.req_to_token.cuda(), pt.req_pool_indices.cuda(), pt.seq_lens.cuda(), 16)
    gpu = fc.from_sglang(*args, num_slots=pt.num_slots)
    monkeypatch.setenv("FLASHCORE_LAYOUT_BUILD", "torch")
    torch_built = fc.from_sglang(*args, num_slots=pt.num_slots)
    direct = _from_sglang_torch(*args, pt.num_slots, True, None)
    _assert_same_layout(gpu, torch_built)
    _assert_same_layout(gpu, direct)
    assert torch.equal(fc.plan_sharing(gpu, 64).merge_partials, fc.plan_sharing(torch_built, 64).merge_partials)


def test_decode_over_a_gpu_built_layout_matches_reference():
    from sglang_flashcore.reference import paged_decode_ref

    pt = make_page_table("tree", [900, 1300, 64, 1], 16, seed=6)
    layout = fc.from_sglang(pt.req_to_token.cuda(), pt.req_pool_indices.cuda(), pt.seq_lens.cuda(), 16,
                            num_slots=pt.num_slots)
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(4, 8, 128, device="cuda", generator=g, dtype=torch.float16)
    k = torch.randn(pt.num_slots, 2, 128, device="cuda", generator=g, dtype=torch.float16)
    v = torch.randn_like(k)
    out, lse = fc.paged_decode(q, k, v, layout)
    ref_out, ref_lse = paged_decode_ref(q, k, v, layout)
    torch.testing.assert_close(out.float(), ref_out, atol=2e-3, rtol=1e-3)
    torch.testing.assert_close(lse, ref_lse, atol=2e-3, rtol=1e-3)


@pytest.mark.parametrize("runs", [1, 2047, 2048, 2049, 8192, 30000])
def test_one_cta_and_grid_plans_agree_at_the_boundary(runs):
    # page 1: every token is a run of its own; up to 2048 runs one CTA plans, above it the grid
    g = torch.Generator().manual_seed(runs)
    lengths = [runs // 4] * 3 + [runs - 3 * (runs // 4)]
    shared = min(lengths) // 2  # requests 1-3 read request 0's first slots: readers > 1
    r2t = torch.zeros(4, max(lengths), dtype=torch.int32)
    slots = torch.randperm(2 * runs, generator=g)[:runs].to(torch.int32)
    base = 0
    for b, n in enumerate(lengths):
        r2t[b, :n] = slots[base:base + n]
        base += n
        if b:
            r2t[b, :shared] = r2t[0, :shared]
    idx, lens = torch.arange(4), torch.tensor(lengths)
    gpu = fc.from_sglang(r2t.cuda(), idx.cuda(), lens.cuda(), 1, num_slots=2 * runs, validate=runs % 2 == 0)
    assert gpu.nnz == runs
    _assert_same_layout(gpu, fc.from_sglang(r2t, idx, lens, 1, num_slots=2 * runs))
    for chunk in (1, 16, 512):
        _assert_same_plan(gpu, chunk)


def test_unvalidated_bad_rows_read_as_empty():
    # validate=False skips the range checks (no sync): a pool row out of range reads as an empty
    # request, a length past the table is clamped to it, and nothing is read out of bounds
    pt = make_page_table("none", [40, 50, 30], 16, seed=3)
    rows, width = pt.req_to_token.shape
    idx, lens = pt.req_pool_indices.clone(), pt.seq_lens.clone()
    idx[1], lens[2] = rows + 5, width + 100
    gpu = fc.from_sglang(pt.req_to_token.cuda(), idx.cuda(), lens.cuda(), 16, num_slots=pt.num_slots, validate=False)
    assert gpu.seq_lens.tolist() == [40, 0, width]
    offsets = gpu.row_offsets.tolist()
    assert offsets[1] == offsets[2]
    assert int(gpu.counts[offsets[2]:].sum()) == width
