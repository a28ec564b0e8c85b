"""Per-step metadata cost on serving-like decode batches (no sharing), against the attention itself.

SGLang's page-size-1 allocator gives each request one contiguous run for its prompt and then one
scattered slot per decoded token (a decode step allocates one slot per running request, side by side).
For such batches this times, as the scheduler thread sees it (host wall clock, GPU synchronized):

* ``plan``: ``DecodePlanner.plan`` — what ``FlashCoreBackend`` does once per decode step, eager
  or before a CUDA-graph replay (five kernels, no host sync);
* ``layout_build``: ``from_sglang`` + ``plan_sharing`` — the general layout API's per-step work
  (what the backend did before the planner), built by the CUDA kernels of ``cuda/layout_build.cu``;
  ``layout_build_torch``: the same in torch ops (``FLASHCORE_LAYOUT_BUILD=torch``), as before them;
* ``attn``: the decode kernel for one layer over each (Hq 32, Hkv 8, D 128, bf16), and
  ``step`` = 32 layers of the planner's path;

and prints the planning share of the attention part of a step. Usage:
``python3 scripts/bench_plan_build.py [--json F] [--plot F]``.
"""

from __future__ import annotations

import random

import torch

from bench_util import base_parser, report, require_cuda, time_ms, wall_ms, with_env

import sglang_flashcore as fc
from sglang_flashcore.decode_plan import DecodePlanner

LAYERS, HQ, HKV, D = 32, 32, 8, 128


def serving_page_table(batch: int, seed: int, device: str, prompt=(128, 4096), decoded=(1, 256)):
    """req_to_token for ``batch`` requests: a contiguous prompt run, then ``d`` decoded tokens whose
    slots interleave with the other requests' (one slot per request per decode step)."""
    rng = random.Random(seed)
    prompts = [rng.randint(*prompt) for _ in range(batch)]
    decodes = [rng.randint(*decoded) for _ in range(batch)]
    max_ctx = max(p + d for p, d in zip(prompts, decodes))
    r2t = torch.zeros(batch, max_ctx, dtype=torch.int32)
    base = 0
    for r, p in enumerate(prompts):
        r2t[r, :p] = torch.arange(base, base + p, dtype=torch.int32)
        base += p
    for step in range(max(decodes)):
        for r in range(batch):
            if step < decodes[r]:
                r2t[r, prompts[r] + step] = base
                base += 1
    seq_lens = torch.tensor([p + d for p, d in zip(prompts, decodes)], dtype=torch.int32)
    return r2t.to(device), seq_lens.to(device), base


def main():
    parser = base_parser(__doc__, repeats=20)
    parser.add_argument("--batches", default="8,32,64,128")
    args = parser.parse_args()
    info = require_cuda("bench_plan_build.py")
    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        r2t, seq_lens, num_slots = serving_page_table(batch, seed=batch, device="cuda")
        idx = torch.arange(batch, device="cuda", dtype=torch.int32)
        total = int(seq_lens.sum())

        def layout_build():
            layout = fc.from_sglang(r2t, idx, seq_lens, 1, num_slots=num_slots, validate=False,
                                    total_tokens=total)
            return layout, layout.plan(fc.auto_chunk_tokens(layout, HKV))

        planner = DecodePlanner(batch, HQ, D, torch.device("cuda"))
        plan = lambda: planner.plan(r2t, idx, seq_lens, HKV, HQ // HKV)  # noqa: E731
        layout, sharing = layout_build()
        plan()
        meta = planner.meta()
        k = torch.randn(num_slots, HKV, D, device="cuda", dtype=torch.bfloat16)
        v = torch.randn_like(k)
        q = torch.randn(batch, HQ, D, device="cuda", dtype=torch.bfloat16)
        attn = time_ms(lambda: planner.run(q, k, v, D ** -0.5), repeats=args.repeats)
        attn_layout = time_ms(lambda: fc.paged_decode(q, k, v, layout, check_bounds=False), repeats=args.repeats)
        plan_ms, build_ms = wall_ms(plan, args.repeats), wall_ms(layout_build, args.repeats)
        build_torch_ms = wall_ms(with_env(layout_build, "FLASHCORE_LAYOUT_BUILD=torch"), args.repeats)
        rows.append(dict(batch=batch, tokens=total, runs=layout.nnz, chunk=meta["chunk_tokens"],
                         work_items=meta["work_items"], plan_ms=plan_ms, layout_build_ms=build_ms,
                         layout_build_torch_ms=build_torch_ms,
                         attn_layer_ms=attn, attn_layer_layout_ms=attn_layout, attn_step_ms=LAYERS * attn,
                         plan_pct_of_attn_step=100 * plan_ms / (LAYERS * attn),
                         layout_pct_of_attn_step=100 * build_ms / (LAYERS * attn_layout)))
        print(rows[-1], flush=True)
        del planner
    report(args, info, rows, ["batch", "tokens", "runs", "chunk", "work_items", "plan_ms", "layout_build_ms",
                              "layout_build_torch_ms",
                              "attn_layer_ms", "attn_layer_layout_ms", "attn_step_ms", "plan_pct_of_attn_step",
                              "layout_pct_of_attn_step"],
           "Decode metadata per step vs attention (page 1, no sharing, Hq32 Hkv8 D128 bf16)",
           [f"B{r['batch']}" for r in rows], {"GPU planner ms": [r["plan_ms"] for r in rows],
                                              "layout + sharing plan ms": [r["layout_build_ms"] for r in rows],
                                              "32-layer attention ms": [r["attn_step_ms"] for r in rows]}, "ms")


if __name__ == "__main__":
    main()
