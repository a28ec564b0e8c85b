"""Extend over a shared cached prefix, for Nsight Compute: what each CTA order of the paged dense
kernel reads from HBM. One call per variant, in this order: grid order 0, grid order 1 (both on
one prefix shared by every request), then order 0 on a table where no page is shared.

    ncu --clock-control none --kernel-name regex:dense_fwd \\
        --metrics dram__bytes_read.sum,lts__t_sector_hit_rate.pct,gpu__time_duration.sum \\
        python tools/ncu_extend.py [--batch 32 --length 4096 --fraction 0.9]
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
from bench_decode import shared_page_table  # noqa: E402
from sglang_flashcore.extend import extend_attention, plan_extend  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--batch", type=int, default=32)
parser.add_argument("--length", type=int, default=4096)
parser.add_argument("--fraction", type=float, default=0.9)
parser.add_argument("--page", type=int, default=64)
args = parser.parse_args()
b, length, page = args.batch, args.length, args.page
prefix = (int(args.fraction * length) // page) * page
new = length - prefix
hq, hkv, d, dt = 32, 8, 128, torch.bfloat16
shared, num_slots = shared_page_table(b, length, page, prefix / length, "cuda")
distinct, num_slots_distinct = shared_page_table(b, length, page, 0.0, "cuda")
slots = max(num_slots, num_slots_distinct)
k_cache = torch.randn(slots, hkv, d, device="cuda", dtype=dt)
v_cache = torch.randn(slots, hkv, d, device="cuda", dtype=dt)
q = torch.randn(b * new, hq, d, device="cuda", dtype=dt)
idx = torch.arange(b, device="cuda")


def call(table, order):
    loc = table[:, prefix:].reshape(-1).long()
    plan = plan_extend(table, idx, torch.full((b,), prefix, device="cuda"), torch.full((b,), new, device="cuda"), loc,
                       prefix_lens_cpu=[prefix] * b, extend_lens_cpu=[new] * b, page_size=page)
    plan.grid_order.fill_(order)
    extend_attention(q, k_cache[loc], v_cache[loc], k_cache, v_cache, plan, d ** -0.5)


call(shared, 0)
call(shared, 1)
call(distinct, 0)
torch.cuda.synchronize()
print(f"B{b} L{length} prefix {prefix} page {page}: shared order 0, shared order 1, distinct order 0")
