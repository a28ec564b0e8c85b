"""Regenerates the measured-results pages from the committed result JSONs.

    python benchmarks/summarize.py          # write every generated file
    python benchmarks/summarize.py --check  # exit 1 if a generated file is out of date

Results live in ``benchmarks/results/<gpu>/<operation>/``: one result JSON per folder (what a
``benchmarks/bench_*.py --json`` run saved: ``{"info": {device, torch, command, ...}, "rows": [...]}``),
the run's PNG and text table where they exist, and a ``README.md`` written here.
``benchmarks/results/index.json`` says, per folder, at which commit the figures were measured
and what a reader should know about them. This script writes:

* ``benchmarks/results/<gpu>/<operation>/README.md`` for every folder,
* ``benchmarks/results/README.md``, the index of the folders,
* the performance table of the top-level ``README.md``, between ``<!-- performance:begin -->``
  and ``<!-- performance:end -->``.

Standard library only; the output depends on the committed files alone, so it is deterministic.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

HERE = Path(__file__).resolve().parent
BEGIN, END = "<!-- performance:begin -->", "<!-- performance:end -->"

# what each operation's timing includes (the benchmarks' own definitions, bench_util.py)
GPU_TIME = ("GPU time: CUDA events around each call, the calls queued behind a sleep kernel so that no "
            "host work (Python, checks, launches) is inside the events, for ours and the baselines alike; "
            "median of the repeats.")
TIMING = {
    "dense": GPU_TIME + " No L2 flush. TFLOPS = 4·B·Hq·S²·D, halved when causal. cuDNN and FlashAttention-2 "
             "are torch's SDPA backends on the same tensors.",
    "decode": GPU_TIME + " A 256 MB L2 flush before every call. `ours` is what the SGLang backend runs per layer "
              "(`DecodePlanner.run` over the pool, pages shuffled); the per-step plan is timed apart "
              "(`plan ms`, host wall clock until its kernels end) and is not in `ours ms`. cuDNN and FA2 "
              "(SDPA) read the same requests' K/V gathered into contiguous tensors beforehand; the gather is "
              "not timed. `bound` is the unique K/V bytes (+ Q and O) at the run's measured copy bandwidth "
              "(read + write).",
    "extend": GPU_TIME + " No L2 flush. One cached prefix shared by all B requests, then `new` tokens each. "
              "`backend` is what the SGLang backend runs per layer (`extend_attention` over an `ExtendPlan`); "
              "the per-batch plan is timed apart (`plan ms`, host wall clock). The dense reference is our "
              "kernel on K/V gathered beforehand; `(baseline+gather)/backend` adds the gather the baseline "
              "needs. The baselines are named by the SDPA kernel that ran: cuDNN (causal, or bottom-right "
              "causal as a boolean mask) and FA2 (`causal_lower_right`). Results made before the baselines "
              "were named (`sdpa_*` columns) time SDPA with `causal_lower_right`, which torch routes to "
              "FlashAttention-2 or the memory-efficient kernel, never to cuDNN.",
    "ragged": GPU_TIME + " No L2 flush. A batch `COUNTxNEW[:PREFIX]` is COUNT requests of NEW query tokens "
              "after PREFIX cached keys; causal (bottom-right). FLOPs count the visible (query, key) pairs. "
              "FA2 is torch's varlen FlashAttention-2 op on the same tensors.",
    "verify": GPU_TIME + " A 256 MB L2 flush before every call. `ours` is one layer of a verify step as the backend "
              "runs it (`verify_attention` over a `plan_verify` plan: the decode planner over B·N draft tokens, "
              "the N×N draft op and the LSE merge); the per-step plan is timed apart (`plan ms`). FA3 and "
              "FlashInfer run what SGLang's `fa3` and `flashinfer` backends run for a chain verify, over the "
              "same paged pool; cuDNN and FA2 (SDPA) read K/V gathered beforehand.",
    "window": GPU_TIME + " Prefill: no L2 flush; FLOPs count the visible (query, key) pairs. Decode: a 256 MB L2 "
              "flush before every call; the per-step window table and plan are timed apart (`plan ms`). FA3's "
              "local attention (`window_size=(W, 0)`) and FlashInfer's `window_left` run over the same tensors "
              "and pool.",
    "serving": "End to end: output tokens per second of whole workloads (wall clock), inter-token latency "
               "(ITL) per request, from SGLang servers started one after the other on the same machine with "
               "dummy weights and token-id requests (`benchmarks/bench_serving.py`).",
}
TITLES = {"dense": "Dense forward (prefill)", "dense_d256": "Dense forward, head dim 256",
          "decode": "Paged decode, seed configurations", "decode_pages": "Paged decode, page sizes",
          "decode_fp8": "Paged decode, FP8 KV cache", "decode_d256": "Paged decode, head dim 256",
          "extend": "Extend (prefill over a cached prefix)", "extend_fp8": "Extend over an FP8 KV cache",
          "verify": "Speculative target verify", "window": "Sliding-window attention",
          "ragged": "Ragged prefill batches", "serving": "SGLang serving"}
SCRIPTS = {"dense": "bench_dense.py", "decode": "bench_decode.py", "extend": "bench_extend.py",
           "verify": "bench_verify.py", "window": "bench_window.py", "ragged": "bench_ragged.py",
           "serving": "bench_serving.py"}
GPU_NAMES = {"h100": "H100", "h200": "H200"}


# ----------------------------------------------------------------------------- helpers
def fmt(v, digits: int = 2) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def table(rows: Sequence[Dict], cols: Sequence[Tuple[str, object]]) -> List[str]:
    """``cols``: (heading, key or function of the row)."""
    out = ["| " + " | ".join(h for h, _ in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [c(r) if callable(c) else fmt(r.get(c)) for _, c in cols]
        out.append("| " + " | ".join(cells) + " |")
    return out


def span(values: Sequence[float], digits: int = 2, unit: str = "x") -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    lo, hi = min(values), max(values)
    return f"{lo:.{digits}f}{unit}" if f"{lo:.{digits}f}" == f"{hi:.{digits}f}" else f"{lo:.{digits}f}–{hi:.{digits}f}{unit}"


def ctx(r: Dict) -> str:
    return f"{r['ctx'] // 1024}K" if r.get("ctx", 0) >= 1024 else str(r.get("ctx"))


def result_json(folder: Path) -> Path:
    found = sorted(folder.glob("*.json"))
    if len(found) != 1:
        raise SystemExit(f"{folder}: expected one result JSON, found {[p.name for p in found]}")
    return found[0]


def load_index(results: Path) -> Dict[str, Dict]:
    path = results / "index.json"
    return json.loads(path.read_text()) if path.exists() else {}


# ------------------------------------------------------------------ per-operation pages
def dense_page(data: Dict) -> Tuple[List[str], List[str]]:
    rows = data["rows"]
    summary = [f"- ours/cuDNN {span([r['ours_over_cudnn'] for r in rows], 3)} over {len(rows)} points "
               f"({sum(r['ours_over_cudnn'] >= 1.0 for r in rows)} at 1.0x or above), median "
               f"{statistics.median(r['ours_over_cudnn'] for r in rows):.3f}x;",
               f"- ours/FA2 {span([r['ours_over_fa2'] for r in rows])}; ours {span([r['ours_TF'] for r in rows], 0, ' TFLOPS')}."]
    cols = [("dtype", lambda r: r["dtype"].replace("bfloat16", "bf16").replace("float16", "fp16")),
            ("S", "S"), ("B", "B"), ("Hq/Hkv", lambda r: f"{r['Hq']}/{r['Hkv']}"), ("D", "D"),
            ("causal", lambda r: "yes" if r["causal"] else "no"), ("ours ms", lambda r: fmt(r["ours_ms"], 3)),
            ("ours TF", lambda r: fmt(r["ours_TF"], 0)), ("cuDNN TF", lambda r: fmt(r["cudnn_TF"], 0)),
            ("ours/cuDNN", lambda r: fmt(r["ours_over_cudnn"], 3)), ("FA2 TF", lambda r: fmt(r["fa2_TF"], 0)),
            ("ours/FA2", lambda r: fmt(r["ours_over_fa2"]))]
    return summary, table(rows, cols)


def decode_page(data: Dict) -> Tuple[List[str], List[str]]:
    rows = data["rows"]
    plain = [r for r in rows if not r["shared"]]
    shared = [r for r in rows if r["shared"]]
    summary = []
    if plain:
        summary.append(f"- without sharing: {span([r['speedup_vs_cudnn'] for r in plain], 3)} cuDNN's speed "
                       f"(ours {span([r['ours_TBs'] for r in plain], 2, ' TB/s')}, cuDNN "
                       f"{span([r['cudnn_TBs'] for r in plain], 2, ' TB/s')});")
    if shared:
        best = max(shared, key=lambda r: r["speedup_vs_cudnn"])
        summary.append(f"- with a shared prefix: {span([r['speedup_vs_cudnn'] for r in shared])} cuDNN's speed; "
                       f"B{best['B']} x {ctx(best)}, Hkv {best['Hkv']}, {best['shared']:.0%} shared: "
                       f"{best['speedup_vs_cudnn']:.2f}x, {best['ours_over_bound']:.2f}x the unique-bytes bound;")
    if any("plan_ms" in r for r in rows):
        summary.append(f"- the per-step plan: {span([r['plan_ms'] for r in rows], 3, ' ms')} "
                       f"({span([r['plan_pct_of_step'] for r in rows], 2, '%')} of a "
                       f"{data['info'].get('layers_per_step', 32)}-layer step).")
    graph = any("graph_ms" in r for r in rows)
    cols = [("B", "B"), ("Hq/Hkv", lambda r: f"{r['Hq']}/{r['Hkv']}"), ("ctx", ctx), ("page", "page"),
            ("shared", lambda r: fmt(r["shared"])), ("ours ms", lambda r: fmt(r["ours_ms"], 3))]
    if graph:
        cols.append(("CUDA-graph replay ms", lambda r: fmt(r.get("graph_ms"), 3)))
    cols += [("ours TB/s", "ours_TBs"), ("bound ms", lambda r: fmt(r["bound_ms"], 3)),
             ("ours/bound", "ours_over_bound"), ("cuDNN ms", lambda r: fmt(r["cudnn_ms"], 3)),
             ("cuDNN TB/s", "cudnn_TBs"), ("vs cuDNN", lambda r: fmt(r["speedup_vs_cudnn"], 3)),
             ("vs FA2", "speedup_vs_fa2")]
    summary += builtin_lines(rows, DECODE_BUILTINS)
    cols += present_cols(rows, DECODE_BUILTINS)
    if any("ours_fp8_ms" in r for r in rows):
        summary.append(f"- over an FP8 pool ({rows[0].get('kv_dtype', 'fp8')}): our time {span([r['fp8_over_bf16'] for r in rows])} "
                       f"of our bf16 time; against FlashInfer's FP8 decode on tensor cores "
                       f"{span([r['fp8_speedup_vs_flashinfer_tc_fp8'] for r in rows if 'fp8_speedup_vs_flashinfer_tc_fp8' in r])}, "
                       f"on CUDA cores {span([r['fp8_speedup_vs_flashinfer_fp8'] for r in rows if 'fp8_speedup_vs_flashinfer_fp8' in r])};")
        cols += [("ours FP8 ms", lambda r: fmt(r.get("ours_fp8_ms"), 3)), ("FP8/bf16 time", "fp8_over_bf16")]
        cols += present_cols(rows, DECODE_FP8_BUILTINS)
    if any("det_ms" in r for r in rows):
        summary.append(f"- the batch-invariant mode: {span([r['det_over_default'] for r in rows])} the default mode's time.")
        cols += [("batch-invariant/default time", "det_over_default")]
    cols += [("plan ms", lambda r: fmt(r.get("plan_ms"), 3))]
    return summary, table(rows, cols)


# (label, speed-up column): SGLang's built-in backends' kernels where a run timed them
DECODE_BUILTINS = (("FA3", "speedup_vs_fa3"), ("FlashInfer (tensor cores)", "speedup_vs_flashinfer_tc"),
                   ("FlashInfer (CUDA cores)", "speedup_vs_flashinfer"))
DECODE_FP8_BUILTINS = (("FP8: FlashInfer (tensor cores)", "fp8_speedup_vs_flashinfer_tc_fp8"),
                       ("FP8: FlashInfer (CUDA cores)", "fp8_speedup_vs_flashinfer_fp8"))
EXTEND_BUILTINS = (("FA3", "backend_over_fa3"), ("FlashInfer sm90", "backend_over_flashinfer_fa3"),
                   ("FlashInfer FA2", "backend_over_flashinfer"))


def present_cols(rows: Sequence[Dict], pairs) -> List[Tuple[str, object]]:
    """``vs <label>`` columns for the ratios some row has."""
    return [(f"vs {label}", lambda r, key=key: fmt(r.get(key))) for label, key in pairs if any(key in r for r in rows)]


def builtin_lines(rows: Sequence[Dict], pairs) -> List[str]:
    """Summary lines against SGLang's built-in kernels, split by sharing where rows have it."""
    out = []
    for label, key in pairs:
        have = [r for r in rows if key in r]
        if not have:
            continue
        plain = [r[key] for r in have if not r.get("shared") and not r.get("prefix")]
        shared = [r[key] for r in have if r.get("shared") or r.get("prefix")]
        parts = ([f"without sharing {span(plain)}"] if plain else []) + ([f"with a shared prefix {span(shared)}"] if shared else [])
        out.append(f"- against {label} (speed-up, same run): " + ", ".join(parts) + ";")
    return out


