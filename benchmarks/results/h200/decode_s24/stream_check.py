"""EXPERIMENT (untracked): the streamed narrow kernel against the reference on no-sharing cases."""
import os, sys, random, torch
sys.path.insert(0, "tests")
import test_gpu_decode_plan as T
os.environ["FLASHCORE_DECODE_STREAM"] = os.environ.get("STAGES", "6")
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
        os.environ["FLASHCORE_DECODE_STREAM"] = os.environ.get("STAGES", "6")
        torch.testing.assert_close(out.float(), o3.float(), **T.TOL[dtype])
    except Exception as e:
        bad += 1
        print("FAIL", i, pattern, page, hq, hkv, d, dtype, lengths[:6], chunk, repr(e)[:300], flush=True)
    n += 1
torch.cuda.synchronize()
print(f"stream check: {n} cases, {bad} failed", flush=True)
