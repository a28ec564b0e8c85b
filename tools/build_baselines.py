"""Build SGLang's ``flashinfer`` and ``fa3`` attention kernels for the GPU box ahead of time, and pack
them into one carry, ``.carry/baselines.tar.xz``, to unpack over the site of ``pack_box_site.py``.

The box has nvcc but no network and a carry of at most 64 MiB a call; the SGLang site
(``boxsite.tar.xz``, about 49 MiB) leaves out FlashInfer's JIT sources and sgl-kernel's
FlashAttention-3 library (``flash_ops``, 1.1 GB). This script compiles, on this CPU machine with
nvcc 13 for sm_90a, only what a Llama-3-8B-shaped server (bf16, Hq 32, Hkv 8, head dim 128, any
page size) and the kernel benchmarks call. Sizes and times below: a fresh build on the 2-core CPU
machine, 2 compilers at ``nice -n 19``.

FlashInfer 0.6.15.post1 (``FLASHINFER_MODULES``), each as FlashInfer's own JIT spec, put where
FlashInfer looks for AOT modules (``flashinfer/data/aot/<uri>/<uri>.so``), with the templates its
generators read at plan time, before they look for the module (``flashinfer/data/csrc``):

* ``prefill_fa2`` (2.2 MiB, 80 s): the FA2 batch prefill (paged + ragged), bf16. SGLang's
  flashinfer backend plans its paged prefill and, with a GQA group >= 4, its decode
  (``use_tensor_cores``) with backend ``fa2``;
* ``prefill_fa3`` (1.9 MiB, 450 s): the sm90 batch prefill, bf16: the ragged wrapper's backend
  ``auto`` on Hopper (the new tokens of an extend);
* ``cascade`` (0.2 MiB, 8 s): ``merge_state`` (the ragged part merged with the cached prefix);
* ``decode`` (0.5 MiB, 60 s): the CUDA-core batch decode, bf16 (bench_decode's ``flashinfer``);
* ``prefill_fa2_fp8kv`` (2.3 MiB, 260 s) / ``decode_fp8kv`` (0.5 MiB, 50 s): the two decode paths
  with bf16 queries over an FP8-e4m3 KV cache (bench_decode's ``_fp8`` baselines; also what the
  server plans for ``--kv-cache-dtype fp8_e4m3``).
* ``prefill_fa2_swa`` / ``decode_swa``: the FA2 paged prefill and the CUDA-core decode with a
  sliding window (``window_left``), bench_window.py's FlashInfer baselines.

FlashAttention-3 (``--fa3-src``; 3.5 MiB, 560 s for its 9 compile units): the Hopper forward of
Dao-AILab/flash-attention's ``hopper/`` folder (built from commit 0251105a with CUTLASS 4.3.4, the
commit its ``csrc/cutlass`` pins; ``--cutlass`` absent: the CUTLASS inside the FlashInfer wheel),
restricted by its own ``FLASHATTENTION_DISABLE_*`` switches (``FA3_DISABLE``) to the sm90 forward,
bf16, head dim 128, variable lengths, paged KV (TMA and not), split-KV with its combine kernel,
GQA packing, causal or not, local (sliding-window) attention, and the scheduler-metadata kernel;
no backward, fp16/fp8, soft-cap, append-KV, cluster launch or sm80 kernels. It is torch's stable-ABI extension
(``flash_api_stable.cpp``, for torch >= 2.9), built against torch 2.11: ``fa3_hopper/_C.so``
registering ``torch.ops.flash_attn_3``. ``tools/fa3_sgl_kernel_shim.py`` goes over
``sgl_kernel/flash_attn.py``: the module SGLang 0.5.17's ``fa3`` backend imports
(``flash_attn_with_kvcache``, ``flash_attn_varlen_func``, ``get_scheduler_metadata``).

The carry is about 5 MiB (20 MiB unpacked, 8.5 of them FlashInfer's csrc), so it travels in the
same call as ``boxsite.tar.xz``; ``baselines.json`` inside lists what was built, with sizes and the
seconds of the last run (a rebuild is incremental). Third-party sources, binaries and build trees
stay under ``--out`` (git-ignored). On the box ``tools/box_serving.sh`` unpacks this carry over
the site when it is present.

Needs a Python 3.12 with ``torch==2.11.0`` (the CUDA 13 wheel: FlashInfer's build uses its
``nvidia/*/include`` headers) plus ``packaging ninja numpy nvidia-ml-py einops requests tqdm click
tabulate`` (``--python``), nvcc 13 (``CUDA_HOME``, default /usr/local/cuda) and gcc. Compilers run
at ``nice -n 19``, ``--jobs`` (default 2) at a time. The sources: ``--fa3-src`` and ``--cutlass``
take checkouts or bare git directories (as the repository mirror gives), e.g.::

    python tools/build_baselines.py --python /tmp/py312/bin/python \
        --fa3-src /work/.mirror/Dao-AILab+flash-attention/repo --cutlass /work/.mirror/NVIDIA+cutlass/repo
    python tools/build_baselines.py --python ... --flashinfer decode,prefill_fa2   # FlashInfer only, a subset
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
import pack_box_site  # noqa: E402

FLASHINFER_WHEELS = ["flashinfer-python==0.6.15.post1", "apache-tvm-ffi==0.1.11"]
_BF16, _FP8, _I32 = "torch.bfloat16", "torch.float8_e4m3fn", "torch.int32"
# (q, kv, o, index dtype, head dim qk, head dim vo, pos encoding NONE, sliding window, soft-cap[, fp16 qk])
_PREFILL = "flashinfer.jit:gen_batch_prefill_module('{b}', {q}, {kv}, " + _BF16 + ", " + _I32 + \
    ", 128, 128, 0, {swa}, False, False)"
_DECODE = "flashinfer.jit:gen_batch_decode_module({q}, {kv}, " + _BF16 + ", " + _I32 + ", 128, 128, 0, {swa}, False)"
FLASHINFER_MODULES = {  # in build order: what the server needs first
    "prefill_fa2": _PREFILL.format(b="fa2", q=_BF16, kv=_BF16, swa=False),
    "cascade": "flashinfer.jit.cascade:gen_cascade_module()",
    "prefill_fa3": _PREFILL.format(b="fa3", q=_BF16, kv=_BF16, swa=False),
    "decode": _DECODE.format(q=_BF16, kv=_BF16, swa=False),
    "prefill_fa2_fp8kv": _PREFILL.format(b="fa2", q=_BF16, kv=_FP8, swa=False),
    "decode_fp8kv": _DECODE.format(q=_BF16, kv=_FP8, swa=False),
    # sliding windows (window_left >= 0): the paged prefill and decode bench_window.py compares
    "prefill_fa2_swa": _PREFILL.format(b="fa2", q=_BF16, kv=_BF16, swa=True),
    "decode_swa": _DECODE.format(q=_BF16, kv=_BF16, swa=True),
}


def download(wheel_dir: Path, specs: list[str]) -> list[Path]:
    wheel_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--python-version", "3.12", "--implementation", "cp", "-d", str(wheel_dir)]
    for platform in pack_box_site.PLATFORMS:
        cmd += ["--platform", platform]
    subprocess.run(cmd + specs, check=True)
    found = []
    for spec in specs:
        name, version = spec.split("==")
        stem = name.replace("-", "_")
        match = sorted(wheel_dir.glob(f"{stem}-{version}-*.whl"))
        if not match:
            raise SystemExit(f"pip download did not produce a wheel for {spec}")
        found.append(match[0])
    return found


def build_flashinfer(out: Path, stage: Path, python: str, labels: list[str]) -> dict:
    wheels = download(out / "wheels", FLASHINFER_WHEELS)
    modules = {k: v for k, v in FLASHINFER_MODULES.items() if k in labels}
    built = pack_box_site.build_flashinfer_aot(wheels, out, stage, python, modules=modules, nice=True)
    # the generators read their templates at plan time, before they look for the AOT module
    csrc = out / "aot_site" / "flashinfer" / "data" / "csrc"
    shutil.copytree(csrc, stage / "flashinfer" / "data" / "csrc", dirs_exist_ok=True)
    return built


# FlashAttention-3's own switches (hopper/setup.py): everything but the sm90 bf16 head-dim-128 forward
# with paged KV, split-KV, GQA packing and variable lengths
FA3_DISABLE = ["BACKWARD", "SOFTCAP", "APPENDKV", "FP16", "FP8", "CLUSTER", "HDIM64", "HDIM96", "HDIM192",
               "HDIM256", "SM8x", "HDIMDIFF64", "HDIMDIFF192"]
FA3_KERNELS = ["", "_split", "_paged", "_paged_split", "_packgqa"]  # hdim128 bf16 sm90 instantiations
FA3_BUILD = """
import os, sys, time, torch
from torch.utils.cpp_extension import load
hopper, cutlass, build = sys.argv[1:4]
flags = [f"-DFLASHATTENTION_DISABLE_{x}" for x in sys.argv[4].split(",")]
sources = [f"{hopper}/{s}" for s in sys.argv[5].split(",")]
nvcc = ["-O3", "-std=c++17", "--use_fast_math", "-DCUTE_SM90_EXTENDED_MMA_SHAPES_ENABLED",
        "-DCUTLASS_ENABLE_GDC_FOR_SM90", "-DCUTLASS_DEBUG_TRACE_LEVEL=0", "-DNDEBUG"] + flags
