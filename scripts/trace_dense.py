"""Where a dense work tile's time goes: clock64 trace points in a copy of the dense kernel.

Copies ``sglang_flashcore/`` and ``cuda/`` to a scratch folder, inserts trace points into its
``dense_fwd.cu`` (the producer's waits; each consumer warpgroup's tile start, first Q K^T and
softmax, every main-loop step, last P V and the epilogue's parts), builds that copy into its own
cache, runs the given shapes (bf16) and prints, per phase, the mean / median / p90 cycles over the
work tiles of the first 8 CTAs (``CTAS``), plus one CTA's timeline. The trace points cost time themselves
(about 150 cycles each): compare phases, not totals with the untraced kernel.

    python3 scripts/trace_dense.py                      # S 512 at D 128 and D 64, non-causal
    python3 scripts/trace_dense.py --shape 1,16384,16,16,128 --causal

The insertion points are exact source lines of ``cuda/dense_fwd.cu``: when the kernel changes,
the script stops with the line it no longer finds (tests/test_scripts.py checks they all match).
"""

from __future__ import annotations

import argparse
import array
import collections
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import trace_util  # noqa: E402


# The trace buffer: CTAS CTAs x ROLES roles (producer, consumers 1..3) x RECORDS records of
# (id << 56 | work tile << 40 | clock64), written by one thread per role.
CTAS, ROLES, RECORDS = 8, 4, 4096
TRACE_BUFFER = ("#include <cstdio>\n#include <cstdlib>\nnamespace flashcore {\n"
                f"constexpr int kTraceCtas = {CTAS}, kTraceRoles = {ROLES}, kTraceRecords = {RECORDS};\n" + """\
__device__ unsigned long long g_trace[kTraceCtas * kTraceRoles * kTraceRecords];
__device__ __forceinline__ void trace_rec(int role, int& cnt, int id, int w) {
  if (blockIdx.x < kTraceCtas && cnt < kTraceRecords) {
    g_trace[(blockIdx.x * kTraceRoles + role) * kTraceRecords + cnt] = ((unsigned long long)id << 56) |
        ((unsigned long long)(w & 0xffff) << 40) | ((unsigned long long)clock64() & 0xffffffffffull);
    ++cnt;
  }
}
namespace {
""")
LAUNCH = "  kernel<<<(unsigned)ctas, DenseShape<W>::kThreads, smem, stream>>>(tq, tk, tv, tk_pool, tv_pool, to, p);\n"
DUMP = """  const char* trace_path = getenv("FC_TRACE");
  if (trace_path) {
    void* addr;
    cudaGetSymbolAddress(&addr, g_trace);
    cudaMemsetAsync(addr, 0, sizeof(g_trace), stream);
  }
""" + LAUNCH + """  if (trace_path) {
    static unsigned long long host[sizeof(g_trace) / sizeof(g_trace[0])];
    cudaStreamSynchronize(stream);
    cudaMemcpyFromSymbol(host, g_trace, sizeof(host));
    FILE* f = fopen(trace_path, "wb");
    fwrite(host, 1, sizeof(host), f);
    fclose(f);
  }
"""
TR_MACRO = ("  int tcnt = 0;\n  const bool rec = threadIdx.x % 128 == 0;\n"
            "#define TR(id) do { if (rec) trace_rec(1 + c, tcnt, id, w); } while (0)\n")

