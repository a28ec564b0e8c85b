"""The benchmark scripts' CPU-side parts: their page tables, tables and result summaries."""

import json
import os
import subprocess
import sys

import pytest
import torch

HERE = os.path.dirname(__file__)
BENCHMARKS = os.path.join(HERE, "..", "benchmarks")
TOOLS = os.path.join(HERE, "..", "tools")
sys.path.insert(0, BENCHMARKS)
sys.path.insert(0, TOOLS)

import sglang_flashcore as fc  # noqa: E402
from bench_decode import shared_page_table  # noqa: E402
from bench_decode_grid import chunk_for, parse_chunks, pow2_chunk, wave_chunk  # noqa: E402
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


def test_serving_prompts_stay_inside_the_served_models_vocabulary(monkeypatch):
    """The tiny configs have 4096 token ids: Llama-3-range ids would stop their servers."""
    import bench_serving
    from bench_serving import LLAMA3_TOKEN_RANGE, build_workloads, check_prompts, parse_args, use_model_vocab

    monkeypatch.setattr(bench_serving, "_token_range", LLAMA3_TOKEN_RANGE)
    args = parse_args(["--config", "tiny_gemma3_swa", "--workloads", "shared,random", "--system-tokens", "300"])
    assert use_model_vocab(args) == (1000, 4096)
    ids = [i for w in build_workloads(args) for r in w.requests for i in r.input_ids] + \
        [i for prompt in check_prompts(0) for i in prompt]
    assert min(ids) >= 1000 and max(ids) < 4096
    assert use_model_vocab(parse_args(["--config", "llama3_8b"])) == LLAMA3_TOKEN_RANGE  # vocab 128256
    assert use_model_vocab(parse_args(["--model-path", "/nonexistent"])) == LLAMA3_TOKEN_RANGE  # no config: as before


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


def test_serving_check_prompts_share_no_prefix_with_the_measured_runs():
    from bench_serving import CHECK_SEED_OFFSET, build_workloads, check_prompts, parse_args

    args = parse_args(["--workloads", "shared,random,long", "--long-context", "2000"])
    check = {tuple(p[:64]) for p in check_prompts(args.seed + CHECK_SEED_OFFSET) if len(p) >= 64}
    measured = {tuple(r.input_ids[:64]) for w in build_workloads(args) for r in w.requests}
    assert check and not check & measured


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


def _bench_json(path, tf, cudnn_tf):
    row = {"dtype": "bfloat16", "B": 32, "S": 512, "Hq": 16, "Hkv": 16, "D": 128, "causal": 0,
           "ours_TF": tf, "cudnn_TF": cudnn_tf, "ours_over_cudnn": tf / cudnn_tf}
    info = {"device": "GPU X", "torch": "2.x", "cuda": "13", "python": "3.12", "command": "python3 benchmarks/bench_dense.py"}
    path.write_text(json.dumps({"info": info, "rows": [row]}))


def test_ab_compare_averages_the_runs(tmp_path):
    from ab_revision import _rows, compare, profile_for, summary

    profile = profile_for("benchmarks/bench_dense.py")
    for name, tf in (("t1", 400.0), ("t2", 420.0), ("b1", 400.0), ("b2", 400.0)):
        _bench_json(tmp_path / f"{name}.json", tf, 500.0)
    rows = compare(_rows([tmp_path / "t1.json", tmp_path / "t2.json"], profile.key),
                   _rows([tmp_path / "b1.json", tmp_path / "b2.json"], profile.key), profile)
    assert len(rows) == 1 and abs(rows[0]["this_over_base"] - 1.025) < 1e-9
    assert abs(rows[0]["this_ours_over_cudnn"] - 0.82) < 1e-9 and abs(rows[0]["base_ours_over_cudnn"] - 0.8) < 1e-9
    assert "faster on 1, slower on 0" in summary(rows)


