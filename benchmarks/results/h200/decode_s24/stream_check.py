"""The streamed narrow kernel (not kept) against the reference and the ring kernel, on the
no-sharing cases of tests/test_gpu_decode_plan.py, plus four of its own; two runs must be bit-equal.

Run from the repository root with one of this folder's patches applied, on a GPU:
    STAGES=5 python3 benchmarks/results/h200/decode_s24/stream_check.py
STAGES is the FLASHCORE_DECODE_STREAM value that selects the streamed kernel: the ring depth
(4, 5 or 6) with stream_not_kept.patch, the consumer groups (2 or 3) with
stream_groups_not_kept.patch. A value the patch does not know runs the ring kernel, and the check
then compares it with itself.
"""
import os, sys, torch
sys.path.insert(0, "tests")
import test_gpu_decode_plan as T
STREAM = os.environ["STAGES"]  # no default: the check must name the kernel it checks
os.environ["FLASHCORE_DECODE_STREAM"] = STREAM
n = bad = 0
cases = [T._random_case(i) for i in range(320)]
cases += [("none", 64, 32, 8, 128, torch.bfloat16, [8192] * 16, 1024), ("none", 16, 32, 8, 128, torch.float16, [131072, 40000], 2675),
          ("none", 128, 32, 32, 128, torch.bfloat16, [20000, 9000], 512), ("none", 1, 8, 8, 64, torch.float16, [0, 1, 0, 65, 63, 64], 64)]
for i, (pattern, page, hq, hkv, d, dtype, lengths, chunk) in enumerate(cases):
    if pattern != "none" or hq // hkv > 8:
        continue
    pt, q, k, v = T._inputs(pattern, page, hq, hkv, d, dtype, lengths, seed=i)
    planner = T._planned(pt, q, k, chunk)
    try:
        out, lse = planner.run(q, k, v, 0.1, page)
        T._check(out, lse, q, k, v, pt, page, dtype)
        o2, l2 = planner.run(q, k, v, 0.1, page)
        assert torch.equal(out, o2) and torch.equal(lse, l2), "not deterministic"
        os.environ["FLASHCORE_DECODE_STREAM"] = "0"
        o3, l3 = planner.run(q, k, v, 0.1, page)
        os.environ["FLASHCORE_DECODE_STREAM"] = STREAM
        torch.testing.assert_close(out.float(), o3.float(), **T.TOL[dtype])
    except Exception as e:
        bad += 1
        print("FAIL", i, pattern, page, hq, hkv, d, dtype, lengths[:6], chunk, repr(e)[:300], flush=True)
    n += 1
torch.cuda.synchronize()
print(f"stream check: {n} cases, {bad} failed", flush=True)
