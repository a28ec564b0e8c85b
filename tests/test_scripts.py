"""The benchmark scripts' CPU-side parts: their page tables, tables and result summaries."""

import json
import os
import subprocess
import sys

import torch

HERE = os.path.dirname(__file__)
SCRIPTS = os.path.join(HERE, "..", "scripts")
sys.path.insert(0, SCRIPTS)

import sglang_flashcore as fc  # noqa: E402
from bench_decode import shared_page_table  # noqa: E402
from bench_util import print_table  # noqa: E402


def test_shared_page_table_shares_exactly_the_prefix_pages():
    r2t, num_slots = shared_page_table(batch=4, context=1024, page=64, shared_frac=0.5, device="cpu")
    assert r2t.shape == (4, 1024) and int(r2t.max()) < num_slots
    assert torch.equal(r2t[:, :512], r2t[:1, :512].expand(4, 512))  # one shared prefix
    assert len(set(r2t[:, 512:].reshape(-1).tolist())) == 4 * 512  # private suffixes
    layout = fc.from_sglang(r2t, torch.arange(4), torch.full((4,), 1024), 64, num_slots=num_slots)
    plan = layout.plan(256)
    assert plan.unique_tokens == 512 + 4 * 512 and plan.total_tokens == 4 * 1024
    assert plan.max_readers == 4


def test_print_table_aligns_columns(capsys):
    print_table([{"a": 1, "b": 2.5}, {"a": 10, "b": None}], ["a", "b"], title="t")
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "t" and len({len(line) for line in out[1:]}) == 1


def test_summary_is_generated_from_the_json(tmp_path):
    info = {"device": "GPU X", "torch": "2.x", "cuda": "13", "python": "3.12", "command": "python3 scripts/bench_dense.py"}
    row = {"dtype": "bfloat16", "S": 2048, "B": 8, "Hq": 16, "Hkv": 16, "D": 128, "causal": 0,
           "ours_TF": 400.0, "cudnn_TF": 600.0, "ours_over_cudnn": 0.667, "fa2_TF": 330.0, "ours_over_fa2": 1.21}
    (tmp_path / "dense_grid.json").write_text(json.dumps({"info": info, "rows": [row]}))
    res = subprocess.run([sys.executable, os.path.join(SCRIPTS, "summarize_results.py"), str(tmp_path)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    text = (tmp_path / "README.md").read_text()
    assert "GPU X" in text and "| 2048 | 8 | 16 | 16 | 128 | 0 | 400.00 | 600.00 | 0.67 | 330.00 | 1.21 |" in text


def test_committed_results_name_their_device_and_command():
    folder = os.path.join(HERE, "..", "benchmarks", "results", "h100")
    for name in ("decode_seed.json", "dense_grid.json", "extend.json"):
        info = json.load(open(os.path.join(folder, name)))["info"]
        assert info["device"].startswith("NVIDIA H100") and info["command"].startswith("python3 scripts/")


def test_report_writes_the_table_the_json_and_the_plot(tmp_path, capsys):
    import types

    import pytest

    from bench_util import report

    args = types.SimpleNamespace(json=str(tmp_path / "r.json"), plot=None)
    rows = [{"a": 1.0, "b": 2.0}]
    report(args, {"device": "GPU X"}, rows, ["a", "b", "missing"], "title", ["p"], {"s": [1.0]}, "y")
    assert "title" in capsys.readouterr().out
    assert json.load(open(args.json)) == {"info": {"device": "GPU X"}, "rows": rows}
    pytest.importorskip("matplotlib", reason="matplotlib comes with the [bench] extra")
    args.plot = str(tmp_path / "r.png")
    report(args, {"device": "GPU X"}, rows, ["a", "b"], "title", ["p"], {"s": [1.0]}, "y")
    assert (tmp_path / "r.png").stat().st_size > 1000