def extend_baseline(rows: List[Dict]) -> Tuple[str, str]:
    """(label, ratio column) of the extend table's baseline: cuDNN where the run named it, else the
    unnamed SDPA of older runs (FlashAttention-2 or memory-efficient, never cuDNN)."""
    if any("backend_over_best_plus_gather" in r for r in rows):
        return "best of cuDNN/FA2", "backend_over_best_plus_gather"
    if any("backend_over_cudnn_plus_gather" in r for r in rows):
        return "cuDNN", "backend_over_cudnn_plus_gather"
    return "SDPA (FA2/efficient)", "backend_over_sdpa_plus_gather"


def extend_page(data: Dict) -> Tuple[List[str], List[str]]:
    rows = data["rows"]
    name, ratio = extend_baseline(rows)
    tf = "cudnn_TF" if ratio == "backend_over_cudnn_plus_gather" else "sdpa_TF"
    prefix = [r for r in rows if r["prefix"]]
    summary = []
    for page in sorted({r["page"] for r in prefix}):
        at = [r for r in prefix if r["page"] == page and ratio in r]
        summary.append(f"- page {page}, with a cached prefix: backend/our dense on pre-gathered K/V "
                       f"{span([r['backend_over_dense'] for r in at])}, ({name} + gather)/backend "
                       f"{span([r[ratio] for r in at])};")
    none = [r for r in rows if not r["prefix"]]
    if none:
        summary.append(f"- no prefix: backend/our dense {span([r['backend_over_dense'] for r in none])}.")
    cols = [("page", "page"), ("B", "B"), ("L", "L"), ("prefix", "prefix"), ("new", "new"),
            ("backend ms", lambda r: fmt(r["backend_ms"], 3)), ("backend TF", lambda r: fmt(r["backend_TF"], 0)),
            ("plan ms", lambda r: fmt(r["plan_ms"], 3)), ("our dense TF", lambda r: fmt(r["dense_TF"], 0)),
            ("backend/dense", "backend_over_dense")]
    if ratio == "backend_over_best_plus_gather":
        cols += [("cuDNN TF", lambda r: fmt(r.get("cudnn_TF"), 0)), ("FA2 TF", lambda r: fmt(r.get("fa2_TF"), 0)),
                 ("best", "best"), ("shared/distinct", lambda r: fmt(r.get("shared_speedup"), 2))]
    else:
        cols += [(f"{name} TF", lambda r: fmt(r.get(tf), 0))]
    cols += [(f"({name}+gather)/backend", lambda r: fmt(r.get(ratio), 2))]
    summary += builtin_lines(rows, EXTEND_BUILTINS)
    cols += present_cols(rows, EXTEND_BUILTINS)
    if any("backend_fp8_ms" in r for r in rows):
        how = ("its distinct prefix pages widened to bf16 once per layer, then read in place"
               if any("fp8_plan_ms" in r for r in rows) else "the prefix is gathered and widened, not read in place")
        summary.append(f"- over an FP8 pool: the backend's speed {span([r['fp8_over_bf16'] for r in rows if 'fp8_over_bf16' in r])} "
                       f"of its bf16 speed ({how}).")
        cols += [("FP8 backend ms", lambda r: fmt(r.get("backend_fp8_ms"), 3)), ("FP8/bf16 speed", "fp8_over_bf16")]
    return summary, table(rows, cols)


