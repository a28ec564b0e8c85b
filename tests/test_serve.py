"""The README's main job, `python -m sglang_flashcore.serve`: its command line, testable without a GPU."""

import json
import os
import subprocess
import sys

import pytest

from sglang_flashcore.serve import build_command, config_dir, main


def test_default_serves_the_shipped_tiny_llama_with_dummy_weights():
    cmd, dry = build_command([])
    assert cmd[1:3] == ["-m", "sglang.launch_server"]
    assert cmd[cmd.index("--model-path") + 1] == config_dir("tiny_llama")
    assert cmd[cmd.index("--attention-backend") + 1] == "flashcore_sparse"
    assert "--load-format" in cmd and cmd[cmd.index("--load-format") + 1] == "dummy"
    assert "--skip-tokenizer-init" in cmd and not dry
    cfg = json.load(open(os.path.join(config_dir(), "config.json")))
    assert cfg["architectures"] == ["LlamaForCausalLM"]


def test_user_arguments_pass_through_and_a_real_model_gets_no_dummy_defaults():
    cmd, _ = build_command(["--model-path", "/models/x", "--port", "30001", "--tp", "1"])
    assert cmd[cmd.index("--model-path") + 1] == "/models/x"
    assert "--load-format" not in cmd and "--skip-tokenizer-init" not in cmd
    assert cmd[-4:] == ["--port", "30001", "--tp", "1"]
    cmd, _ = build_command(["--shipped-config", "llama3_8b", "--load-format", "dummy"])
    assert cmd.count("--load-format") == 1
    cfg = json.load(open(os.path.join(config_dir("llama3_8b"), "config.json")))
    assert (cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]) == (32, 32, 8, 128)


def test_attention_backend_is_ours_only():
    cmd, _ = build_command(["--attention-backend", "flashcore_sparse"])
    assert cmd.count("--attention-backend") == 1
    cmd, _ = build_command(["--decode-attention-backend=flashcore_sparse"])
    assert "--decode-attention-backend=flashcore_sparse" in cmd


@pytest.mark.parametrize("argv,message", [
    (["--attention-backend", "triton"], "--attention-backend: this wrapper always serves flashcore_sparse; got 'triton'"),
    (["--attention-backend", "flashcore_sparse", "--attention-backend=triton"], "got 'triton'"),
    (["--decode-attention-backend", "triton"], "--decode-attention-backend: this wrapper always serves"),
    (["--prefill-attention-backend=fa3"], "--prefill-attention-backend: this wrapper always serves"),
    (["--model-path", "a", "--shipped-config", "tiny_llama"], "give one of them"),
    (["--shipped-config", "nope"], "--shipped-config: no shipped model config named 'nope'"),
    (["--model-path="], "--model-path: expected a model folder or hub id"),
])
def test_bad_arguments_are_one_line_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_command(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and err[-1].startswith("python -m sglang_flashcore.serve: error:")


def test_sglang_config_file_passes_through():
    cmd, _ = build_command(["--config", "server.yaml", "--port", "1"])
    assert cmd[-4:] == ["--config", "server.yaml", "--port", "1"]
    assert cmd[cmd.index("--model-path") + 1] == config_dir("tiny_llama")


def test_dry_run_prints_the_command(capsys):
    assert main(["--dry-run", "--port", "1234"]) == 0
    out = capsys.readouterr().out
    assert "sglang.launch_server" in out and "--port 1234" in out


@pytest.mark.skipif(sys.platform != "linux", reason="linux only")
def test_without_a_gpu_it_says_why_and_exits_2():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    res = subprocess.run([sys.executable, "-m", "sglang_flashcore.serve"], capture_output=True, text=True)
    assert res.returncode == 2 and "needs a CUDA GPU" in res.stderr


def test_sglang_accepts_the_command_line():
    if os.environ.get("FLASHCORE_REQUIRE_SGLANG") != "1":
        pytest.importorskip("sglang")
    import argparse

    from sglang.srt.server_args import ServerArgs

    from sglang_flashcore.plugin import register

    register()
    cmd, _ = build_command(["--port", "30001", "--max-running-requests", "8"])
    parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(parser)
    args = parser.parse_args(cmd[3:])
    assert args.attention_backend == "flashcore_sparse" and args.load_format == "dummy"
    assert args.skip_tokenizer_init and args.port == 30001
