"""Pack SGLang 0.5.17 and what its server path imports into one archive for the GPU box.

The H100 box has no network, no SGLang, Python 3.12 and torch 2.11.0+cu130. SGLang
0.5.17 is the newest release pinning torch 2.11.0. A call to the box carries at most
64 MiB, and a warm box is given back 30 s after a call, so everything a serving run
needs must travel in one call. This script:

1. downloads the pinned cp312 manylinux wheels below (``pip download --no-deps``);
2. unpacks them into one staging site directory (what ``pip install --target`` does);
3. drops what neither the triton backend nor ours loads: sglang-kernel's FlashAttention-3
   / FlashMLA / InfLLM / sm100 libraries (1.2 GB unpacked), xgrammar's static library,
   flashinfer's JIT sources (we never JIT-compile flashinfer kernels on the box),
   sglang's diffusion package, byte-code caches;
4. builds ahead of time the one FlashInfer JIT module the Llama path needs (``norm``: sgl-kernel
   0.4.5 routes RMSNorm to FlashInfer) for sm_90a and puts it where FlashInfer looks for AOT
   modules (``flashinfer/data/aot/norm/norm.so``), so the box compiles nothing of FlashInfer's;
5. writes ``.carry/boxsite.tar.xz`` (solid xz: about half the size of the wheels).

Step 4 needs nvcc 13 and a Python 3.12 with torch (``--aot-python``, for example a venv with
``torch==2.11.0 packaging ninja numpy nvidia-ml-py einops requests tqdm click tabulate``: FlashInfer
imports these at import time), and the module is built for CPython 3.12.

The package list was found by importing the server path module by module under Python
3.12 with the box's package set (see ``benchmarks/results/h100/serving/README.md``).
Nothing here is committed: ``.carry/`` is git-ignored. On the box::

    mkdir -p /tmp/site && tar -xJf .carry/boxsite.tar.xz -C /tmp/site
    export PYTHONPATH=/tmp/site:$PWD

Usage: ``python tools/pack_box_site.py --aot-python /path/to/python3.12 [--out .carry]``.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

# Pinned to what sglang 0.5.17 asks for where it pins, else to the versions CI's
# sglang 0.5.23 environment resolved. Packages the box already has are left out.
WHEELS = [
    "sglang==0.5.17",
    "sglang-kernel==0.4.5",
    "transformers==5.12.1",  # the box has 5.17, which clashes with sglang 0.5.17's configs
    "tokenizers==0.22.2",  # transformers 5.12.1 wants >=0.22,<=0.23.0
    "apache-tvm-ffi==0.1.11",
    "flashinfer-python==0.6.15.post1",  # imported by the sampler on CUDA
    "xgrammar==0.2.1",
    "orjson==3.13.0",
    "msgspec==0.22.0",
    "pyzmq==27.3.0",
    "pybase64==1.5.1",
    "setproctitle==1.3.8",
    "partial-json-parser==0.2.1.1.post7",
    "fastapi==0.165.0",
    "starlette==1.10.0",
    "uvicorn==0.54.0",
    "opentelemetry-api==1.45.2",
    "pydantic==2.14.4",
    "pydantic-core==2.50.5",
    "annotated-types==0.8.0",
    "typing-inspection==0.4.5",
    "typing-extensions==4.16.0",
    "python-multipart==0.0.34",
    "openai==2.6.1",
    "distro==1.9.0",
    "jiter==0.19.0",
    "sniffio==1.3.1",
    "gguf==0.19.0",
    "compressed-tensors==0.20.0",
    "soundfile==0.13.1",
    "cffi==2.1.1",
    "pycparser==3.12",
    "zstandard==0.25.0",
    "ipython==9.18.1",
    "traitlets==5.16.1",
    "dill==0.4.1",
    "jsonschema==4.26.0",
    "jsonschema-specifications==2025.9.1",
    "referencing==0.37.0",
    "rpds-py==2026.9.1",
    "interegular==0.3.3",
    "watchfiles==1.3.0",
    "loguru==0.7.3",
]

# Paths (fnmatch, relative to the site directory) that the dense serving path never loads.
DROP = [
    "sgl_kernel/flash_ops*",
    "sgl_kernel/flashmla_ops*",
    "sgl_kernel/infllm_ops*",
    "sgl_kernel/sm100/*",
    "xgrammar/lib/*.a",
    "flashinfer/data/*",
    "sglang/multimodal_gen/*",
    "bin/*",
    "*/__pycache__/*",
]

PLATFORMS = ["manylinux_2_%d_x86_64" % n for n in (17, 24, 27, 28, 31, 34, 35)] + [
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
]


def download(wheel_dir: Path) -> list[Path]:
    wheel_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--python-version", "3.12", "--implementation", "cp", "-d", str(wheel_dir)]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    subprocess.run(cmd + WHEELS, check=True)
    # one wheel per pinned (name, version): the cache may hold other versions or platform tags
    chosen = {}
    for wheel in sorted(wheel_dir.glob("*.whl")):
        name, version = wheel.name.split("-")[:2]
        chosen.setdefault((name.lower().replace("_", "-"), version), wheel)
    wheels, missing = [], []
    for spec in WHEELS:
        name, version = spec.split("==")
        wheel = chosen.get((name.lower().replace("_", "-"), version))
        (wheels.append(wheel) if wheel else missing.append(spec))
    if missing:
        raise SystemExit(f"pip download did not produce wheels for: {missing}")
    return wheels


def unpack(wheels: list[Path], site: Path, drop: list[str] = DROP) -> tuple[int, int]:
    """Unzip wheels like ``pip install --target``, leaving out paths matching ``drop``;
    returns (files kept, files dropped)."""
    kept = skipped = 0
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            for member in archive.infolist():
                name = member.filename
                # "<dist>.data/purelib|platlib/x" installs as "x"; scripts and headers are unused.
                parts = name.split("/")
                if parts[0].endswith(".data"):
                    if len(parts) < 3 or parts[1] not in ("purelib", "platlib"):
                        continue
                    name = "/".join(parts[2:])
                if member.is_dir() or any(fnmatch.fnmatch(name, p) for p in drop):
                    skipped += not member.is_dir()
                    continue
                target = site / name
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(member) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                if (member.external_attr >> 16) & 0o111:
                    target.chmod(0o755)
                kept += 1
    return kept, skipped


# label: "module:generator" or "module:generator(arguments)" (the arguments are Python, with torch imported)
AOT_MODULES = {"norm": "flashinfer.jit.norm:gen_norm_module"}


def build_flashinfer_aot(wheels: list[Path], out: Path, site: Path, python: str,
                         modules: dict[str, str] = AOT_MODULES, nice: bool = False) -> dict[str, dict]:
    """Compiles ``modules`` for sm_90a with FlashInfer's own JIT spec, into ``site``'s AOT dir
    (``flashinfer/data/aot/<spec name>/<spec name>.so``, where FlashInfer looks before compiling);
    ``nice``: at the lowest CPU priority, ``MAX_JOBS`` (default 2) compilers at a time. Returns
    {label: {"name", "MiB", "seconds"}}."""
    build_site = out / "aot_site"
    shutil.rmtree(build_site, ignore_errors=True)
    needed = [w for w in wheels if w.name.startswith(("flashinfer_python-", "apache_tvm_ffi-"))]
    unpack(needed, build_site, drop=[])  # FlashInfer's sources are needed to build
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    cublas = sorted(Path(purelib).glob("nvidia/*/include/cublasLt.h"))
    if not cublas:
        raise SystemExit(f"--aot-python {python}: no nvidia/*/include/cublasLt.h under {purelib} (install torch)")
    # the link line names -lcuda; an empty stub satisfies it (the module needs no driver symbol)
    stub = out / "cudastub"
    stub.mkdir(parents=True, exist_ok=True)
    (stub / "empty.c").write_text("")
    subprocess.run(["gcc", "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", str(stub / "libcuda.so"),
                    str(stub / "empty.c")], check=True)
    cuda_home = os.environ.get("CUDA_HOME") or next(
        (d for d in ("/usr/local/cuda", "/usr/local/cuda-13.0") if Path(d, "bin", "nvcc").exists()), None)
    if cuda_home is None:
        raise SystemExit("set CUDA_HOME to a CUDA 13 toolkit (bin/nvcc, lib64/libcudart.so)")
    env = dict(os.environ, FLASHINFER_CUDA_ARCH_LIST="9.0a", FLASHINFER_WORKSPACE_BASE=str(out / "aot_ws"),
               PYTHONPATH=str(build_site), CUDA_HOME=cuda_home, CPATH=str(cublas[0].parent),
               LIBRARY_PATH=str(stub), PATH=f"{cuda_home}/bin:{os.environ.get('PATH', '')}")
    if nice:
        env.setdefault("MAX_JOBS", "2")
    built = {}
    for label, target in modules.items():
        module, call = target.split(":")
        fn, _, call_args = call.partition("(")
        code = (f"import torch\nfrom {module} import {fn} as g\ns = g({call_args[:-1]})\n"
                "s.build(verbose=False)\nprint(s.name)\nprint(s.jit_library_path)")
        start = time.monotonic()
        res = subprocess.run((["nice", "-n", "19"] if nice else []) + [python, "-c", code], env=env,
                             capture_output=True, text=True)
        if res.returncode != 0:
            raise SystemExit(f"building FlashInfer's {label} module failed:\n{(res.stdout + res.stderr)[-3000:]}")
        name, so = res.stdout.strip().splitlines()[-2:]
        dest = site / "flashinfer" / "data" / "aot" / name / f"{name}.so"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(so, dest)
        built[label] = {"name": name, "MiB": dest.stat().st_size / 2**20, "seconds": time.monotonic() - start}
        print(f"flashinfer AOT module {label} ({name}): {built[label]['MiB']:.1f} MiB, "
              f"{built[label]['seconds']:.0f} s", flush=True)
    return built


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(".carry"))
    parser.add_argument("--wheels", type=Path, default=None,
                        help="wheel cache directory (default: OUT/wheels)")
    parser.add_argument("--aot-python", required=True,
                        help="a Python 3.12 with torch, to build FlashInfer's norm module for the box")
    args = parser.parse_args()
    args.out = args.out.resolve()
    wheel_dir = args.wheels or args.out / "wheels"
    wheels = download(wheel_dir)
    site = args.out / "stage"
    shutil.rmtree(site, ignore_errors=True)
    kept, skipped = unpack(wheels, site)
    build_flashinfer_aot(wheels, args.out, site, args.aot_python)
    archive = args.out / "boxsite.tar.xz"
    with tarfile.open(archive, "w:xz", preset=9) as tar:
        tar.add(site, arcname=".")
    wheel_mb = sum(w.stat().st_size for w in wheels) / 2**20
    site_mb = sum(p.stat().st_size for p in site.rglob("*") if p.is_file()) / 2**20
    print(f"{len(wheels)} wheels ({wheel_mb:.1f} MiB) -> {kept} files kept, {skipped} dropped, "
          f"{site_mb:.0f} MiB unpacked -> {archive} {archive.stat().st_size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