def verify_page(data: Dict) -> Tuple[List[str], List[str]]:
    rows = data["rows"]
    points = [f"{r['shared']}-token shared context, page {r['page']}: {r['ours_over_best_builtin']:.2f}x "
              f"({r['best_builtin']})" for r in rows]
    summary = ["- ours against the best built-in kernel of each point (speed-up): " + "; ".join(points) + "."]
    cols = [("page", "page"), ("B", "B"), ("N", "N"), ("ctx", ctx), ("shared", "shared"),
            ("ours ms", lambda r: fmt(r["ours_ms"], 3)), ("plan ms", lambda r: fmt(r.get("plan_ms"), 3))]
    for label, key in (("FA3", "fa3_ms"), ("FlashInfer FA2", "flashinfer_ms"), ("FlashInfer sm90", "flashinfer_fa3_ms"),
                       ("cuDNN", "cudnn_ms"), ("FA2", "fa2_ms")):
        if any(key in r for r in rows):
            cols.append((f"{label} ms", lambda r, key=key: fmt(r.get(key), 3)))
    cols += [("best built-in", "best_builtin"), ("ours vs best", "ours_over_best_builtin")]
    return summary, table(rows, cols)


def window_page(data: Dict) -> Tuple[List[str], List[str]]:
    rows = data["rows"]
    summary = []
    for op in ("prefill", "decode"):
        at = [r for r in rows if r["op"] == op]
        if at:
            summary.append(f"- {op}: ours against FA3 {span([r['ours_over_fa3'] for r in at if 'ours_over_fa3' in r])}, "
                           f"against FlashInfer {span([r['ours_over_flashinfer'] for r in at if 'ours_over_flashinfer' in r])} (speed-up);")
    cols = [("op", "op"), ("B", "B"), ("S or C", lambda r: str(r.get("S", r.get("C")))), ("W", "W"),
            ("page", lambda r: fmt(r.get("page"))), ("ours ms", lambda r: fmt(r["ours_ms"], 3)),
            ("plan ms", lambda r: fmt(r.get("plan_ms"), 3)),
            ("no window ms", lambda r: fmt(r.get("ours_no_window_ms"), 3)),
            ("FA3 ms", lambda r: fmt(r.get("fa3_ms"), 3)), ("vs FA3", lambda r: fmt(r.get("ours_over_fa3"))),
            ("FlashInfer ms", lambda r: fmt(r.get("flashinfer_ms"), 3)),
            ("vs FlashInfer", lambda r: fmt(r.get("ours_over_flashinfer")))]
    return summary, table(rows, cols)


