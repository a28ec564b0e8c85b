"""Host time of one public dense call against torch SDPA (cuDNN) at a short shape, where the host
work shows: per call, the time to enqueue (no sync), and the time per call of a back-to-back loop
(the GPU bound once the host keeps up), for

* ``fc.attention`` (the public call: validation, then the kernel),
* the kernel's wrapper without the public checks (``kernels.attention_cuda``),
* ``torch.ops.flashcore.attention`` (the custom op's dispatch, as torch.compile sees it),
* SDPA with cuDNN, and the kernel alone inside a CUDA graph (no host work at all).

    python3 tools/host_overhead.py [--shape B,S,H,D] [--causal 1] [--calls 2000] [--json F] [--tree PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

# --tree PATH: time the package of another checkout (e.g. a revision unpacked by ab_revision.py)
_TREE = sys.argv[sys.argv.index("--tree") + 1] if "--tree" in sys.argv else os.path.join(os.path.dirname(__file__), "..")
sys.path.insert(0, os.path.abspath(_TREE))
import sglang_flashcore as fc  # noqa: E402
from sglang_flashcore import kernels  # noqa: E402

# the kernel's wrapper without the public checks (named _attention_cuda before the ops were registered per device)
_KERNEL = getattr(kernels, "attention_cuda", None) or getattr(kernels, "_attention_cuda")


def per_call_us(fn, calls: int, sync_each: bool) -> float:
    """Median over 5 batches of the host time per call (enqueue only unless ``sync_each``)."""
    times = []
    for _ in range(5):
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(calls):
            fn()
            if sync_each:
                torch.cuda.synchronize()
        if not sync_each:
            enqueue = time.perf_counter() - start
            torch.cuda.synchronize()
            times.append(enqueue / calls * 1e6)
        else:
            times.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(times)


def loop_us(fn, calls: int) -> float:
    """Wall time per call of a back-to-back loop, synchronized at its end."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / calls * 1e6


def graph_us(fn, calls: int) -> float:
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        fn()
    return loop_us(graph.replay, calls)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="16,512,16,64")
    parser.add_argument("--causal", type=int, default=1)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--json")
    parser.add_argument("--tree", help="the checkout whose package is timed (default: this one)")
    args = parser.parse_args()
    b, s, h, d = (int(x) for x in args.shape.split(","))
    causal = bool(args.causal)
    q, k, v = (torch.randn(b, s, h, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    scale = d ** -0.5

    def cudnn():
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.CUDNN_ATTENTION):
            return F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal)

    fns = {
        "fc.attention": lambda: fc.attention(q, k, v, causal=causal),
        "kernel wrapper": lambda: _KERNEL(q, k, v, None, None, s, s, causal, scale),
        "torch.ops.flashcore.attention": lambda: torch.ops.flashcore.attention(q, k, v, None, None, s, s, causal,
                                                                               scale),
        "sdpa_cudnn": cudnn,
    }
    want = cudnn().transpose(1, 2).float()
    got = fc.attention(q, k, v, causal=causal)[0].float()
    diff = (got - want).abs().max().item()
    if diff > 2e-2:
        print(f"fc.attention differs from cuDNN by {diff:.3g}: not timing a wrong result")
        return 1
    rows = []
    for name, fn in fns.items():
        for _ in range(20):
            fn()
        rows.append(dict(call=name, enqueue_us=per_call_us(fn, args.calls, False),
                         loop_us=loop_us(fn, args.calls)))
    kernel_graph = graph_us(lambda: _KERNEL(q, k, v, None, None, s, s, causal, scale), args.calls)
    cudnn_graph = graph_us(cudnn, args.calls)
    ref = {r["call"]: r for r in rows}["sdpa_cudnn"]["loop_us"]
    print(f"{fc.__file__}")
    print(f"{torch.cuda.get_device_name()}: B{b} H{h} S{s} D{d} causal={int(causal)} bf16, {args.calls} calls;"
          f" max |fc - cuDNN| {diff:.3g}")
    print(f"{'call':32s} {'enqueue us':>11s} {'loop us':>9s} {'cuDNN loop / loop':>18s}")
    for r in rows:
        r["cudnn_over_loop"] = ref / r["loop_us"]
        print(f"{r['call']:32s} {r['enqueue_us']:11.1f} {r['loop_us']:9.1f} {r['cudnn_over_loop']:18.3f}")
    print(f"in a CUDA graph: ours {kernel_graph:.1f} us, cuDNN {cudnn_graph:.1f} us, "
          f"cuDNN / ours {cudnn_graph / kernel_graph:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(info=dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                                     command="python3 tools/host_overhead.py " + " ".join(sys.argv[1:])),
                           rows=rows, graph=dict(ours_us=kernel_graph, cudnn_us=cudnn_graph)), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