cxx = ["-O3", "-std=c++17", "-DPy_LIMITED_API=0x03090000", "-DTORCH_TARGET_VERSION=0x0209000000000000"] + flags
load("_C", sources, extra_cflags=cxx, extra_cuda_cflags=nvcc, extra_include_paths=[hopper, f"{cutlass}/include"],
     build_directory=build, verbose=True, is_python_module=False, with_cuda=True)
print([n for n in ("fwd", "fwd_combine", "get_scheduler_metadata") if hasattr(torch.ops.flash_attn_3, n)])
"""


def _is_git_dir(path: Path) -> bool:
    return (path / "HEAD").is_file() and (path / "objects").is_dir()


def fa3_sources(src: Path, cutlass: Path | None, out: Path) -> tuple[Path, Path, str]:
    """(flash-attention tree, CUTLASS tree, flash-attention commit). ``src`` is a checkout, or a bare
    git directory (as the repository mirror gives) whose HEAD's ``hopper/`` is extracted under
    ``out``; ``cutlass`` likewise, a bare one at the commit flash-attention pins (``csrc/cutlass``)."""
    def git(gitdir, *args):
        return subprocess.run(["git", "--git-dir", str(gitdir), *args], check=True, capture_output=True,
                              text=True).stdout.strip()

    if _is_git_dir(src):
        commit = git(src, "rev-parse", "HEAD")
        tree = out / "fa3_src"
        if not (tree / "COMMIT").exists() or (tree / "COMMIT").read_text().strip() != commit:
            shutil.rmtree(tree, ignore_errors=True)
            tree.mkdir(parents=True)
            archive = subprocess.run(["git", "--git-dir", str(src), "archive", commit, "hopper"], check=True,
                                     capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
            (tree / "COMMIT").write_text(commit + "\n")
        pinned = git(src, "ls-tree", commit, "csrc/cutlass").split()[2]
    else:
        tree = src
        commit = (src / "COMMIT").read_text().strip() if (src / "COMMIT").exists() else "unknown"
        pinned = None
    if cutlass is None:
        cutlass = out / "aot_site" / "flashinfer" / "data" / "cutlass"
    elif _is_git_dir(cutlass):
        if pinned is None:
            raise SystemExit("--cutlass as a git directory needs --fa3-src as one too (for the pinned commit)")
        ctree = out / f"cutlass_{pinned[:12]}"
        if not (ctree / "include" / "cute").is_dir():
            ctree.mkdir(parents=True, exist_ok=True)
            archive = subprocess.run(["git", "--git-dir", str(cutlass), "archive", pinned, "include"], check=True,
                                     capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(ctree)], input=archive, check=True)
        cutlass = ctree
    return tree.resolve(), cutlass.resolve(), commit


def build_fa3(src: Path, cutlass: Path, out: Path, stage: Path, python: str, commit: str = "unknown") -> dict:
    """Compiles FlashAttention-3's restricted Hopper forward (see the module docstring) with torch's
    extension builder (ninja, ``MAX_JOBS`` compilers) and stages ``fa3_hopper/_C.so`` and the
    ``sgl_kernel/flash_attn.py`` replacement. The built library is loaded once here (no GPU
    needed) to check that it registers ``torch.ops.flash_attn_3``."""
    hopper = src / "hopper"
    if not (hopper / "flash_api_stable.cpp").exists() or not (cutlass / "include" / "cute").is_dir():
        raise SystemExit(f"--fa3-src {src} needs hopper/flash_api_stable.cpp; --cutlass {cutlass} needs include/cute")
    build = out / "fa3_build"
    build.mkdir(parents=True, exist_ok=True)
    sources = (["flash_api_stable.cpp", "flash_fwd_combine.cu", "flash_prepare_scheduler.cu"]
               + [f"instantiations/flash_fwd_hdim128_bf16{k}_sm90.cu" for k in FA3_KERNELS])
    cuda_home = os.environ.get("CUDA_HOME") or "/usr/local/cuda"
    env = dict(os.environ, TORCH_CUDA_ARCH_LIST="9.0a", CUDA_HOME=cuda_home,
               PATH=f"{cuda_home}/bin:{os.environ.get('PATH', '')}")
    start = time.monotonic()
    log = out / "fa3_build.log"
    with open(log, "w") as f:
        res = subprocess.run(["nice", "-n", "19", python, "-c", FA3_BUILD, str(hopper), str(cutlass), str(build),
                              ",".join(FA3_DISABLE), ",".join(sources)], env=env, stdout=f, stderr=subprocess.STDOUT)
    seconds = time.monotonic() - start
    if res.returncode != 0:
        raise SystemExit(f"building FlashAttention-3 failed after {seconds:.0f} s; see {log}")
    ops = log.read_text().strip().splitlines()[-1]
    dest = stage / "fa3_hopper"
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(build / "_C.so", dest / "_C.so")
    (dest / "__init__.py").write_text('"""FlashAttention-3 Hopper forward (sm90, bf16, head dim 128), built by '
                                      'tools/build_baselines.py."""\n')
    shim = stage / "sgl_kernel" / "flash_attn.py"
    shim.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(Path(__file__).with_name("fa3_sgl_kernel_shim.py"), shim)
    version = (cutlass / "include" / "cutlass" / "version.h").read_text()
    cutlass_version = ".".join(version.split(f"#define CUTLASS_{x} ")[1].split()[0] for x in ("MAJOR", "MINOR", "PATCH"))
    info = {"MiB": (dest / "_C.so").stat().st_size / 2**20, "seconds": seconds, "ops": ops, "sources": sources,
            "disabled": FA3_DISABLE, "flash_attention_commit": commit, "cutlass": cutlass_version}
    print(f"FlashAttention-3: {info['MiB']:.1f} MiB, {seconds:.0f} s, ops {ops}", flush=True)
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--python", required=True, help="a Python 3.12 with torch 2.11.0 (CUDA 13 wheel)")
    parser.add_argument("--out", type=Path, default=Path(".carry"))
    parser.add_argument("--flashinfer", default=",".join(FLASHINFER_MODULES),
                        help="FlashInfer modules to build (comma list; empty: none)")
    parser.add_argument("--fa3-src", type=Path,
                        help="a flash-attention checkout or bare git directory (its hopper/ folder is built)")
    parser.add_argument("--cutlass", type=Path,
                        help="a CUTLASS checkout, or a bare git directory (read at the commit flash-attention pins); "
                             "default: FlashInfer's copy")
    parser.add_argument("--jobs", type=int, default=2, help="compilers at a time")
    args = parser.parse_args()
    os.environ["MAX_JOBS"] = str(args.jobs)
    args.out = args.out.resolve()
    stage = args.out / "baselines_stage"
    stage.mkdir(parents=True, exist_ok=True)
    manifest_path = stage / "baselines.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    labels = [x for x in args.flashinfer.split(",") if x]
    if labels:
        manifest.setdefault("flashinfer", {}).update(build_flashinfer(args.out, stage, args.python, labels))
    if args.fa3_src:
        tree, cutlass, commit = fa3_sources(args.fa3_src.resolve(), args.cutlass and args.cutlass.resolve(), args.out)
        manifest["fa3"] = build_fa3(tree, cutlass, args.out, stage, args.python, commit)
    manifest_path.write_text(json.dumps(manifest, indent=1))
    archive = args.out / "baselines.tar.xz"
    start = time.monotonic()
    with tarfile.open(archive, "w:xz", preset=9) as tar:
        tar.add(stage, arcname=".")
    size = archive.stat().st_size / 2**20
    print(f"{archive}: {size:.1f} MiB ({time.monotonic() - start:.0f} s to pack)")
    if size > 60:
        print("warning: over 60 MiB; the box's carry limit is 64 MiB a call")


if __name__ == "__main__":
    main()
