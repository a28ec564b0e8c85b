"""The benchmark scripts' CPU-side parts: their page tables, tables and result summaries."""

import json
import os
import subprocess
import sys

import torch

HERE = os.path.dirname(__file__)
SCRIPTS = os.path.join(HERE, "..", "benchmarks")
sys.path.insert(0, SCRIPTS)

import sglang_flashcore as fc  # noqa: E402
from bench_decode import shared_page_table  # noqa: E402
from bench_decode_grid import wave_chunk  # noqa: E402
from bench_util import print_table  # noqa: E402
from trace_per_sm import per_sm_task_us, summarize  # noqa: E402


def test_shared_page_table_shares_exactly_the_prefix_pages():
    r2t, num_slots = shared_page_table(batch=4, context=1024, page=64, shared_frac=0.5, device="cpu")
    assert r2t.shape == (4, 1024) and int(r2t.max()) < num_slots
    assert torch.equal(r2t[:, :512], r2t[:1, :512].expand(4, 512))  # one shared prefix
    assert len(set(r2t[:, 512:].reshape(-1).tolist())) == 4 * 512  # private suffixes
    layout = fc.from_sglang(r2t, torch.arange(4), torch.full((4,), 1024), 64, num_slots=num_slots)
    plan = layout.plan(256)
    assert plan.unique_tokens == 512 + 4 * 512 and plan.total_tokens == 4 * 1024
    assert plan.max_readers == 4


def test_ordered_page_table_gives_each_request_consecutive_slots():
    r2t, num_slots = shared_page_table(batch=3, context=200, page=16, shared_frac=0.0, device="cpu", shuffled=False)
    assert num_slots == 3 * 208  # 13 pages a request, the last one partly used
    for b in range(3):
        assert torch.equal(r2t[b], torch.arange(b * 208, b * 208 + 200, dtype=torch.int32))


def test_print_table_aligns_columns(capsys):
    print_table([{"a": 1, "b": 2.5}, {"a": 10, "b": None}], ["a", "b"], title="t")
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "t" and len({len(line) for line in out[1:]}) == 1


def test_interleaved_timing_alternates_rounds_and_takes_each_median(monkeypatch):
    """ours and its baselines are timed in alternating rounds, each reported as the median of all
    its own rounds' calls (a GPU whose clocks drift mid-point slows them alike)."""
    import bench_util

    order, clock = [], iter(range(1000))

    def fake_event_times(fn, calls, flush):
        order.append((fn.__name__, calls, flush))
        return [float(next(clock)) for _ in range(calls)]  # every call later than the one before

    monkeypatch.setattr(bench_util, "_event_times", fake_event_times)

    def ours():
        pass

    def cudnn():
        pass

    ms = bench_util.time_interleaved({"ours": ours, "cudnn": cudnn}, repeats=6, rounds=3, warmup=0, flush=False)
    assert order == [("ours", 2, False), ("cudnn", 2, False)] * 3
    # ours took calls 0,1 / 4,5 / 8,9 and cuDNN 2,3 / 6,7 / 10,11: neither got all the early ones
    assert ms == {"ours": 4.5, "cudnn": 6.5}
    order.clear()
    assert bench_util.time_ms(ours, repeats=5, warmup=0, flush=True) == 14.0  # calls 12..16 in one block
    assert order == [("ours", 5, True)]


def test_with_env_sets_the_switch_only_during_the_call(monkeypatch):
    import bench_util

    monkeypatch.delenv("FLASHCORE_TEST_SWITCH", raising=False)
    seen = []
    call = bench_util.with_env(lambda: seen.append(os.environ.get("FLASHCORE_TEST_SWITCH")) or 7,
                               "FLASHCORE_TEST_SWITCH=off")
    assert call() == 7 and seen == ["off"]
    assert "FLASHCORE_TEST_SWITCH" not in os.environ
    monkeypatch.setenv("FLASHCORE_TEST_SWITCH", "on")
    call()
    assert seen == ["off", "off"] and os.environ["FLASHCORE_TEST_SWITCH"] == "on"