def test_ab_compare_of_times_is_a_speed_ratio_per_point(tmp_path):
    """bench_decode reports milliseconds: this / base is base ms over this ms, matched per point."""
    from ab_revision import _rows, compare, profile_for

    profile = profile_for("bench_decode.py")
    point = dict(B=8, Hq=32, Hkv=8, ctx=131072, D=128, page=128)
    for name, ms in (("this", (1.0, 2.0)), ("base", (1.5, 1.0))):
        rows = [dict(point, shared=0.7, ours_ms=ms[0], speedup_vs_cudnn=3.0),
                dict(point, shared=0.0, ours_ms=ms[1], speedup_vs_cudnn=1.0, chunk=512)]
        if name == "base":
            rows.append(dict(point, shared=0.5, ours_ms=1.0))  # only on one side: left out
        (tmp_path / f"{name}.json").write_text(json.dumps({"info": {}, "rows": rows}))
    got = compare(_rows([tmp_path / "this.json"], profile.key), _rows([tmp_path / "base.json"], profile.key), profile)
    assert [(r["shared"], r["this_over_base"]) for r in got] == [(0.7, 1.5), (0.0, 0.5)]
    assert got[0]["this_ours_ms"] == 1.0 and got[0]["base_speedup_vs_cudnn"] == 3.0


def test_ab_profiles_cover_the_benchmarks_and_unknown_scripts_need_a_key():
    import pytest

    from ab_revision import PROFILES, SEEDS, main, profile_for

    assert set(PROFILES) == {os.path.basename(p) for p in os.listdir(BENCHMARKS)
                             if p.startswith("bench_") and p.endswith(".py")} - {"bench_util.py", "bench_serving.py"}
    assert {s for s, _ in SEEDS} == {"bench_dense.py", "bench_decode.py"}
    with pytest.raises(ValueError, match="--key"):
        profile_for("bench_other.py")
    with pytest.raises(SystemExit):
        main(["compare", "--script", "bench_other.py", "--this", "a.json", "--base", "b.json", "--key", "B"])


def test_ab_packs_a_revision_with_its_commit_and_its_benchmark_folder(tmp_path):
    import tarfile

    import pytest

    from ab_revision import ensure_pack, pack

    root = os.path.join(HERE, "..")
    if subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True).returncode:
        pytest.skip("not a git checkout")
    packed = tmp_path / "base.tgz"
    commit = pack("HEAD", packed)
    with tarfile.open(packed) as tgz:
        assert tgz.extractfile("AB_BASE").read().decode().startswith(commit)
        names = set(tgz.getnames())
    assert {"cuda/dense_fwd.cu", "benchmarks/bench_dense.py", "benchmarks/bench_decode.py", "benchmarks/bench_util.py",
            "sglang_flashcore/api.py"} <= names
    ensure_pack(packed, commit[:7])  # holds it already: kept
    assert tarfile.open(packed).extractfile("AB_BASE").read().decode().startswith(commit)
    # a revision from before the benchmarks moved: its scripts/ folder
    if subprocess.run(["git", "cat-file", "-e", "94de7b1:scripts/bench_util.py"], cwd=root,
                      capture_output=True).returncode == 0:
        old = tmp_path / "old.tgz"
        ensure_pack(old, "94de7b1")
        with tarfile.open(old) as tgz:
            names = set(tgz.getnames())
        assert {"scripts/bench_dense.py", "scripts/bench_decode.py", "scripts/bench_util.py",
                "sglang_flashcore/decode_plan.py"} <= names
        assert not any(n.startswith("benchmarks/") for n in names)


# a stand-in for bench_dense.py: it reports which tree's package it imported, and its JIT cache
FAKE_BENCH = """import json, os, sys
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import sglang_flashcore as fc
tf = {"this": 400.0, "base": 300.0}[fc.TREE]
row = dict(dtype="bf16", B=1, S=512, Hq=1, Hkv=1, D=64, causal=0, ours_TF=tf, ours_over_cudnn=tf / 500)
out = sys.argv[sys.argv.index("--json") + 1]
json.dump(dict(info=dict(device="X", cache=os.environ["FLASHCORE_CACHE"], argv=sys.argv[1:]), rows=[row]), open(out, "w"))
"""


def _write_tree(root, files):
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def _fake_pack(path, files):
    import io
    import tarfile

    with tarfile.open(path, "w:gz") as tgz:
        for rel, text in files.items():
            info = tarfile.TarInfo(rel)
            info.size = len(text.encode())
            tgz.addfile(info, io.BytesIO(text.encode()))


