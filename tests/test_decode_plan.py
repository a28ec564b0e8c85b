"""The page-table plan on CPU: its Python model (plan_table_reference) against the plain
definition of sharing, the plan executed in float32 against the decode reference, the chunk
policy, and paged_decode_table's reference route and argument errors."""

import random

import pytest
import torch

import sglang_flashcore as fc
from cases import PATTERNS, make_page_table, random_qkv
from sglang_flashcore.decode import execute_plan_ref, plan_table_reference
from sglang_flashcore.heuristics import (MAX_AUTO_CHUNK_TOKENS, SPLIT_GUIDED_PARTS, SPLIT_MAX_ITEMS, WAVE_FILL_DEN,
                                         WAVE_FILL_NUM, WAVE_MAX_CHUNK_TOKENS, choose_chunk_tokens, split_items,
                                         wave_filling_chunk)
from sglang_flashcore.reference import paged_decode_ref


def _table(pattern, lengths, page, seed=0):
    return make_page_table(pattern, lengths, page, seed)


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("chunk", [1, 16, 64, 1000])
def test_every_chunk_is_read_once_and_groups_hold_equal_slots(pattern, chunk):
    pt = _table(pattern, [300, 41, 2000, 7, 300], 16, seed=3)
    plan = plan_table_reference(pt.req_to_token, pt.req_pool_indices, pt.seq_lens, chunk)
    lens = pt.seq_lens.tolist()
    assert plan.chunk_base == [0] + list(torch.tensor([-(-n // chunk) for n in lens]).cumsum(0).tolist())
    seen = sorted(i for *_, parts in plan.work for i in parts)
    assert seen == list(range(plan.num_chunks))
    owner = plan.chunk_owner()
    for row, pos0, ntok, parts in plan.work:
        assert parts[0] == min(parts) and 1 <= ntok <= chunk
        for i in parts:  # every reader's slots at these positions are the leader's
            b = owner[i]
            assert pos0 == (i - plan.chunk_base[b]) * chunk
            assert pt.rows[b][pos0:pos0 + ntok] == pt.req_to_token[row, pos0:pos0 + ntok].tolist()
    assert plan.tokens == sum(lens)
    assert plan.unique_tokens == sum(w[2] for w in plan.work)


def test_sharing_reduces_work_to_the_unique_chunks():
    identical = _table("identical", [1000] * 6, 16)
    plan = plan_table_reference(identical.req_to_token, identical.req_pool_indices, identical.seq_lens, 128)
    assert len(plan.work) == 8 and all(len(parts) == 6 for *_, parts in plan.work)
    assert plan.unique_tokens == 1000
    none = _table("none", [1000] * 6, 16)
    plan = plan_table_reference(none.req_to_token, none.req_pool_indices, none.seq_lens, 128)
    assert len(plan.work) == 6 * 8 and plan.unique_tokens == 6000


def test_tasks_split_large_reader_sets_into_32_row_groups():
    pt = _table("identical", [100] * 40, 1)
    plan = plan_table_reference(pt.req_to_token, pt.req_pool_indices, pt.seq_lens, 64, group=8)
    assert plan.tasks == 2 * 10  # two chunks, 40 readers x 8 rows = 320 rows = 10 tasks each


def test_a_group_wider_than_a_task_spans_tasks():
    # MQA-like: 48 query heads per KV head, one reader per chunk: 48 rows = two 32-row tasks
    pt = _table("none", [100] * 3, 1)
    plan = plan_table_reference(pt.req_to_token, pt.req_pool_indices, pt.seq_lens, 64, group=48)
    assert len(plan.work) == 3 * 2 and plan.tasks == 3 * 2 * 2


def _random_case(i):
    rng = random.Random(i)
    pattern = rng.choice(PATTERNS)
    page = rng.choice([1, 16, 64])
    hq, hkv = rng.choice([(4, 4), (8, 2), (6, 3), (8, 1)])
    lengths = [rng.choice([1, 2, rng.randint(1, 300), rng.randint(1, 900)]) for _ in range(rng.randint(1, 6))]
    chunk = rng.choice([1, 8, 64, 256])
    return pattern, page, hq, hkv, lengths, chunk


@pytest.mark.parametrize("i", range(40))
def test_executed_plan_matches_the_decode_reference(i):
    pattern, page, hq, hkv, lengths, chunk = _random_case(i)
    pt = _table(pattern, lengths, page, seed=i)
    q, k, v = random_qkv(len(lengths), hq, hkv, 64, pt.num_slots, torch.float64, seed=i)
    plan = plan_table_reference(pt.req_to_token, pt.req_pool_indices, pt.seq_lens, chunk, group=hq // hkv)
    out, lse = execute_plan_ref(q, k, v, pt.req_to_token, plan, page, softmax_scale=0.3)
    layout = fc.from_sglang(pt.req_to_token, pt.req_pool_indices, pt.seq_lens, page)
    ref_o, ref_l = paged_decode_ref(q, k, v, layout, softmax_scale=0.3)
    torch.testing.assert_close(out.double(), ref_o, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse.double(), ref_l, atol=1e-5, rtol=1e-5)


def test_chunk_policy():
    assert choose_chunk_tokens([5000, 10], max_chunks=100, fixed=256) == 256
    # few tokens: the smallest chunk; many: the largest automatic one
    assert choose_chunk_tokens([100] * 4, max_chunks=1000, target=132) == 64
    assert choose_chunk_tokens([131072] * 8, max_chunks=10**6, target=132) == MAX_AUTO_CHUNK_TOKENS == 2048
    # in between: the largest power of two that still gives the target's chunks (8 x 8192 / 64 = 1024)
    assert choose_chunk_tokens([8192] * 8, max_chunks=10**6, target=64) == 1024
    # a workspace of 10 partials: chunks grow until 8 x 5000 tokens fit in 10 chunks, or C covers a request
    assert choose_chunk_tokens([5000] * 8, max_chunks=10, fixed=64) == 8192
    assert choose_chunk_tokens([], max_chunks=1, target=100) == 64


def _distinct_firsts(lengths, stride=1 << 20):
    return [b * stride for b in range(len(lengths))]


def test_wave_filling_chunk_fills_the_last_wave():
    # 16 x 32K with 8 KV heads on 396 CTAs: 2048-token chunks make 2048 tasks, 5.17 waves; 3641
    # tokens (9 chunks a request) make 1152, the last of three waves 91% full
    lengths = [32768] * 16
    assert wave_filling_chunk(lengths, _distinct_firsts(lengths), 2048, 8, 1, 396) == 3641
    # 32 x 8K: 3 chunks of 2731 -> 768 tasks (two waves, the second 94% full)
    assert wave_filling_chunk([8192] * 32, _distinct_firsts([0] * 32), 2048, 8, 1, 396) == 2731
    # 64 x 4K: one or two chunks a request leave a last wave 29% / 59% full; three fill it (88%)
    assert wave_filling_chunk([4096] * 64, _distinct_firsts([0] * 64), 2048, 8, 1, 396) == 1366
    # a group of 64 rows: two tasks a chunk, as if twice the KV heads
    assert wave_filling_chunk(lengths, _distinct_firsts(lengths), 2048, 4, 2, 396) == 3641


def test_wave_filling_chunk_keeps_the_power_of_two_where_it_should():
    lengths = [32768] * 16
    firsts = _distinct_firsts(lengths)
    shared = [0] * 16  # a common prefix: every request starts at slot 0
    assert wave_filling_chunk(lengths, shared, 2048, 8, 1, 396) == 2048
    # an empty request's first slot does not count as shared
    assert wave_filling_chunk(lengths + [0], firsts + [0], 2048, 8, 1, 396) == 3641
    assert wave_filling_chunk(lengths, firsts, 2048, 16, 1, 396) == 2048  # a wave of 25 tasks: the tail split's
    assert wave_filling_chunk([32768] * 64, _distinct_firsts([0] * 64), 2048, 8, 1, 396) == 2048  # 20.7 waves
    assert wave_filling_chunk([2048] * 128, _distinct_firsts([0] * 128), 2048, 8, 1, 396) == 2048  # no fill found
    assert wave_filling_chunk(lengths, firsts, 2048, 8, 1, 396, max_chunk=0) == 2048  # switched off
    assert wave_filling_chunk([], [], 64, 8, 1, 396) == 64


@pytest.mark.parametrize("seed", range(30))
def test_wave_filling_chunk_bounds(seed):
    rng = random.Random(seed)
    lengths = [rng.choice([0, 1, rng.randint(1, 5000), rng.randint(1, 140000)]) for _ in range(rng.randint(1, 40))]
    hkv, chunk = rng.choice([1, 2, 8, 16]), rng.choice([256, 1024, 2048])
    got = wave_filling_chunk(lengths, _distinct_firsts(lengths), chunk, hkv, 1, 396)
    if got != chunk:
        tasks = hkv * sum(-(-n // got) for n in lengths)
        waves = -(-tasks // 396)
        assert max(64, chunk // 2) <= got <= WAVE_MAX_CHUNK_TOKENS
        assert WAVE_FILL_DEN * (tasks - (waves - 1) * 396) >= WAVE_FILL_NUM * 396
        assert got == -(-max(lengths) // -(-max(lengths) // got))  # ceil(longest / n) for some n


def test_chunk_policy_applies_the_wave_move_only_when_asked():
    lengths = [32768] * 16
    kw = dict(max_chunks=10**6, target=66)
    assert choose_chunk_tokens(lengths, **kw) == 2048
    assert choose_chunk_tokens(lengths, **kw, first_slots=_distinct_firsts(lengths), num_kv_heads=8, slots=396) == 3641
    assert choose_chunk_tokens(lengths, **kw, first_slots=_distinct_firsts(lengths), num_kv_heads=8, slots=396,
                               fixed=512) == 512


def test_paged_decode_table_on_cpu_runs_the_reference():
    pt = _table("tree", [300, 41, 2000, 7], 16)
    q, k, v = random_qkv(4, 8, 2, 64, pt.num_slots, torch.float32, seed=1)
    out, lse = fc.paged_decode_table(q, k, v, pt.req_to_token, pt.req_pool_indices, pt.seq_lens, page_size=16)
    layout = fc.from_sglang(pt.req_to_token, pt.req_pool_indices, pt.seq_lens, 16)
    ref_o, ref_l = paged_decode_ref(q, k, v, layout)
    torch.testing.assert_close(out, ref_o.float())
    torch.testing.assert_close(lse, ref_l.float())


def test_paged_decode_table_errors_name_the_argument():
    pt = _table("none", [10, 20], 16)
    q, k, v = random_qkv(2, 4, 2, 64, pt.num_slots, torch.float32)
    args = (pt.req_to_token, pt.req_pool_indices, pt.seq_lens)
    with pytest.raises(ValueError, match="seq_lens"):
        fc.paged_decode_table(q, k, v, pt.req_to_token, pt.req_pool_indices, pt.seq_lens[:1])
    with pytest.raises(TypeError, match="req_to_token"):
        fc.paged_decode_table(q, k, v, pt.req_to_token.float(), *args[1:])
    with pytest.raises(ValueError, match="seq_lens"):
        fc.paged_decode_table(q, k, v, pt.req_to_token, pt.req_pool_indices, pt.seq_lens + 10_000)
    with pytest.raises(ValueError, match="req_pool_indices"):
        fc.paged_decode_table(q, k, v, pt.req_to_token, pt.req_pool_indices + 100, pt.seq_lens)
    with pytest.raises(ValueError, match="req_to_token"):  # a slot past the pool
        fc.paged_decode_table(q, k[:3], v[:3], *args)


def test_split_items_rule():
    # Hkv 16 on 396 resident CTAs: a wave is 25 tasks
    assert split_items(128, 128, 16, 396, 396, 4) == 25
    assert split_items(380, 380, 16, 396, 396, 4) == 5   # room in 396 CTAs: (396 - 380) // 3
    assert split_items(25, 25, 16, 396, 396, 4) == 0     # one wave: nothing to even out
    assert split_items(512, 512, 16, 396, 396, 4) == 0   # more tasks than CTAs: they loop, no list order
    assert split_items(128, 10, 16, 396, 396, 4) == 10   # only the splittable ones
    assert split_items(128, 128, 16, 396, 396, 1) == 0   # switched off
    assert split_items(128, 128, 32, 396, 396, 4) == 13
    # 8 KV heads: a wave of 50 > SPLIT_EVEN_WAVE, a guided split
    assert split_items(128, 128, 8, 396, 396, 4) == 50
    assert split_items(49, 49, 8, 396, 396, 4) == 0     # one wave (the guided split lost 1.6% there)
    assert split_items(380, 380, 8, 396, 396, 2) == 16
    # one KV head: a wave of 396, at most SPLIT_MAX_ITEMS
    assert split_items(500, 500, 1, 396, 1000, 4) == SPLIT_MAX_ITEMS


def test_guided_split_parts():
    # 8 KV heads: 60 chunks of 256 tokens (4 tiles) and one of 100 tokens (2 tiles), over a wave of 50
    pt = make_page_table("none", [60 * 256, 100], 16, seed=5)
    whole = plan_table_reference(pt.req_to_token, pt.req_pool_indices, pt.seq_lens, 256, group=4)
    plan = plan_table_reference(pt.req_to_token, pt.req_pool_indices, pt.seq_lens, 256, group=4, num_kv_heads=8,
                                resident_ctas=396, grid_work=396, split_parts=4)
    assert plan.work == whole.work and len(plan.work) == 61
    # the last 50 items, each into its first three quarters and its last quarter
    assert plan.split == tuple((c, SPLIT_GUIDED_PARTS) for c in range(11, 61))
    assert plan.tasks == 61 + 50


def test_tail_split_cuts_the_last_one_reader_items():
    # a shared prefix of 12 readers (rows 12 x 4 > 32: two tasks, never cut) and private suffixes
    pt = make_page_table("prefix", [6000 + 37 * i for i in range(12)], 64, seed=3)
    plan = plan_table_reference(pt.req_to_token, pt.req_pool_indices, pt.seq_lens, 256, group=4, num_kv_heads=16,
                                resident_ctas=396, grid_work=396, split_parts=4)
    whole = plan_table_reference(pt.req_to_token, pt.req_pool_indices, pt.seq_lens, 256, group=4)
    assert whole.split == () and plan.work == whole.work
    one_reader = [w[3][0] for w in plan.work if len(w[3]) == 1 and w[2] > 64]
    m = split_items(whole.tasks, len(one_reader), 16, 396, 396, 4)
    assert m == 25 <= SPLIT_MAX_ITEMS  # a wave of tasks
    assert [c for c, _ in plan.split] == sorted(one_reader[-m:])
    parts = dict(plan.split)
    for row, pos0, ntok, readers in plan.work:
        if readers[0] in parts:
            assert parts[readers[0]] == min(4, -(-ntok // 64))
    assert plan.tasks == whole.tasks + sum(p - 1 for p in parts.values())