def test_summary_is_generated_from_the_json(tmp_path):
    info = {"device": "GPU X", "torch": "2.x", "cuda": "13", "python": "3.12", "command": "python3 benchmarks/bench_dense.py"}
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


# ------------------------------------------------------------ bench_serving
def test_serving_workloads_share_exactly_the_system_prompt():
    from bench_serving import check_prompts, long_context_workload, random_workload, shared_prompt_workload

    w = shared_prompt_workload(seed=3, system_tokens=500, num_requests=6, concurrency=4)
    heads = {tuple(r.input_ids[:500]) for r in w.requests}
    assert len(heads) == 1 and all(532 <= len(r.input_ids) <= 756 for r in w.requests)
    assert shared_prompt_workload(3, 500, 6).requests[2].input_ids == w.requests[2].input_ids  # seeded
    r = random_workload(seed=1, num_requests=20)
    assert len({tuple(x.input_ids[:16]) for x in r.requests}) == 20
    assert all(128 <= len(x.input_ids) <= 4096 and 64 <= x.max_new_tokens <= 256 for x in r.requests)
    lw = long_context_workload(seed=2, context_tokens=1000, num_requests=3)
    assert lw.concurrency == 3 and [len(x.input_ids) for x in lw.requests] == [1000] * 3
    prompts = check_prompts(seed=0, system_tokens=100, shared=4, unshared=3)
    assert len(prompts) == 7 and len({tuple(p[:100]) for p in prompts[:4]}) == 1
    assert [len(p) for p in prompts[4:]] == [1, 2, 7]


def test_serving_warmup_is_small_and_shares_no_prompt_with_the_measured_runs():
    from bench_serving import build_workloads, parse_args, warmup_workloads

    args = parse_args(["--workloads", "shared,long", "--system-tokens", "300", "--long-context", "20000",
                       "--warmup-requests", "3"])
    warm, measured = warmup_workloads(args), build_workloads(args)
    assert [w.name for w in warm] == ["shared", "long"]
    assert [len(w.requests) for w in warm] == [3, 1]
    assert len(warm[1].requests[0].input_ids) == 8192  # long contexts warm up at 8K, not 20K
    firsts = {tuple(r.input_ids[:64]) for w in measured for r in w.requests}
    assert not firsts & {tuple(r.input_ids[:64]) for w in warm for r in w.requests}
    args.warmup_requests = 0
    assert warmup_workloads(args) == []


def test_serving_summary_and_greedy_comparison():
    from bench_serving import RequestResult, compare_greedy, first_divergence, summarize

    res = [RequestResult(True, 3, 0.5, [0.01, 0.02]), RequestResult(True, 2, 0.3, [0.03]),
           RequestResult(False, error="boom")]
    s = summarize(res, wall_s=2.0)
    assert s["output_tokens"] == 5 and s["failed"] == 1 and s["out_tok_per_s"] == 2.5
    assert abs(s["itl_mean_ms"] - 20.0) < 1e-9 and s["itl_p50_ms"] == 20.0 and abs(s["ttft_mean_ms"] - 400) < 1e-9
    assert first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert first_divergence([1, 2, 3], [1, 5, 3]) == 1 and first_divergence([1, 2], [1, 2, 3]) == 2
    ref = {"outputs": [{"prompt_len": 4, "ids": [1, 2], "top2": [[-0.1, -3.0], [-0.5, -0.51]]},
                       {"prompt_len": 9, "ids": [7], "top2": [[-1.0, -2.0]]}]}
    other = {"outputs": [{"prompt_len": 4, "ids": [1, 9], "top2": []}, {"prompt_len": 9, "ids": [7], "top2": []}]}
    c = compare_greedy(ref, other)
    assert c["equal"] == 1 and c["rows"][0]["diverges_at"] == 1 and abs(c["rows"][0]["ref_top2_gap"] - 0.01) < 1e-9