def test_ab_runs_each_tree_with_its_own_package_cache_and_script_path(tmp_path, monkeypatch):
    """This tree's benchmarks/bench_dense.py against the base's scripts/bench_dense.py (where it was
    before the move), alternating, each importing its own package with its own JIT cache."""
    from ab_revision import run

    monkeypatch.setenv("FLASHCORE_CACHE", str(tmp_path / "fc"))
    this_root = tmp_path / "this"
    _write_tree(this_root, {"sglang_flashcore/__init__.py": "TREE = 'this'\n", "benchmarks/bench_dense.py": FAKE_BENCH})
    packed = tmp_path / "base.tgz"
    _fake_pack(packed, {"sglang_flashcore/__init__.py": "TREE = 'base'\n", "scripts/bench_dense.py": FAKE_BENCH,
                        "AB_BASE": "abc123 the base\n"})
    rows = run(packed, 2, ["--shape", "1,512,1,1,64"], str(tmp_path / "ab.json"), this_root=this_root,
               script="bench_dense.py", log_dir=tmp_path / "logs")
    assert len(rows) == 1 and abs(rows[0]["this_over_base"] - 4 / 3) < 1e-9
    saved = json.loads((tmp_path / "ab.json").read_text())
    assert saved["info"]["base"] == "abc123 the base" and [len(saved["runs"][s]) for s in ("this", "base")] == [2, 2]
    this_info, base_info = saved["runs"]["this"][0]["info"], saved["runs"]["base"][0]["info"]
    assert this_info["cache"] == str(tmp_path / "fc") and base_info["cache"] != this_info["cache"]
    assert this_info["argv"][:2] == ["--shape", "1,512,1,1,64"]
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == [
        f"ab_bench_dense_{side}_{i}.txt" for side in ("base", "this") for i in (0, 1)]


def test_ab_seeds_write_one_json_per_benchmark_and_survive_a_failing_one(tmp_path, capsys):
    from ab_revision import seeds

    failing = "import sys\nsys.exit('no GPU')\n"
    this_root = tmp_path / "this"
    _write_tree(this_root, {"sglang_flashcore/__init__.py": "TREE = 'this'\n", "benchmarks/bench_dense.py": FAKE_BENCH,
                            "benchmarks/bench_decode.py": failing})
    packed = tmp_path / "base.tgz"
    _fake_pack(packed, {"sglang_flashcore/__init__.py": "TREE = 'base'\n", "scripts/bench_dense.py": FAKE_BENCH,
                        "scripts/bench_decode.py": failing, "AB_BASE": "abc123 the base\n"})
    out = tmp_path / "out"
    assert seeds(packed, 1, out, this_root=this_root) == 1
    assert json.loads((out / "ab_bench_dense.json").read_text())["rows"][0]["this_over_base"] > 1
    assert not (out / "ab_bench_decode.json").exists()
    text = capsys.readouterr().out
    assert "no GPU" in text and "faster on 1, slower on 0" in text


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
        with pytest.raises(ValueError, match="--batch"):
            parse_batch(bad)
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


def test_decode_grid_chunk_specs():
    assert parse_chunks("auto,pow2,512,w2") == ["auto", "pow2", "512", "w2"]
    for bad in ("w", "wx", "fast", "-1"):
        with pytest.raises(ValueError, match="--chunks"):
            parse_chunks(bad)
    cpu = torch.device("cpu")
    lengths = [32768] * 16
    assert chunk_for("auto", lengths, 8, 4, 396, 10**6, cpu) is None
    assert chunk_for("512", lengths, 8, 4, 396, 10**6, cpu) == 512
    assert chunk_for("w1", lengths, 8, 4, 396, 10**6, cpu) == wave_chunk(lengths, 8, 1, 396, 1)
    pow2 = pow2_chunk(lengths, 8, 10**6, cpu)
    assert chunk_for("pow2", lengths, 8, 4, 396, 10**6, cpu) == pow2 and pow2 & (pow2 - 1) == 0


def test_benchmarks_refuse_to_time_a_wrong_result():
    from bench_util import require_agreement

    a = torch.zeros(4, 8, dtype=torch.float16)
    assert require_agreement("same", a, a.clone()) == 0.0
    with pytest.raises(SystemExit, match="not timing a wrong result"):
        require_agreement("off by 0.1", a, a + 0.1)
    with pytest.raises(SystemExit, match="nan"):
        require_agreement("nan", a, a + float("nan"))


