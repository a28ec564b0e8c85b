"""``python -m sglang_flashcore.doctor`` on this GPU-less machine, and its checks over made-up facts."""

import ast
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sglang_flashcore import doctor
from sglang_flashcore.doctor import Facts

ROOT = Path(__file__).resolve().parent.parent


def hopper(**changes) -> Facts:
    """A machine with everything the kernels need, not built yet."""
    facts = Facts(torch_version="2.11.0+cu130", torch_cuda="13.0", gpu_count=1, gpu_name="NVIDIA H100 80GB HBM3",
                  capability=(9, 0), driver="580.65.06", nvcc="/usr/local/cuda/bin/nvcc", nvcc_version="13.0",
                  ninja=True, sglang="0.5.17", supported_sglang=">=0.5.17, <=0.5.23",
                  plugin_target=doctor.PLUGIN_TARGET, source_hash="abc", build_dir="/c/abc",
                  prebuilt_reason="no prebuilt kernels (sglang_flashcore._kernels is not installed)")
    return dataclasses.replace(facts, **changes)


def line(lines, name):
    found = [i for i, text in enumerate(lines) if text.split()[1:2] == [name]]
    assert len(found) == 1, lines
    return lines[found[0]], lines[found[0] + 1]


def test_doctor_on_this_machine(tmp_path):
    env = dict(os.environ, FLASHCORE_CACHE=str(tmp_path), PYTHONPATH=str(ROOT))
    env.pop("FLASHCORE_IMPL", None)
    res = subprocess.run([sys.executable, "-m", "sglang_flashcore.doctor"], env=env, capture_output=True,
                         text=True, timeout=300)
    lines = res.stdout.splitlines()
    assert res.returncode == 1, res.stdout + res.stderr
    assert len(lines) <= 24  # one screen
    gpu, fix = line(lines, "GPU")
    assert gpu.split()[0] == "MISSING" and "no CUDA GPU" in gpu
    assert fix.split() == ["fix:", "the", "float32", "reference", "runs;", "FLASHCORE_IMPL=reference"]
    for name in ("driver", "torch", "nvcc", "ninja", "kernels", "SGLang", "plugin"):
        line(lines, name)
    assert "registered: flashcore_sparse = sglang_flashcore.plugin:register" in line(lines, "plugin")[0]
    assert "not built yet" in line(lines, "kernels")[0] and str(tmp_path) in line(lines, "kernels")[0]
    assert "float32 reference" in [t for t in lines if t.split()[:2] == ["runs", "here"]][0]
    assert lines[-1].startswith("not ready for the kernels")


def test_everything_there_is_ready():
    lines, status = doctor.report(hopper())
    assert status == 0, lines
    for name in ("GPU", "driver", "torch", "nvcc", "ninja", "kernels", "SGLang", "plugin"):
        assert line(lines, name)[0].split()[0] == "ok"
    assert not any("fix:" in text for text in lines)
    assert "the FlashCore kernels (sm_90a)" in lines[-2] and lines[-1] == "ready for the kernels"
    assert "not built yet for source abc" in line(lines, "kernels")[0]


@pytest.mark.parametrize("changes, name, fix", [
    (dict(capability=None, gpu_name=None, gpu_count=0), "GPU", "FLASHCORE_IMPL=reference"),
    (dict(capability=(8, 0), gpu_name="NVIDIA A100"), "GPU", "FLASHCORE_IMPL=reference"),
    (dict(driver=None), "driver", "install the NVIDIA driver"),
    (dict(torch_cuda=None, torch_version="2.11.0+cpu"), "torch", "CUDA build of torch"),
    (dict(nvcc=None, nvcc_version=None), "nvcc", "CUDA_HOME"),
    (dict(nvcc_version="12.8"), "nvcc", "CUDA 13.x toolkit"),
    (dict(ninja=False), "ninja", "pip install ninja"),
    (dict(sources_error="flashcore: cuda/binding.cpp is not installed"), "kernels", "reinstall"),
])
def test_a_missing_need_says_the_fix_and_fails(changes, name, fix):
    lines, status = doctor.report(hopper(**changes))
    assert status == 1
    found, fix_line = line(lines, name)
    assert found.split()[0] == "MISSING" and fix in fix_line and fix_line.split()[0] == "fix:"
    assert "not ready" in lines[-1]