def test_serving_client_reads_sglang_streams():
    """The streaming client against an in-process server that speaks SGLang's /generate protocol."""
    import asyncio

    import pytest

    web = pytest.importorskip("aiohttp.web")
    from bench_serving import Request, Workload, run_workload

    async def generate(request):
        body = await request.json()
        n = body["sampling_params"]["max_new_tokens"]
        resp = web.StreamResponse()
        await resp.prepare(request)
        for i in range(1, n + 1):
            chunk = {"output_ids": [i], "meta_info": {"completion_tokens": i}}
            await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            await asyncio.sleep(0.001)
        await resp.write(b"data: [DONE]\n\n")
        return resp

    async def main():
        app = web.Application()
        app.router.add_post("/generate", generate)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        try:
            w = Workload("t", [Request([1, 2, 3], 5), Request([4], 3)], concurrency=2)
            return await run_workload(f"http://127.0.0.1:{port}", w)
        finally:
            await runner.cleanup()

    s = asyncio.run(main())
    assert s["failed"] == 0 and s["output_tokens"] == 8 and s["itl_mean_ms"] > 0 and s["ttft_mean_ms"] > 0


def test_box_packer_unpacks_wheels_like_pip_target_and_drops_unused_files(tmp_path):
    import zipfile

    from pack_box_site import unpack

    wheel = tmp_path / "demo-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("demo/__init__.py", "X = 1\n")
        z.writestr("demo/big_ops.abi3.so", b"\0" * 10)
        z.writestr("demo/__pycache__/x.pyc", b"")
        z.writestr("demo-1.0.data/purelib/demo_extra.py", "Y = 2\n")
        z.writestr("demo-1.0.data/scripts/tool", "#!/bin/sh\n")
        z.writestr("demo-1.0.dist-info/METADATA", "Name: demo\n")
    kept, dropped = unpack([wheel], tmp_path / "site", drop=["demo/big_ops*", "*/__pycache__/*"])
    site = tmp_path / "site"
    assert (site / "demo" / "__init__.py").read_text() == "X = 1\n"
    assert (site / "demo_extra.py").exists() and not (site / "tool").exists()
    assert not (site / "demo" / "big_ops.abi3.so").exists() and not (site / "demo" / "__pycache__").exists()
    assert (site / "demo-1.0.dist-info" / "METADATA").exists()
    assert (kept, dropped) == (3, 2)


def test_serving_page_table_has_prompt_runs_then_interleaved_decode_slots():
    from bench_plan_build import serving_page_table

    r2t, seq_lens, num_slots = serving_page_table(batch=3, seed=0, device="cpu", prompt=(5, 9), decoded=(2, 4))
    slots = torch.cat([r2t[r, : int(seq_lens[r])] for r in range(3)])
    assert sorted(slots.tolist()) == list(range(num_slots))  # every slot used once
    prompts = []
    for r in range(3):
        row = r2t[r, : int(seq_lens[r])]
        prompts.append(int((row[1:] == row[:-1] + 1).long().cumprod(0).sum()) + 1)  # contiguous prompt run
    assert all(5 <= p <= 9 for p in prompts)
    # decode step 0 gives the three requests adjacent slots right after all prompts
    assert [int(r2t[r, prompts[r]]) for r in range(3)] == [sum(prompts) + r for r in range(3)]


