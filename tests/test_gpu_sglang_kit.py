"""SGLang's attention-backend kit on the GPU: every dense case on ``device="cuda"`` in fp16 and
bf16 (our CUDA kernels behind the backend), and the kit's CUDA-graph decode runner mode, which
captures a real CUDA graph of our decode and replays it with a padded batch; and our own cases
(shared prefixes, pages 1/16/64, long prefixes, a mixed batch of a chunk and decodes) on CUDA
against SGLang's torch_native backend over the same pools."""

import os

import pytest
import torch

if os.environ.get("FLASHCORE_REQUIRE_SGLANG") != "1":
    pytest.importorskip("sglang", reason="SGLang is not installed (pip install -e .[sglang])")

from sglang.test.kits.attention_unittest.attention_methods import dense_attention as kit  # noqa: E402
from sglang.test.kits.attention_unittest.runner_modes import cuda_graph_decode_runner as cg_runner  # noqa: E402

from sglang_flashcore import plugin  # noqa: E402

from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS  # noqa: E402

from test_sglang_backend import LOC_LAYOUTS, OWN_CASES, SWA_CASES, _assert_close, _NoSkip, _share_prefix  # noqa: E402

pytestmark = pytest.mark.gpu

plugin.register()
NAME = plugin.BACKEND_NAME
CASES = kit.make_dense_cases(NAME)
DECODE_CASES = [c for c in CASES if c.forward_mode.is_decode()]
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
# the kernels' compiled head dims and one they serve padded (the kit's default, 16, is below them)
HEAD_DIMS = (64, 96, 128, 256)


@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("dtype", list(DTYPES), ids=str)
@pytest.mark.parametrize("loc_layout", LOC_LAYOUTS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_kit_dense_case_cuda(case, loc_layout, dtype, head_dim):
    with torch.no_grad():
        kit.run_dense_attention_case(
            _NoSkip(), case, head_dim=head_dim, hidden_size=2 * head_dim, max_context_len=256,
            dtype=DTYPES[dtype], device="cuda", loc_layout=loc_layout,
        )


@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("dtype", list(DTYPES), ids=str)
@pytest.mark.parametrize("case", DECODE_CASES, ids=lambda c: c.name)
def test_kit_cuda_graph_decode_runner(case, dtype, head_dim):
    capture_bs = max(cg_runner.DENSE_CUDA_GRAPH_CAPTURE_BATCH_SIZE, case.batch_size)
    cg_runner.run_dense_cuda_graph_decode_case(
        _NoSkip(), case, head_dim=head_dim, hidden_size=2 * head_dim, max_context_len=256,
        dtype=DTYPES[dtype], device="cuda", cuda_graph_capture_batch_size=capture_bs,
    )


@pytest.mark.parametrize("dtype", list(DTYPES), ids=str)
@pytest.mark.parametrize("case,shared", OWN_CASES + SWA_CASES, ids=[c.name for c, _ in OWN_CASES + SWA_CASES])
def test_own_cases_cuda_match_torch_native(case, shared, dtype):
    """Our cases, sliding windows among them (the dense kernel's window masks, decode's window tables)."""
    with torch.no_grad():
        fixture = kit.build_dense_attention_fixture(
            _NoSkip(), case, head_dim=128, hidden_size=256, max_context_len=2304, dtype=DTYPES[dtype],
            device="cuda", loc_layout="shuffled_pages")
        if shared:
            _share_prefix(fixture, shared)
        ours = kit.run_dense_fixture_eager(fixture)
        native = ATTENTION_BACKENDS["torch_native"](fixture.runner)
        theirs = kit.run_dense_fixture_eager(kit.replace_backend(fixture, native))
    _assert_close(ours.float(), theirs.float(), DTYPES[dtype])
