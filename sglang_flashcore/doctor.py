"""``python -m sglang_flashcore.doctor``: what this machine has for FlashCore, on one screen.

One line each for the GPU and its compute capability, the NVIDIA driver, torch and its CUDA,
nvcc, ninja, SGLang and the plugin's entry point, the kernels (built in the cache, prebuilt, or
to be built on first use), and what runs here: our kernels or the float32 reference. A line that
is not ``ok`` says how to fix it.

Exit status 0 when everything the kernels need is here (a Hopper GPU, its driver, a CUDA build of
torch, and the kernels built or prebuilt or nvcc and ninja to build them), 1 otherwise. SGLang and
the plugin are reported (serving needs them) but do not change the exit status.

It never loads the compiled extension; it only looks at where it would come from.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import List, Optional, Tuple

PLUGIN_GROUP = "sglang.srt.plugins"
PLUGIN_NAME = "flashcore_sparse"
PLUGIN_TARGET = "sglang_flashcore.plugin:register"
HOPPER = (9, 0)
REFERENCE_FIX = "the float32 reference runs; FLASHCORE_IMPL=reference"


@dataclass
class Facts:
    """What the checks look at; ``gather()`` reads them from this machine, tests make them up."""

    torch_version: str = ""
    torch_cuda: Optional[str] = None  # None for a CPU build of torch
    gpu_count: int = 0
    gpu_name: Optional[str] = None
    capability: Optional[Tuple[int, int]] = None
    driver: Optional[str] = None
    nvcc: Optional[str] = None
    nvcc_version: Optional[str] = None
    ninja: bool = False
    sglang: Optional[str] = None
    supported_sglang: str = ""
    plugin_target: Optional[str] = None  # the entry point's value, None when it is not installed
    source_hash: Optional[str] = None
    build_dir: Optional[str] = None
    built: Optional[str] = None  # the module file of a complete JIT build
    prebuilt: bool = False
    prebuilt_file: Optional[str] = None  # the module file of the prebuilt kernels, when they are used
    prebuilt_reason: str = ""
    sources_error: Optional[str] = None  # cuda/ is missing
    impl: str = "auto"


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    needed: bool = True  # the kernels need it: a failure makes the exit status 1
    extra: List[str] = field(default_factory=list)


# ------------------------------------------------------------------------------ facts
def _driver_version() -> Optional[str]:
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
        found = re.search(r"Kernel Module(?: for \S+)?\s+([\d.]+)", text)
        if found:
            return found.group(1)
    except OSError:
        pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        lines = out.stdout.split()
        return lines[0] if out.returncode == 0 and lines else None
    except (OSError, subprocess.SubprocessError):
        return None


def _nvcc_version(nvcc: str) -> Optional[str]:
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r"release (\d+\.\d+)", out)
    return found.group(1) if found else None


def _plugin_target() -> Optional[str]:
    for entry in metadata.entry_points(group=PLUGIN_GROUP):
        if entry.name == PLUGIN_NAME:
            return entry.value
    return None


def gather() -> Facts:
    """The facts of this machine."""
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # "No CUDA runtime is found"
    import torch
    from torch.utils.cpp_extension import is_ninja_available

    # the cache and the build's source hash, never the extension (tests/test_doctor.py checks)
    from . import _jit as jit  # build facts only (paths, hashes, nvcc): it never loads the extension
    from . import config
    from .plugin import SUPPORTED_SGLANG

    facts = Facts(torch_version=torch.__version__, torch_cuda=torch.version.cuda,
                  supported_sglang=SUPPORTED_SGLANG, ninja=is_ninja_available())
    if torch.cuda.is_available():
        facts.gpu_count = torch.cuda.device_count()
        facts.gpu_name = torch.cuda.get_device_name(0)
        facts.capability = tuple(torch.cuda.get_device_capability(0))
    facts.driver = _driver_version()
    facts.nvcc = jit.find_nvcc()
    facts.nvcc_version = _nvcc_version(facts.nvcc) if facts.nvcc else None
    try:
        facts.sglang = metadata.version("sglang")
    except metadata.PackageNotFoundError:
        pass
    facts.plugin_target = _plugin_target()
    try:
        facts.source_hash = jit.source_hash()
        facts.build_dir = str(jit.build_dir(facts.source_hash))
        library = jit.built_library(facts.source_hash)
        facts.built = str(library) if library else None
    except jit.KernelBuildError as exc:
        facts.sources_error = str(exc)
    module, facts.prebuilt_reason = jit.prebuilt()
    facts.prebuilt = module is not None
    facts.prebuilt_file = getattr(module, "__file__", None)
    try:
        facts.impl = config.impl_mode()
    except ValueError as exc:
        facts.impl = f"invalid ({exc})"
    return facts


# ----------------------------------------------------------------------------- checks
def _version_tuple(text: str) -> Tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def _in_range(version: str, spec: str) -> bool:
    """``version`` within ``spec``, a comma-separated list of ``>=``/``<=``/``>``/``<``/``==`` bounds."""
    have = _version_tuple(version)
    for bound in filter(None, (b.strip() for b in spec.split(","))):
        op, number = re.match(r"(>=|<=|==|>|<)\s*(.+)", bound).groups()
        want = _version_tuple(number)
        ok = {">=": have >= want, "<=": have <= want, "==": have == want, ">": have > want, "<": have < want}[op]
        if not ok:
            return False
    return True


def check_gpu(f: Facts) -> Check:
    if f.capability is None:
        return Check("GPU", False, "no CUDA GPU is visible to torch", REFERENCE_FIX)
    cc = f"{f.capability[0]}.{f.capability[1]}"
    more = f" (GPU 0 of {f.gpu_count})" if f.gpu_count > 1 else ""
    if tuple(f.capability) != HOPPER:
        return Check("GPU", False, f"{f.gpu_name}{more}, compute capability {cc}: the kernels need 9.0 (H100/H200)",
                     REFERENCE_FIX)
    return Check("GPU", True, f"{f.gpu_name}{more}, compute capability {cc} (sm_90a)")


def check_driver(f: Facts) -> Check:
    if f.driver is None:
        return Check("driver", False, "no NVIDIA driver found (/proc/driver/nvidia/version, nvidia-smi)",
                     "install the NVIDIA driver; without a GPU, " + REFERENCE_FIX)
    return Check("driver", True, f"NVIDIA {f.driver}")


def check_torch(f: Facts) -> Check:
    if f.torch_cuda is None:
        return Check("torch", False, f"{f.torch_version}, a CPU build (no CUDA)",
                     "install a CUDA build of torch (download.pytorch.org/whl/cu1XX)")
    return Check("torch", True, f"{f.torch_version}, CUDA {f.torch_cuda}")


def _can_skip_build(f: Facts) -> bool:
    return bool(f.built or f.prebuilt)


def check_nvcc(f: Facts) -> Check:
    needed = not _can_skip_build(f)
    if f.nvcc is None:
        return Check("nvcc", False, "not found (CUDA_HOME, PATH)",
                     "install the CUDA toolkit or set CUDA_HOME; it builds the kernels on first use", needed)
    version = f.nvcc_version or "unknown version"
    if f.nvcc_version and f.torch_cuda and f.nvcc_version.split(".")[0] != f.torch_cuda.split(".")[0]:
        major = f.torch_cuda.split(".")[0]
        return Check("nvcc", False, f"{f.nvcc}, release {version}: torch is built with CUDA {f.torch_cuda} "
                     "and its cpp_extension refuses another major version",
                     f"set CUDA_HOME to a CUDA {major}.x toolkit", needed)
    return Check("nvcc", True, f"{f.nvcc}, release {version}", needed=needed)


def check_ninja(f: Facts) -> Check:
    needed = not _can_skip_build(f)
    if not f.ninja:
        return Check("ninja", False, "not found (torch's cpp_extension builds with it)", "pip install ninja", needed)
    return Check("ninja", True, "found", needed=needed)


def check_sglang(f: Facts) -> Check:
    if f.sglang is None:
        return Check("SGLang", False, f"not installed (serving needs SGLang {f.supported_sglang})",
                     'pip install "sglang-flashcore[sglang]"', needed=False)
    if not _in_range(f.sglang, f.supported_sglang):
        return Check("SGLang", False, f"{f.sglang}, outside the tested {f.supported_sglang}",
                     f'pip install "sglang{f.supported_sglang.replace(" ", "")}"', needed=False)
    return Check("SGLang", True, f"{f.sglang} (tested: {f.supported_sglang})", needed=False)


def check_plugin(f: Facts) -> Check:
    if f.plugin_target is None:
        return Check("plugin", False, f"entry point {PLUGIN_NAME} in group {PLUGIN_GROUP} is not installed",
                     "reinstall the package (pip install -e . in a checkout): the entry point comes with it",
                     needed=False)
    if f.plugin_target != PLUGIN_TARGET:
        return Check("plugin", False, f"entry point {PLUGIN_NAME} points to {f.plugin_target}, not {PLUGIN_TARGET}",
                     "reinstall the package (a stale install's metadata)", needed=False)
    return Check("plugin", True, f"registered: {PLUGIN_NAME} = {PLUGIN_TARGET} ({PLUGIN_GROUP})", needed=False)


def check_kernels(f: Facts) -> Check:
    if f.prebuilt:
        where = f": {f.prebuilt_file}" if f.prebuilt_file else ""
        return Check("kernels", True, f"prebuilt{where} (for torch {f.torch_version}, CUDA {f.torch_cuda}; "
                     "no JIT build)")
    if f.built:
        return Check("kernels", True, f"built: {f.built}", extra=[f.prebuilt_reason])
    if f.sources_error:
        return Check("kernels", False, f.sources_error, "reinstall the package: cuda/ ships inside it")
    return Check("kernels", True, f"not built yet for source {f.source_hash}: the first use builds them into "
                 f"{f.build_dir} (about a minute)", extra=[f.prebuilt_reason], needed=False)


def runs_here(f: Facts, ready: bool) -> str:
    """What CUDA tensors run on this machine."""
    if f.impl.startswith("invalid"):
        return f"nothing: FLASHCORE_IMPL is {f.impl}; use auto or reference"
    if f.impl == "reference":
        return "the float32 reference (FLASHCORE_IMPL=reference)" + (
            "; the kernels could run: unset FLASHCORE_IMPL" if ready else "")
    if f.capability is None:
        return "the float32 reference (CPU tensors; no CUDA GPU)"
    if ready:
        return "the FlashCore kernels (sm_90a)"
    return "CUDA tensors raise KernelBuildError (see above); FLASHCORE_IMPL=reference runs the float32 reference"


def checks(f: Facts) -> List[Check]:
    return [check_gpu(f), check_driver(f), check_torch(f), check_nvcc(f), check_ninja(f),
            check_kernels(f), check_sglang(f), check_plugin(f)]


def report(f: Facts) -> Tuple[List[str], int]:
    """The screen's lines and the exit status."""
    found = checks(f)
    ready = all(c.ok for c in found if c.needed)
    lines = [f"flashcore doctor: Python {sys.version.split()[0]}, {sys.platform}"]
    for c in found:
        mark = "ok" if c.ok else ("MISSING" if c.needed else "warn")
        lines.append(f"  {mark:<7} {c.name:<8} {c.detail}")
        lines += [f"  {'':<7} {'':<8} {e}" for e in c.extra if e]
        if c.fix and not c.ok:
            lines.append(f"  {'':<7} {'':<8} fix: {c.fix}")
    lines.append(f"  {'runs':<7} {'here':<8} {runs_here(f, ready)}")
    lines.append("ready for the kernels" if ready else "not ready for the kernels: see the MISSING lines")
    return lines, 0 if ready else 1


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv:
        print(__doc__.strip())
        return 0 if argv[0] in ("-h", "--help") else 2
    lines, status = report(gather())
    print("\n".join(lines), flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