def test_trace_dense_finds_every_insertion_point_and_reads_phases():
    """scripts/trace_dense.py patches a copy of the dense kernel at exact source lines: they must
    all still be there, and its phase arithmetic must read a synthetic consumer's records."""
    import trace_dense

    with open(os.path.join(HERE, "..", "cuda", "dense_fwd.cu")) as f:
        traced = trace_dense.instrument(f.read())
    for point in (10, 13, 17, 20, 23, 24, 25, 26):
        assert f"TR({point});" in traced
    assert "trace_rec(0, tcnt, 3, w);" in traced and 'getenv("FC_TRACE")' in traced
    # three work tiles of two key tiles each: points at known clocks, 1000 cycles a tile
    events = []
    for tile in range(3):
        base = 1000 * tile
        for point, at in ((10, 0), (11, 10), (12, 20), (13, 30), (14, 100), (15, 110), (16, 120), (17, 130),
                          (18, 140), (19, 200), (20, 210), (21, 220), (22, 230), (23, 300), (25, 350),
                          (26, 400), (24, 500)):
            events.append((point, tile, base + at))
    got = trace_dense.phases(events)
    assert got["epilogue (23-24)"] == [200] and got["loop: softmax (18-19)"] == [60]
    assert got["work tile, start to start"] == [1000] and got["first QK^T + softmax (13-14)"] == [70]


def _bench_json(path, tf, cudnn_tf):
    row = {"dtype": "bfloat16", "B": 32, "S": 512, "Hq": 16, "Hkv": 16, "D": 128, "causal": 0,
           "ours_TF": tf, "cudnn_TF": cudnn_tf, "ours_over_cudnn": tf / cudnn_tf}
    info = {"device": "GPU X", "torch": "2.x", "cuda": "13", "python": "3.12", "command": "python3 benchmarks/bench_dense.py"}
    path.write_text(json.dumps({"info": info, "rows": [row]}))


def test_ab_dense_compare_averages_the_runs(tmp_path):
    from ab_dense import _rows, compare, summary

    for name, tf in (("t1", 400.0), ("t2", 420.0), ("b1", 400.0), ("b2", 400.0)):
        _bench_json(tmp_path / f"{name}.json", tf, 500.0)
    rows = compare(_rows([tmp_path / "t1.json", tmp_path / "t2.json"]), _rows([tmp_path / "b1.json", tmp_path / "b2.json"]))
    assert len(rows) == 1 and abs(rows[0]["this_over_base"] - 1.025) < 1e-9
    assert abs(rows[0]["this_over_cudnn"] - 0.82) < 1e-9 and abs(rows[0]["base_over_cudnn"] - 0.8) < 1e-9
    assert "faster on 1, slower on 0" in summary(rows)


def test_ab_dense_packs_a_revision_with_its_commit(tmp_path):
    import tarfile

    import pytest

    from ab_dense import pack

    if subprocess.run(["git", "rev-parse", "HEAD"], cwd=os.path.join(HERE, ".."), capture_output=True).returncode:
        pytest.skip("not a git checkout")
    packed = tmp_path / "base.tgz"
    commit = pack("HEAD", packed)
    with tarfile.open(packed) as tgz:
        assert tgz.extractfile("AB_BASE").read().decode().startswith(commit)
        names = tgz.getnames()
    assert {"cuda/dense_fwd.cu", "benchmarks/bench_dense.py", "benchmarks/bench_util.py", "sglang_flashcore/api.py"} <= set(names)


# a stand-in for bench_dense.py: it reports which tree's package it imported, and its JIT cache
FAKE_BENCH = """import json, os, sys
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import sglang_flashcore as fc
tf = {"this": 400.0, "base": 300.0}[fc.TREE]
row = dict(dtype="bf16", B=1, S=512, Hq=1, Hkv=1, D=64, causal=0, ours_TF=tf, ours_over_cudnn=tf / 500)
out = sys.argv[sys.argv.index("--json") + 1]
json.dump(dict(info=dict(device="X", cache=os.environ["FLASHCORE_CACHE"]), rows=[row]), open(out, "w"))
"""