# (source text, its replacement): each source text must occur exactly once in dense_fwd.cu
INSERTIONS = [
    ("namespace flashcore {\nnamespace {\n", TRACE_BUFFER),
    # producer: 1/2 around the wait for the consumers' release of Q, 3/4 after each K/V slot wait
    ("      int g = 0, w = 0;  // K/V tiles and work tiles loaded so far\n",
     "      int g = 0, w = 0;  // K/V tiles and work tiles loaded so far\n      int tcnt = 0;\n"),
    ("        if (w > 0) mbar_wait(q_empty, (w - 1) & 1);",
     "        trace_rec(0, tcnt, 1, w);\n        if (w > 0) mbar_wait(q_empty, (w - 1) & 1);\n        trace_rec(0, tcnt, 2, w);"),
    ("          if (g >= kStages) mbar_wait(&empty_k[s], parity);\n",
     "          if (g >= kStages) mbar_wait(&empty_k[s], parity);\n          trace_rec(0, tcnt, 3, w);\n"),
    ("          if (g >= kStages) mbar_wait(&empty_v[s], parity);\n",
     "          if (g >= kStages) mbar_wait(&empty_v[s], parity);\n          trace_rec(0, tcnt, 4, w);\n"),
    # consumers: 10/11 around the wait for the work tile, 12/13 around the first K wait
    ("  int g = 0;  // K/V tiles consumed so far\n  for (int w = 0;; ++w) {\n    mbar_wait(q_full, w & 1);\n",
     "  int g = 0;  // K/V tiles consumed so far\n" + TR_MACRO +
     "  for (int w = 0;; ++w) {\n    TR(10);\n    mbar_wait(q_full, w & 1);\n    TR(11);\n"),
    ("      mbar_wait(&full_k[g % kStages], (g / kStages) & 1);\n      if (half_first) {",
     "      TR(12);\n      mbar_wait(&full_k[g % kStages], (g / kStages) & 1);\n      TR(13);\n      if (half_first) {"),
    ("      softmax(sc, 0, alpha);\n      pack_p(sc, pa);\n", "      softmax(sc, 0, alpha);\n      pack_p(sc, pa);\n      TR(14);\n"),
    # main loop: 15/16 around the turn, 17/18 around the wait for S, 19/20 around the wait for P V
    ("        turn_begin();\n        mbar_wait(&full_k[gk % kStages], (gk / kStages) & 1);\n",
     "        TR(15);\n        turn_begin();\n        TR(16);\n        mbar_wait(&full_k[gk % kStages], (gk / kStages) & 1);\n"),
    ("        wgmma_wait<1>();  // S(n) is done; P(n-1) V(n-1) may still run\n",
     "        TR(17);\n        wgmma_wait<1>();  // S(n) is done; P(n-1) V(n-1) may still run\n        TR(18);\n"),
    ("        wgmma_wait<0>();\n        fence_regs(o);\n        mbar_arrive(&empty_v[gv % kStages]);\n",
     "        TR(19);\n        wgmma_wait<0>();\n        TR(20);\n        fence_regs(o);\n"
     "        mbar_arrive(&empty_v[gv % kStages]);\n"),
    # last P V: 21/22 around its turn, 23 when it is done; epilogue: 25 LSE done, 26 O staged, 24 end
    ("      turn_begin();\n      mbar_wait(&full_v[last % kStages], (last / kStages) & 1);\n",
     "      TR(21);\n      turn_begin();\n      TR(22);\n      mbar_wait(&full_v[last % kStages], (last / kStages) & 1);\n"),
    ("      wgmma_wait<0>();\n      fence_regs(o);\n      mbar_arrive(&empty_v[last % kStages]);\n",
     "      wgmma_wait<0>();\n      TR(23);\n      fence_regs(o);\n      mbar_arrive(&empty_v[last % kStages]);\n"),
    ("    T* out_rows = reinterpret_cast<T*>(p.out)", "    TR(25);\n    T* out_rows = reinterpret_cast<T*>(p.out)"),
    # 26: O staged (the TMA store path or the consumers' 16-byte rows)
    ("      if (warp_row0 + 16 <= t.sq) {\n", "      TR(26);\n      if (warp_row0 + 16 <= t.sq) {\n"),
    ("      __syncwarp();\n      constexpr int kPieces", "      TR(26);\n      __syncwarp();\n      constexpr int kPieces"),
    ("p.num_q_heads + t.hq] = lse[r];\n  }\n", "p.num_q_heads + t.hq] = lse[r];\n    TR(24);\n  }\n#undef TR\n"),
    (LAUNCH, DUMP),
]


def instrument(src: str) -> str:
    """``dense_fwd.cu`` with the trace points and a host-side dump of the trace buffer to the
    file $FC_TRACE names after each launch (when it is set)."""
    return trace_util.patch(src, INSERTIONS, "dense_fwd.cu", "trace_dense")


def read_trace(path: str) -> list:
    """The records of the trace file: per CTA, per role, a list of (id, work tile, clock)."""
    records = array.array("Q")
    with open(path, "rb") as f:
        records.frombytes(f.read())
    per_cta = []
    for cta in range(CTAS):
        roles = []
        for role in range(ROLES):
            chunk = records[(cta * ROLES + role) * RECORDS:(cta * ROLES + role + 1) * RECORDS]
            roles.append([(x >> 56, (x >> 40) & 0xFFFF, x & 0xFFFFFFFFFF) for x in chunk if x != 0])
        per_cta.append(roles)
    return per_cta


