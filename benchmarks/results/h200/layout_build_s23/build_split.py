import sys, torch
sys.path.insert(0, 'scripts')
from bench_plan_build import serving_page_table
from bench_decode import shared_page_table
from bench_util import wall_ms
import sglang_flashcore as fc
cases = []
for b in (8, 128):
    r2t, seq, ns = serving_page_table(b, seed=b, device="cuda")
    cases.append((f"serving B{b} page1", r2t, seq, ns, 1))
for b, ctx, frac in ((8, 131072, 0.7), (32, 8192, 0.3)):
    r2t, ns = shared_page_table(b, ctx, 128, frac, "cuda")
    cases.append((f"seed B{b}x{ctx} page128 shared{frac}", r2t, torch.full((b,), ctx, device="cuda", dtype=torch.int32), ns, 128))
for name, r2t, seq, ns, page in cases:
    idx = torch.arange(seq.shape[0], device="cuda")
    total = int(seq.sum())
    f1 = lambda: fc.from_sglang(r2t, idx, seq, page, num_slots=ns, validate=False, total_tokens=total)
    L = f1()
    chunk = fc.auto_chunk_tokens(L, 8)
    f2 = lambda: fc.plan_sharing(L, chunk)
    print(f"{name}: runs {L.nnz} chunk {chunk}: from_sglang {wall_ms(f1, 30):.3f} ms, plan_sharing {wall_ms(f2, 30):.3f} ms", flush=True)
    if page == 1 and seq.shape[0] == 8 or page == 128 and seq.shape[0] == 32:
        for _ in range(3): f1(); f2()
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]) as prof:
            f1(); f2(); torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=22, max_name_column_width=60))
        kern = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        print("cuda events", len(kern), "sum us", sum(e.device_time for e in kern))
