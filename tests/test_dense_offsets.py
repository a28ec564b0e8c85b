"""The offsets a fixed-length [B, S, H, D] dense call hands the varlen kernel, on CPU: kept per
(batch, length, device) so that a call queues no GPU work of its own before the kernel, and right
for the kernel (replaced here by the float32 reference)."""

import types

import torch

from sglang_flashcore import kernels, reference


def test_offsets_are_kept_per_shape():
    cpu = torch.device("cpu")
    first = kernels._fixed_offsets(3, 5, cpu)
    assert first.dtype == torch.int32 and first.tolist() == [0, 5, 10, 15]
    assert kernels._fixed_offsets(3, 5, cpu) is first
    assert kernels._fixed_offsets(3, 6, cpu).tolist() == [0, 6, 12, 18]
    assert kernels._fixed_offsets(2, 0, cpu).tolist() == [0, 0, 0]


def test_fixed_length_call_matches_reference(monkeypatch):
    seen = []

    def attention_fwd(q, k, v, cu_q, cu_k, max_q, causal, scale, window_left, softcap):
        seen.append((cu_q, cu_k))
        return reference.attention_ref(q, k, v, causal=causal, softmax_scale=scale, cu_seqlens_q=cu_q,
                                       cu_seqlens_k=cu_k)

    monkeypatch.setattr(kernels, "extension", lambda: types.SimpleNamespace(attention_fwd=attention_fwd))
    g = torch.Generator().manual_seed(3)
    q = torch.randn(3, 7, 4, 64, generator=g).half()
    k, v = (torch.randn(3, 9, 2, 64, generator=g).half() for _ in range(2))
    for _ in range(2):  # the second call takes the kept offsets
        out, lse = kernels.attention_cuda(q, k, v, None, None, 7, 9, True, 0.125)
        want, want_lse = reference.attention_ref(q, k, v, causal=True, softmax_scale=0.125)
        assert out.shape == q.shape and lse.shape == (3, 7, 4)
        torch.testing.assert_close(out.float(), want.float())
        torch.testing.assert_close(lse, want_lse)
    assert [c.tolist() for c in seen[0]] == [[0, 7, 14, 21], [0, 9, 18, 27]]
    assert seen[1][0] is seen[0][0]