def phases(events: list) -> dict:
    """Cycles per phase of one consumer's work tiles (the first and last tile left out: they
    hold the launch and the drain), from its (id, work tile, clock) records."""
    by_tile = collections.defaultdict(lambda: collections.defaultdict(list))
    for point, tile, clock in events:
        by_tile[tile][point].append(clock)
    out = collections.defaultdict(list)
    tiles = sorted(by_tile)
    for tile in tiles[1:-1]:
        t = by_tile[tile]
        if not t[15] or not t[24]:  # a one-key-tile or idle warpgroup: no main loop
            continue
        out["wait for the tile (10-11)"].append(t[11][0] - t[10][0])
        out["tile start to first K (11-13)"].append(t[13][0] - t[11][0])
        out["first QK^T + softmax (13-14)"].append(t[14][0] - t[13][0])
        for step in range(len(t[15])):
            nxt = t[15][step + 1] if step + 1 < len(t[15]) else t[21][0]
            out["loop: wait for the turn (15-16)"].append(t[16][step] - t[15][step])
            out["loop: K/V waits + issue (16-17)"].append(t[17][step] - t[16][step])
            out["loop: wait for S (17-18)"].append(t[18][step] - t[17][step])
            out["loop: softmax (18-19)"].append(t[19][step] - t[18][step])
            out["loop: wait for P V (19-20)"].append(t[20][step] - t[19][step])
            out["loop: rescale + pack (20-15')"].append(nxt - t[20][step])
        out["last P V incl. turn (21-23)"].append(t[23][0] - t[21][0])
        out["epilogue (23-24)"].append(t[24][0] - t[23][0])
        out["  1/l and LSE (23-25)"].append(t[25][0] - t[23][0])
        out["  O into shared memory (25-26)"].append(t[26][0] - t[25][0])
        out["  O to global memory (26-24)"].append(t[24][0] - t[26][0])
        if by_tile.get(tile + 1) and by_tile[tile + 1][10]:
            out["work tile, start to start"].append(by_tile[tile + 1][10][0] - t[10][0])
    return out


def run(shape: tuple, causal: bool, scratch: str) -> None:
    import torch

    import sglang_flashcore as fc

    b, s, hq, hkv, d = shape
    q = torch.randn(b, s, hq, d, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(b, s, hkv, d, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(b, s, hkv, d, device="cuda", dtype=torch.bfloat16)
    for _ in range(20):
        fc.attention(q, k, v, causal=causal)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(50):
        fc.attention(q, k, v, causal=causal)
    end.record()
    torch.cuda.synchronize()
    path = os.path.join(scratch, "trace.bin")
    os.environ["FC_TRACE"] = path
    fc.attention(q, k, v, causal=causal)
    torch.cuda.synchronize()
    del os.environ["FC_TRACE"]
    per_cta = read_trace(path)
    print(f"\nB{b} S{s} Hq{hq} Hkv{hkv} D{d} causal={int(causal)}: {start.elapsed_time(end) / 50 * 1000:.1f} us "
          "a call (traced)")
    merged = collections.defaultdict(list)
    for roles in per_cta:
        for consumer in roles[1:]:
            for name, values in phases(consumer).items():
                merged[name] += values
    print(f"{'phase (trace points)':34s} {'tiles':>6s} {'mean':>7s} {'p50':>7s} {'p90':>7s}  cycles")
    for name, values in merged.items():
        values.sort()
        print(f"{name:34s} {len(values):6d} {sum(values) / len(values):7.0f} {values[len(values) // 2]:7d} "
              f"{values[int(len(values) * 0.9)]:7d}")
    first = min((e[0][2] for e in per_cta[0] if e), default=0)
    print("CTA 0, work tiles 6 and 7, point@cycle per role (0: producer):")
    for role, events in enumerate(per_cta[0]):
        print(f"  {role}:", " ".join(f"{p}@{c - first}" for p, w, c in events if 6 <= w <= 7))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", action="append", help="B,S,Hq,Hkv,D (repeatable)")
    parser.add_argument("--causal", action="store_true")
    args = parser.parse_args()
    shapes = [tuple(int(x) for x in s.split(",")) for s in args.shape] if args.shape else \
        [(32, 512, 16, 16, 128), (32, 512, 32, 32, 64)]
    scratch = trace_util.traced_tree("dense_fwd.cu", instrument, "fc_trace_")
    for shape in shapes:
        run(shape, args.causal, scratch)


if __name__ == "__main__":
    main()