def ragged_page(data: Dict) -> Tuple[List[str], List[str]]:
    rows = data["rows"]
    old = next((k[: -len("_ms")] for k in rows[0] if k.startswith("FLASHCORE_") and k.endswith("_ms")), None)
    summary = [f"- ours/FA2 varlen {span([r['ours_over_fa2'] for r in rows])} over {len(rows)} batches."]
    cols = [("batch", "batch"), ("requests", "requests"), ("query tokens", "q_tokens"),
            ("ours ms", lambda r: fmt(r["ours_ms"], 3)), ("ours TF", lambda r: fmt(r["ours_TF"], 0)),
            ("FA2 ms", lambda r: fmt(r["fa2_ms"], 3)), ("ours/FA2", "ours_over_fa2")]
    if old:
        summary.append(f"- against the launch that skipped empty tiles one claim at a time (`{old}`): "
                       f"{span([r['ours_over_' + old] for r in rows])}.")
        cols += [("empty tiles skipped ms", lambda r: fmt(r[old + "_ms"], 3)),
                 ("speed-up of the tile list", lambda r: fmt(r["ours_over_" + old]))]
    return summary, table(rows, cols)


def serving_page(data: Dict) -> Tuple[List[str], List[str]]:
    rows, info = data["rows"], data["info"]
    workloads = info.get("workloads", {})
    summary = [f"- `{r['workload']}` ({workloads.get(r['workload'], '')}): {r['ours_over_triton']:.2f}x "
               f"triton's output tokens/s;" for r in rows]
    cols = [("workload", "workload"), ("ours tok/s", lambda r: fmt(r["flashcore_sparse_tok_s"], 0)),
            ("triton tok/s", lambda r: fmt(r["triton_tok_s"], 0)), ("ours/triton", "ours_over_triton"),
            ("ours ITL ms", lambda r: fmt(r["flashcore_sparse_itl_ms"], 1)),
            ("triton ITL ms", lambda r: fmt(r["triton_itl_ms"], 1))]
    return summary, table(rows, cols)


