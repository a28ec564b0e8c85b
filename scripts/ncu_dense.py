"""One call of the dense kernel at the seed point (B16 H16 S2048 D64), for Nsight Compute:

    ncu --clock-control none --kernel-name regex:dense_fwd \\
        --metrics sm__throughput.avg.pct_of_peak_sustained_elapsed,gpu__time_duration.sum \\
        python scripts/ncu_dense.py
"""

import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import sglang_flashcore as fc  # noqa: E402

q, k, v = (torch.randn(16, 2048, 16, 64, device="cuda", dtype=torch.float16) for _ in range(3))
for causal in (False, True):
    fc.attention(q, k, v, causal=causal)
torch.cuda.synchronize()