def test_built_or_prebuilt_kernels_need_no_nvcc_or_ninja():
    for kernels in (dict(built="/c/abc/flashcore_kernels_abc.so"), dict(prebuilt=True, prebuilt_reason="")):
        lines, status = doctor.report(hopper(nvcc=None, nvcc_version=None, ninja=False, **kernels))
        assert status == 0, lines
        assert line(lines, "nvcc")[0].split()[0] == "warn"
        assert line(lines, "kernels")[0].split()[0] == "ok"
    lines, _ = doctor.report(hopper(built="/c/abc/flashcore_kernels_abc.so"))
    assert "built: /c/abc/flashcore_kernels_abc.so" in line(lines, "kernels")[0]
    assert "no prebuilt kernels" in line(lines, "kernels")[1]


def test_the_kernels_line_says_which_build_is_used():
    so = "/site/sglang_flashcore/_kernels.cpython-312-x86_64-linux-gnu.so"
    lines, _ = doctor.report(hopper(prebuilt=True, prebuilt_file=so, prebuilt_reason=""))
    found = line(lines, "kernels")[0]
    assert found.split()[0] == "ok" and f"prebuilt: {so} (for torch 2.11.0+cu130, CUDA 13.0; no JIT build)" in found
    other = "the prebuilt kernels are for torch 2.10.0+cu129 with CUDA 12.9; this is torch 2.11.0+cu130 with CUDA 13.0"
    lines, _ = doctor.report(hopper(prebuilt_reason=other))
    assert "the first use builds them" in line(lines, "kernels")[0] and other in line(lines, "kernels")[1]


@pytest.mark.parametrize("changes, text", [
    (dict(sglang=None), "not installed"),
    (dict(sglang="0.5.24"), "outside the tested"),
    (dict(sglang="0.5.9"), "outside the tested"),
    (dict(plugin_target=None), "is not installed"),
    (dict(plugin_target="old.module:register"), "points to old.module:register"),
])
def test_sglang_and_plugin_problems_warn_without_failing(changes, text):
    lines, status = doctor.report(hopper(**changes))
    assert status == 0
    name = "SGLang" if "sglang" in changes else "plugin"
    found, fix_line = line(lines, name)
    assert found.split()[0] == "warn" and text in found and fix_line.split()[0] == "fix:"


def test_what_runs_here():
    assert doctor.runs_here(hopper(impl="reference"), True).startswith("the float32 reference (FLASHCORE_IMPL")
    assert "KernelBuildError" in doctor.runs_here(hopper(capability=(8, 9)), False)
    assert "CPU tensors" in doctor.runs_here(hopper(capability=None), False)
    assert "nothing" in doctor.runs_here(hopper(impl="invalid (x)"), False)


def test_version_ranges():
    spec = ">=0.5.17, <=0.5.23"
    assert doctor._in_range("0.5.17", spec) and doctor._in_range("0.5.23", spec)
    assert doctor._in_range("0.5.20.post1", spec)
    assert not doctor._in_range("0.5.16", spec) and not doctor._in_range("0.5.24", spec)


def test_gather_reads_this_machine(monkeypatch, tmp_path):
    monkeypatch.setenv("FLASHCORE_CACHE", str(tmp_path))
    facts = doctor.gather()
    assert facts.capability is None and facts.gpu_count == 0  # this machine has no GPU
    assert facts.plugin_target == doctor.PLUGIN_TARGET
    assert facts.build_dir.startswith(str(tmp_path)) and facts.built is None


def test_the_doctor_never_loads_the_extension():
    """It reads the cache through _jit, never builds or imports the kernels it reports on."""
    tree = ast.parse((ROOT / "sglang_flashcore" / "doctor.py").read_text())
    used = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name) and node.value.id == "jit"}
    assert used and used <= {"find_nvcc", "source_hash", "build_dir", "built_library", "prebuilt", "KernelBuildError"}


def test_the_tested_range_is_what_the_extra_pins_and_ci_runs():
    """The range the doctor calls tested is the sglang extra's, and CI runs both of its ends."""
    import re

    from sglang_flashcore.plugin import SUPPORTED_SGLANG

    pyproject = (ROOT / "pyproject.toml").read_text()
    extra = re.search(r'^sglang = \["sglang(.*)"\]', pyproject, re.MULTILINE).group(1)
    low, high = re.fullmatch(r">=([\d.]+),<=([\d.]+)", extra).groups()
    assert SUPPORTED_SGLANG == f">={low}, <={high}"
    ci = (ROOT / ".ci" / "run").read_text()
    assert f"FLASHCORE_SGLANG=sglang=={low}" in ci  # the oldest, in a second venv
    assert "bash tools/setup_env.sh && .venv/bin/python -m pytest tests" in ci  # the newest in range