PAGES: Dict[str, Callable[[Dict], Tuple[List[str], List[str]]]] = {
    "dense": dense_page, "decode": decode_page, "extend": extend_page,
    "ragged": ragged_page, "serving": serving_page, "verify": verify_page, "window": window_page}


def generic_page(data: Dict) -> Tuple[List[str], List[str]]:
    keys = sorted(set().union(*[r.keys() for r in data["rows"]])) if data["rows"] else []
    return [], table(data["rows"], [(k, k) for k in keys])


def for_op(entries: Dict, op: str, default):
    """``entries``' value for a result folder: its own (``decode_pages``), else its operation's
    (``decode`` for ``decode_fp8``), else ``default``."""
    return entries.get(op, entries.get(op.split("_")[0], default))


def folder_readme(folder: Path, data: Dict, meta: Dict) -> str:
    gpu, op = folder.parent.name, folder.name
    info = data["info"]
    summary, rows = for_op(PAGES, op, generic_page)(data)
    versions = ", ".join(f"{name} {info[key]}" for name, key in
                         (("torch", "torch"), ("CUDA", "cuda"), ("Python", "python"), ("SGLang", "sglang"))
                         if key in info)
    lines = [f"# {TITLES.get(op, op)} on the {GPU_NAMES.get(gpu, gpu)}", "",
             "Generated by `benchmarks/summarize.py` from the JSON in this folder; do not edit.", "",
             f"- Device: {info['device']}; {versions}.",
             f"- Measured at commit {meta['measured_at']}." if meta.get("measured_at") else "- Commit: not recorded.",
             f"- Command (`benchmarks/{for_op(SCRIPTS, op, '...')}`"
             + ("; the script lived in `scripts/` at the time" if "scripts/" in info["command"] else "") + "):", "",
             "```", *info.get("merged_runs", []), info["command"], "```", ""]
    lines += ["## What the timing includes", "", for_op(TIMING, op, GPU_TIME)
              + (" Ours and the baselines of a point were timed interleaved: several alternating passes, so that a drift of the GPU clock falls on both." if meta.get("interleaved")
                 else " Each point timed ours and then the baselines, each in one block of repeats."
                 if op != "serving" else ""), ""]
    if meta.get("note"):
        lines += [meta["note"], ""]
    lines += ["## Reading", ""] + summary + ["", "## Figures", ""] + rows + [""]
    others = sorted(p.name for p in folder.iterdir() if p.name not in ("README.md",) and p.suffix != ".json")
    lines += ["Files: `" + "`, `".join([result_json(folder).name] + others) + "`.", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------ the README's table
def headline(op: str, data: Dict) -> Optional[Tuple[str, str, str]]:
    """(what, baseline, ours vs baseline) for the top-level table."""
    rows = data["rows"]
    if op == "dense":
        return (f"{len(rows)} shapes, S 512–16K, D 64/128, causal or not, bf16/fp16", "cuDNN (SDPA)",
                f"{span([r['ours_over_cudnn'] for r in rows])} (median "
                f"{statistics.median(r['ours_over_cudnn'] for r in rows):.2f}x); FA2 "
                f"{span([r['ours_over_fa2'] for r in rows])}")
    if op == "decode":
        plain = [r for r in rows if not r["shared"]]
        top = max(rows, key=lambda r: r["speedup_vs_cudnn"])
        return ("seed grid B8×128K, B16×32K, B32×8K, Hkv 8/32, page 128", "cuDNN on gathered K/V",
                f"no sharing {span([r['speedup_vs_cudnn'] for r in plain])}; {top['shared']:.0%} shared "
                f"B{top['B']}×{ctx(top)} Hkv {top['Hkv']}: {top['speedup_vs_cudnn']:.2f}x")
    if op == "decode_pages":
        pages = sorted({r["page"] for r in rows})
        plain = [r for r in rows if not r["shared"]]
        return (f"B8×32K, pages {'/'.join(map(str, pages))}, no sharing", "cuDNN on gathered K/V",
                span([r["speedup_vs_cudnn"] for r in plain]))
    if op == "extend":
        name, ratio = extend_baseline(rows)
        at = [r for r in rows if r["prefix"] and r["page"] > 1 and ratio in r] or \
            [r for r in rows if r["prefix"] and ratio in r]
        return (f"shared cached prefix, page {at[0]['page']}, Hq 32 / Hkv 8", f"{name} + the gather it needs",
                span([r[ratio] for r in at]))
    if op == "ragged":
        return ("mixed-length prefill batches", "FA2 varlen", span([r["ours_over_fa2"] for r in rows]))
    if op == "serving":
        by = {r["workload"]: r["ours_over_triton"] for r in rows}
        return ("Llama-3-8B shape, SGLang " + data["info"].get("sglang", ""), "SGLang `triton` backend",
                ", ".join(f"{name} {v:.2f}x" for name, v in by.items()))
    if op == "dense_d256":
        return (f"{len(rows)} shapes, D 256, S {min(r['S'] for r in rows) // 1024}K–{max(r['S'] for r in rows) // 1024}K, causal or not, bf16",
                "cuDNN (SDPA)", f"{span([r['ours_over_cudnn'] for r in rows])}; FA2 {span([r['ours_over_fa2'] for r in rows])}")
    if op == "decode_d256":
        plain = [r for r in rows if not r["shared"]]
        top = max(rows, key=lambda r: r["speedup_vs_cudnn"])
        return ("D 256, Hq 8 / Hkv 4", "cuDNN on gathered K/V", f"no sharing {span([r['speedup_vs_cudnn'] for r in plain])}; "
                f"{top['shared']:.0%} shared: {top['speedup_vs_cudnn']:.2f}x")
    if op == "decode_fp8":
        plain = [r["fp8_speedup_vs_flashinfer_tc_fp8"] for r in rows if not r["shared"]]
        shared = [r["fp8_speedup_vs_flashinfer_tc_fp8"] for r in rows if r["shared"]]
        return ("FP8-e4m3 KV, B16×32K / B8×128K, Hkv 8", "FlashInfer's FP8 decode (tensor cores)",
                f"no sharing {span(plain)}; 70% shared {span(shared)}; FP8/bf16 time {span([r['fp8_over_bf16'] for r in rows])}")
    if op == "extend_fp8":
        return ("B8 × 4K, no prefix or a 90% shared prefix", "FA3 (`flash_attn_varlen_func` / paged)",
                f"no prefix {span([r['backend_over_fa3'] for r in rows if not r['prefix']])}; prefix "
                f"{span([r['backend_over_fa3'] for r in rows if r['prefix']])}; FP8 pool/bf16 speed {span([r['fp8_over_bf16'] for r in rows])}")
    if op == "verify":
        return (f"B{rows[0]['B']} × N{rows[0]['N']} chain, {ctx(rows[0])} context", "best of FA3 / FlashInfer",
                span([r["ours_over_best_builtin"] for r in rows]))
    if op == "window":
        pre = [r["ours_over_fa3"] for r in rows if r["op"] == "prefill"]
        dec = [r["ours_over_fa3"] for r in rows if r["op"] == "decode"]
        return ("windows 511–4095, prefill and decode", "FA3 local attention", f"prefill {span(pre)}; decode {span(dec)}")
    return None


def performance_table(results: Path, index: Dict[str, Dict]) -> str:
    lines = ["| operation | GPU | workload | baseline | ours vs baseline | measured at | details |",
             "|---|---|---|---|---|---|---|"]
    order = list(TITLES)
    folders = sorted(folders_of(results), key=lambda f: (order.index(f.name) if f.name in order else len(order),
                                                          f.name, f.parent.name))
    for folder in folders:
        data = json.loads(result_json(folder).read_text())
        row = headline(folder.name, data)
        if row is None:
            continue
        rel = folder.relative_to(results).as_posix()
        lines.append(f"| {TITLES.get(folder.name, folder.name)} | {GPU_NAMES.get(folder.parent.name, folder.parent.name)} "
                     f"| {row[0]} | {row[1]} | {row[2]} | {index.get(rel, {}).get('measured_at', '')} "
                     f"| [`{rel}/`](benchmarks/results/{rel}/) |")
    return "\n".join(lines)


def results_index(results: Path, index: Dict[str, Dict]) -> str:
    lines = ["# Measured results", "",
             "Generated by `benchmarks/summarize.py`; do not edit. One folder per GPU and operation, each with",
             "the latest result JSON (device, versions and command in its `info`), its plot and table where the",
             "run made them, and a README. Earlier runs and A/B experiments are in git history; "
             "`docs/experiments.md` cites their commits.", "",
             "| folder | device | measured at | command |", "|---|---|---|---|"]
    for folder in sorted(folders_of(results)):
        rel = folder.relative_to(results).as_posix()
        info = json.loads(result_json(folder).read_text())["info"]
        lines.append(f"| [`{rel}/`]({rel}/) | {info['device']} | {index.get(rel, {}).get('measured_at', '')} "
                     f"| `{info['command'].split(' --json')[0]}` |")
    return "\n".join(lines) + "\n"


def folders_of(results: Path) -> List[Path]:
    return [f for gpu in sorted(results.iterdir()) if gpu.is_dir()
            for f in sorted(gpu.iterdir()) if f.is_dir() and any(f.glob("*.json"))]


# ------------------------------------------------------------------------------ main
def generate(results: Path, readme: Path) -> Dict[Path, str]:
    """Every generated file's path and wanted contents."""
    index = load_index(results)
    out: Dict[Path, str] = {}
    for folder in folders_of(results):
        data = json.loads(result_json(folder).read_text())
        out[folder / "README.md"] = folder_readme(folder, data, index.get(folder.relative_to(results).as_posix(), {}))
    out[results / "README.md"] = results_index(results, index)
    if readme.exists():
        text = readme.read_text()
        if BEGIN in text and END in text:
            head, rest = text.split(BEGIN, 1)
            _, tail = rest.split(END, 1)
            out[readme] = head + BEGIN + "\n" + performance_table(results, index) + "\n" + END + tail
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a generated file is out of date")
    parser.add_argument("--results", type=Path, default=HERE / "results", help="the results folder")
    parser.add_argument("--readme", type=Path, default=HERE.parent / "README.md",
                        help="the README whose performance table is regenerated")
    args = parser.parse_args(argv)
    stale = []
    for path, text in generate(args.results, args.readme).items():
        if path.exists() and path.read_text() == text:
            continue
        if args.check:
            stale.append(path)
        else:
            path.write_text(text)
            print("wrote", path)
    for path in stale:
        print("out of date:", path, "(run python benchmarks/summarize.py)")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