def test_verify_benchmark_shares_exactly_the_context_pages():
    """bench_verify's table: every request's first `shared` tokens on the same pages, the draft
    tokens on pages of their own."""
    for page, context, draft in ((1, 8192, 4), (64, 8192, 4), (64, 1000, 3)):
        shared = (context // page) * page
        length = context + draft
        r2t, _ = shared_page_table(3, length, page, (shared + 0.5) / length, "cpu")
        assert (r2t[:, :shared] == r2t[0, :shared]).all()
        tail = r2t[:, shared:]
        assert len(set(tail.reshape(-1).tolist())) == tail.numel()


def test_verify_benchmark_parses_and_needs_a_gpu():
    import subprocess
    import sys

    res = subprocess.run([sys.executable, os.path.join(BENCHMARKS, "bench_verify.py"), "--help"], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0 and "--draft" in res.stdout


# ------------------------------------------------------------ check_embeddings
def test_embedding_check_inputs_compare_and_server_flags():
    from check_embeddings import compare, inputs, parse_args

    batch = inputs(0, 5, 40)
    assert [len(x) for x in batch[:2]] == [1, 40] and all(1 <= len(x) <= 40 for x in batch)
    assert all(100 <= t < 4096 for x in batch for t in x)
    assert inputs(0, 5, 40) == batch
    same = compare([[1.0, 2.0], [0.0, 3.0]], [[2.0, 4.0], [0.0, 3.0]])
    assert abs(same["min_cosine"] - 1.0) < 1e-12 and same["max_abs_diff"] == 2.0
    opposite = compare([[1.0, 0.0]], [[-1.0, 0.0]])
    assert opposite["min_cosine"] == -1.0
    assert compare([[float("nan"), 1.0]], [[1.0, 1.0]])["min_cosine"] == -1.0  # a NaN never passes
    with pytest.raises(ValueError, match="embedding sizes differ"):
        compare([[1.0]], [[1.0, 2.0]])
    args = parse_args(["--server-arg=--chunked-prefill-size", "--server-arg=256"])
    assert args.server_arg == ["--is-embedding", "--chunked-prefill-size", "256"]
    assert args.config == "tiny_bert_embedding"


# ------------------------------------------------------------ serve_faults
def test_fault_scenarios_prompts_and_server_arguments():
    from serve_faults import (chunked_prompts, evict_prompts, load_workload, parse_args, retract_prompts,
                              scenario_server_args)

    long = chunked_prompts(0, length=4096, shared=3072)
    assert [len(p) for p in long] == [4096, 4096] and long[0][:3072] == long[1][:3072] and long[0] != long[1]
    ev = evict_prompts(0, systems=3, per_system=2, system_tokens=50)
    assert len(ev) == 6 and ev[0][:50] == ev[3][:50] and ev[0][:50] != ev[1][:50]  # interleaved systems
    assert len(retract_prompts(0, 5, 100)) == 5 and retract_prompts(0, 5, 100) == retract_prompts(0, 5, 100)
    wl = load_workload(0, requests=10, concurrency=4)
    assert len(wl.requests) == 10 and wl.concurrency == 4
    args = parse_args(["--retract-tokens", "1234"])
    assert scenario_server_args("retract", args) == ["--max-total-tokens", "1234"]
    assert "--page-size" in scenario_server_args("chunked", args, page=16)
    with pytest.raises(SystemExit):
        parse_args(["--scenarios", "retract,meltdown"])


def test_fault_judgement_counts_lost_requests_dead_servers_and_memory_growth():
    from serve_faults import judge

    good = {"healthy_at_end": True, "counts": {"finished": 3, "aborted": 3, "failed": 0},
            "runs": [{"failed": 0, "requests": 9, "gpu_mib": 1000}, {"failed": 0, "requests": 9, "gpu_mib": 1100}]}
    assert judge({"abort": {"a": good}}, ["a"], 256) == []
    bad = dict(good, healthy_at_end=False, counts={"finished": 1, "aborted": 3, "failed": 2},
               runs=[{"failed": 1, "requests": 9, "gpu_mib": 1000}, {"failed": 0, "requests": 9, "gpu_mib": 2000}])
    problems = judge({"load": {"a": bad}, "retract": {"b": {"error": "server exited with 1"}}}, ["a", "b"], 256)
    assert len(problems) == 5 and any("grew 1000 MiB" in p for p in problems) and any("exited" in p for p in problems)


def test_timed_series_keeps_the_baselines_some_row_timed():
    from bench_util import timed_series

    rows = [{"fa3_ms": 1.0}, {"fa3_ms": 2.0, "flashinfer_ms": 3.0}]
    got = timed_series(rows, (("fa3", "FA3"), ("flashinfer", "FlashInfer"), ("cudnn", "cuDNN")))
    assert got == {"FA3": [1.0, 2.0], "FlashInfer": [None, 3.0]}