def test_ab_dense_runs_each_tree_with_its_own_package_and_cache(tmp_path):
    import io
    import tarfile

    from ab_dense import run

    def tree_files(name):
        return {"sglang_flashcore/__init__.py": f"TREE = {name!r}\n", "scripts/fake_bench.py": FAKE_BENCH}

    this_root = tmp_path / "this"
    for rel, text in tree_files("this").items():
        (this_root / rel).parent.mkdir(parents=True, exist_ok=True)
        (this_root / rel).write_text(text)
    packed = tmp_path / "base.tgz"
    with tarfile.open(packed, "w:gz") as tgz:
        for rel, text in {**tree_files("base"), "AB_BASE": "abc123 the base\n"}.items():
            info = tarfile.TarInfo(rel)
            info.size = len(text.encode())
            tgz.addfile(info, io.BytesIO(text.encode()))
    rows = run(packed, 2, [], str(tmp_path / "ab.json"), this_root=this_root, script="scripts/fake_bench.py")
    assert len(rows) == 1 and abs(rows[0]["this_over_base"] - 4 / 3) < 1e-9
    saved = json.loads((tmp_path / "ab.json").read_text())
    assert saved["info"]["base"] == "abc123 the base" and [len(saved["runs"][s]) for s in ("this", "base")] == [2, 2]
    assert saved["runs"]["this"][0]["info"]["cache"] != saved["runs"]["base"][0]["info"]["cache"]


def test_prefill_summary_reads_sglang_prefill_lines():
    from bench_serving import prefill_summary

    log = (
        "[2026-11-30 13:24:27] Prefill batch, #new-seq: 1, #new-token: 8192, #cached-token: 0, token usage: 0.01, "
        "#running-req: 0, #queue-req: 63, cuda graph: False, input throughput (token/s): 0.00\n"
        "[2026-11-30 13:24:28] Decode batch, #running-req: 1, #token: 8200, token usage: 0.01\n"
        "[2026-11-30 13:24:28] Prefill batch [7], #new-seq: 63, #new-token: 9450, #cached-token: 516096, "
        "#running-req: 1, #queue-req: 0, cuda graph: False, input throughput (token/s): 1000.00\n"
    )
    assert prefill_summary(log) == {"batches": 2, "new_seqs": 64, "new_tokens": 17642, "cached_tokens": 516096,
                                    "new_tokens_per_batch": 8821.0}
    assert prefill_summary("[..] Decode batch, #running-req: 1\n") is None


def test_ragged_batches_parse_and_count_visible_pairs():
    from bench_ragged import parse_batch, visible_pairs

    assert parse_batch("1x8192+2x200:4096") == [(8192, 0), (200, 4096), (200, 4096)]
    assert parse_batch("0x5+1x1") == [(1, 0)]
    for bad in ("8192", "1x", "ax3", "1x-2"):
        try:
            parse_batch(bad)
        except ValueError as exc:
            assert "--batch" in str(exc)
        else:
            raise AssertionError(f"{bad!r} was accepted")
    # causal, bottom-right: every query sees the prefix and the new keys up to itself
    assert visible_pairs(3, 0, True) == 6
    assert visible_pairs(3, 10, True) == 3 * 10 + 6
    assert visible_pairs(3, 10, False) == 3 * 13
    # the count agrees with a bottom-right causal mask: query i of 5 sees keys j <= i + 12 - 5
    i, j = torch.arange(5)[:, None], torch.arange(12)[None, :]
    assert int((j <= i + 7).sum()) == visible_pairs(5, 7, True)


def test_serving_refuses_a_port_another_server_holds(tmp_path):
    import socket

    from bench_serving import Server, parse_args, port_in_use

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert port_in_use(port)
        server = Server("triton", parse_args(["--port", str(port)]), tmp_path)
        try:
            server.__enter__()
        except RuntimeError as exc:
            assert "already in use" in str(exc)
        else:
            raise AssertionError("a busy port was accepted")
    assert not port_in_use(port)


