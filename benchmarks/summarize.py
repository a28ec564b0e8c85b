"""Writes benchmarks/results/<device>/README.md from the JSON files a benchmark run saved there,
so the committed summary always matches the committed measurements."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def load(folder: Path, name: str):
    path = folder / name
    return json.loads(path.read_text()) if path.exists() else None


def fmt(v, digits=2):
    return "" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))


def table(rows, cols, heads):
    out = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for r in rows:
        out.append("| " + " | ".join(fmt(r.get(c)) if not callable(c) else c(r) for c in cols) + " |")
    return out


def main(folder: str) -> None:
    folder = Path(folder)
    lines = [f"# Measured on {folder.name}", ""]
    dense, decode, extend = load(folder, "dense_grid.json"), load(folder, "decode_seed.json"), load(folder, "extend.json")
    info = (dense or decode or extend)["info"]
    lines += [f"Device: {info['device']}, torch {info['torch']} (CUDA {info['cuda']}), Python {info['python']}.",
              "Each JSON file holds every figure of its run and the exact command; the PNGs plot them.",
              "Times are GPU time (CUDA events around calls queued behind a sleep kernel, median of the "
              "repeats; `benchmarks/bench_util.py`), ours and the baselines alike.", ""]
    for decode_name, decode in (("seed configurations", decode), ("page sizes", load(folder, "decode_pages.json"))):
        if not decode:
            continue
        i = decode["info"]
        i = decode["info"]
        planner = "plan_ms" in decode["rows"][0]  # runs since the GPU page-table planner
        lines += [f"## Paged decode, {decode_name} (`benchmarks/bench_decode.py`)", "",
                  f"`{i['command']}`; bf16, D 128, L2 flushed between calls, copy bandwidth "
                  f"{i['copy_TBs_read_plus_write']:.2f} TB/s (read + write). Bytes are the unique K/V bytes the step "
                  "must read (+ Q and O); the bound is those bytes at the copy bandwidth. "
                  + ("`ours` is the path the SGLang backend runs (the GPU page-table planner + the decode kernel's "
                     "table mode); plan % is its per-step planning (host wall clock until the planner's kernels end) "
                     f"over a step of {i['layers_per_step']} layers; `layout API` is the same kernel over a "
                     "`PagedLayout` + `SharingPlan`, whose build (`layout ms`) the backend no longer pays per decode step."
                     if planner else f"layout % is the layout + plan build over a step of {i['layers_per_step']} layers."),
                  ""]
        extra = (["plan_ms", "plan_pct_of_step", "layout_api_ms", "layout_ms"] if planner
                 else ["layout_ms", "layout_pct_of_step"])
        extra_heads = (["plan ms", "plan % of step", "layout API ms", "layout ms"] if planner
                       else ["layout ms", "layout % of step"])
        # FlashInfer's paged decode, where its wheel was carried to the GPU (CUDA cores / tensor cores)
        flashinfer = any("flashinfer_ms" in r for r in decode["rows"])
        fi_cols = ["flashinfer_ms", "speedup_vs_flashinfer", "flashinfer_tc_ms", "speedup_vs_flashinfer_tc"]
        fi_heads = ["FlashInfer ms", "vs FlashInfer", "FlashInfer TC ms", "vs FlashInfer TC"]
        lines += table(decode["rows"],
                       ["B", "Hkv", lambda r: f"{r['ctx'] // 1024}K", "page", "shared", "ours_ms", "graph_ms", "ours_TBs",
                        "bound_ms", "ours_over_bound", "cudnn_ms", "cudnn_TBs", "speedup_vs_cudnn", "speedup_vs_fa2"]
                       + (fi_cols if flashinfer else []) + extra,
                       ["B", "Hkv", "ctx", "page", "shared", "ours ms", "ours, CUDA-graph replay ms", "ours TB/s",
                        "bound ms", "ours/bound", "cuDNN ms", "cuDNN TB/s", "vs cuDNN", "vs FA2"]
                       + (fi_heads if flashinfer else []) + extra_heads)
        lines.append("")
    plan_build = load(folder, "plan_build.json")
    if plan_build and "plan_ms" in plan_build["rows"][0]:
        lines += ["## Decode metadata per step (`benchmarks/bench_plan_build.py`)", "",
                  f"`{plan_build['info']['command']}`; serving-shaped decode batches (page 1, a prompt run plus "
                  "scattered decode slots per request, no sharing), Hq 32, Hkv 8, D 128, bf16. Host wall clock until "
                  "the GPU is done; attention = the decode kernel for 32 layers.", ""]
        lines += table(plan_build["rows"],
                       ["batch", "tokens", "chunk", "work_items", "plan_ms", "layout_build_ms", "attn_layer_ms",
                        "attn_step_ms", "plan_pct_of_attn_step", "layout_pct_of_attn_step"],
                       ["B", "tokens", "chunk", "work items", "GPU planner ms", "layout + sharing plan ms",
                        "attention ms / layer", "attention ms / step", "planner % of attention",
                        "layout build % of attention"])
        lines.append("")
    if dense:
        lines += ["## Dense forward (`benchmarks/bench_dense.py`)", "", f"`{dense['info']['command']}`; TFLOPS = "
                  "4·B·H·S²·D (halved when causal).", ""]
        lines += table([r for r in dense["rows"] if r["dtype"] == "bfloat16"],
                       ["S", "B", "Hq", "Hkv", "D", "causal", "ours_TF", "cudnn_TF", "ours_over_cudnn", "fa2_TF",
                        "ours_over_fa2"],
                       ["S", "B", "Hq", "Hkv", "D", "causal", "ours TF", "cuDNN TF", "ours/cuDNN", "FA2 TF", "ours/FA2"])
        notes = folder / "dense_notes.md"  # what a reader of this device's run should know
        lines += ["", "fp16 rows are in `dense_grid.json` / `dense_grid.txt`."
                  + (" " + notes.read_text().strip() if notes.exists() else ""), ""]
    if extend:
        paged = "backend_gather_ms" in extend["rows"][0] or any("paged" in r for r in extend["rows"])
        backend = "backend_TF" in extend["rows"][0]  # runs since the backend's ExtendPlan path
        lines += ["## Extend (`benchmarks/bench_extend.py`)", "", f"`{extend['info']['command']}`; bf16, Hq 32, Hkv 8, "
                  "D 128; one cached prefix shared by all B requests. "
                  + ("`backend` is what `FlashCoreBackend` runs per layer (`extend_attention` over an `ExtendPlan`; "
                     "page 64: the dense kernel reads the prefix pages in place, page 1: one gather of the keys, no "
                     "prefix: the new K/V as they are; `plan ms` is the per-batch plan, host wall clock). "
                     "`gather ms` (backend) is the same call on a gathered plan, what page 64 ran before; "
                     "`order 0/1 ms` time the paged kernel's two CTA orders (1: requests side by side, the plan's "
                     "choice when they share pages); `distinct ms` is the same shapes on a table where no page is "
                     "shared. `paged_extend` is the public layout API. The dense reference is the op itself on K/V "
                     "gathered beforehand."
                     if paged else
                     "`backend` is what `FlashCoreBackend` runs per layer (`extend_attention` over an `ExtendPlan`: one "
                     "gather of the keys, none without a prefix, then the dense kernel; `plan ms` is the per-batch "
                     "plan, host wall clock); `paged_extend` is the public layout API. The dense "
                     "reference is the op itself on K/V gathered beforehand, so backend/dense is what the gather "
                     "costs."
                     if backend else ""), ""]
        if paged:
            lines += table(extend["rows"],
                           ["page", "B", "L", "prefix", "new", "backend_TF", "plan_ms", "backend_gather_ms",
                            "paged_over_gather", "order0_ms", "order1_ms", "distinct_ms", "ours_TF", "dense_TF",
                            "backend_over_dense", "sdpa_TF", "backend_over_sdpa_plus_gather"],
                           ["page", "B", "L", "prefix", "new", "backend TF", "plan ms", "backend, gathered ms",
                            "gathered/paged", "order 0 ms", "order 1 ms", "distinct ms", "paged_extend TF",
                            "our dense, pre-gathered TF", "backend/dense", "SDPA TF", "(SDPA+gather)/backend"])
        elif backend:
            lines += table(extend["rows"],
                           ["page", "B", "L", "prefix", "new", "backend_TF", "plan_ms", "ours_TF", "dense_TF",
                            "backend_over_dense", "gather_ms", "sdpa_TF", "backend_over_sdpa_plus_gather"],
                           ["page", "B", "L", "prefix", "new", "backend TF", "plan ms", "paged_extend TF",
                            "our dense, pre-gathered TF", "backend/dense", "gather ms", "SDPA TF",
                            "(SDPA+gather)/backend"])
        else:
            lines += table(extend["rows"],
                           ["page", "B", "L", "prefix", "new", "ours_TF", "dense_TF", "ours_over_dense", "gather_ms",
                            "sdpa_TF", "ours_over_sdpa_plus_gather"],
                           ["page", "B", "L", "prefix", "new", "ours TF", "our dense, pre-gathered TF", "ours/dense",
                            "gather ms", "SDPA TF", "(SDPA+gather)/ours"])
        lines.append("")
    ncu_extend = folder / "ncu_extend_sharing.txt"
    if ncu_extend.exists():
        lines += ["## Nsight Compute, paged extend over a shared prefix (`tools/ncu_extend.py`)", "",
                  "HBM bytes read by the dense kernel in each CTA order; see the file's header for the command.", "",
                  "```", ncu_extend.read_text().rstrip(), "```", ""]
    for name, title in (("ncu_dense_seed_point.txt", "dense kernel at the seed point"),
                        ("ncu_dense_vs_cudnn.txt", "dense kernel next to cuDNN SDPA")):
        ncu = folder / name
        if ncu.exists():
            lines += [f"## Nsight Compute, {title}", "", "```", ncu.read_text().rstrip(), "```", ""]
    subfolders = [(d.name, d / "README.md") for d in sorted(folder.iterdir()) if (d / "README.md").exists()]
    if subfolders:
        lines += ["## Other runs", "", "Each folder has its own README with the command and the reading:", ""]
        lines += [f"- `{name}/`: {readme.read_text().splitlines()[0].lstrip('# ')}" for name, readme in subfolders]
        lines.append("")
    (folder / "README.md").write_text("\n".join(lines))
    print("wrote", folder / "README.md")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/h100")