def test_trace_decode_finds_every_insertion_point_and_summarizes_a_timeline():
    """scripts/trace_decode.py patches a copy of the decode kernel at exact source lines: they must
    all still be there, and its timeline arithmetic must read a synthetic launch."""
    import trace_decode

    with open(os.path.join(HERE, "..", "cuda", "paged_decode.cu")) as f:
        traced = trace_decode.instrument(f.read())
    assert "trace_now()" in traced and 'getenv("FC_TRACE")' in traced and "atomicMax(&g_trace_n[2]" in traced
    # two SMs with two slots each; four tasks of 10 us in a full first wave, then one of 10 us alone
    us = 1000
    tasks = [(0, 10 * us, sm, t, 0) for t, sm in enumerate((0, 0, 1, 1))] + [(10 * us, 20 * us, 0, 4, 0)]
    s = trace_decode.summarize({"tasks": tasks, "dropped": 0, "merge": (21 * us, 23 * us)}, token_bytes=1e6)
    assert s["span_us"] == 20 and s["peak_running"] == 4 and s["max_resident_per_sm"] == 2 and s["sms_used"] == 2
    assert s["below_90pct_us"] == 10 and s["below_50pct_us"] == 10  # one task of four for the last 10 us
    assert s["gap_to_merge_us"] == 1 and s["merge_us"] == 2
    assert s["task_first_wave"]["n"] == 4 and s["task_tail"]["n"] == 1


def test_compile_check_flags_kernels_whose_wgmmas_ptxas_serialized():
    """compile_cuda.py fails a kernel whose HGMMAs each wait for the one before (a WARPGROUP.DEPBAR
    between every two), and passes chained ones, reading cuobjdump's SASS listing."""
    import compile_cuda

    def function(name, body):
        lines = [f"\t\tFunction : {name}"]
        lines += [f"        /*{i * 16:04x}*/                   {op} ;   /* 0x0 */" for i, op in enumerate(body)]
        return "\n".join(lines)

    chained = ["WARPGROUP.ARRIVE", "HGMMA.64x128x16.F32.BF16 R24, gdesc[UR8], RZ, !UPT",
               "HGMMA.64x128x16.F32.BF16 R24, gdesc[UR8], R24", "WARPGROUP.DEPBAR.LE gsb0, 0x0", "FMUL R1, R2, R3"]
    serialized = ["WARPGROUP.ARRIVE", "HGMMA.64x128x16.F32.BF16 R24, gdesc[UR8], RZ, !UPT",
                  "WARPGROUP.DEPBAR.LE gsb0, 0x0", "WARPGROUP.ARRIVE", "HGMMA.64x128x16.F32.BF16 R24, gdesc[UR8], R24",
                  "WARPGROUP.DEPBAR.LE gsb0, 0x0"]
    sass = "\n".join(["Fatbin elf code:", function("good_kernel", chained), function("bad_kernel", serialized),
                      function("no_wgmma", ["FADD R1, R2, R3", "EXIT"])])
    functions = compile_cuda.sass_functions(sass)
    assert list(functions) == ["good_kernel", "bad_kernel", "no_wgmma"]
    assert len(functions["bad_kernel"]) == len(serialized)
    assert compile_cuda.serialized_wgmma_kernels(sass) == ["bad_kernel"]


def test_wave_chunk_is_the_smallest_that_fits_the_waves():
    # 16 x 32K, 8 KV heads, 396 CTAs: K waves hold 396 K tasks = 49.5 K chunks a head
    assert wave_chunk([32768] * 16, 8, 1, 396, 1) == 10923  # 3 chunks a request: 384 tasks
    assert wave_chunk([32768] * 16, 8, 1, 396, 3) == 3641   # 9: 1152 <= 1188
    assert wave_chunk([100] * 2, 8, 2, 396, 1) == 9         # 12 chunks x 2 requests x 16 = 384; 8 tokens: 416


def test_per_sm_summary_groups_tasks_by_sm():
    result = {"B": 1, "Hkv": 8, "chunk": 64,
              "raw_marks": [[0, 1, 2, 10_000], [0, 1, 2, 20_000], [5, 6, 7, 30_005]],
              "raw_sm": [[0, 3], [0, 3], [5, 7]]}
    assert per_sm_task_us(result) == {3: [10.0, 20.0], 7: [30.0]}
    lines = summarize(result)
    assert lines[0] == "B1 Hkv8 chunk 64: 3 tasks on 2 SMs" and "3:15 7:30" in lines[-1]
