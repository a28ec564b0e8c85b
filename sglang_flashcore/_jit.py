"""Builds ``cuda/`` into a torch extension with ninja, once per source version.

The build is cached under ``$FLASHCORE_CACHE`` (default ``~/.cache/flashcore``) by a hash of
the sources, the torch version and the flags, so later processes load it in milliseconds.
Targets ``sm_90a`` only: the kernels use Hopper instructions.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import threading
from pathlib import Path
from typing import List, Optional

import torch

from . import config
from .locations import data_dir

GENCODE = "-gencode=arch=compute_90a,code=sm_90a"
# torch's cpp_extension picks the C++ standard its headers need (C++17 for 2.11, C++20 for 2.14)
NVCC_FLAGS = [GENCODE, "-O3", "--expt-relaxed-constexpr", "-lineinfo",
              "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
              "-U__CUDA_NO_BFLOAT16_CONVERSIONS__"]
CXX_FLAGS = ["-O3"]

_lock = threading.Lock()
_module = None


class KernelBuildError(RuntimeError):
    """The CUDA kernels cannot be built or run here; the message says why and what to do."""


def cuda_dir() -> Path:
    """The kernel sources: ``cuda/`` beside the package (a checkout) or inside it (a wheel)."""
    try:
        return data_dir("cuda", "binding.cpp")
    except FileNotFoundError as exc:
        raise KernelBuildError(str(exc)) from exc


def sources() -> List[Path]:
    root = cuda_dir()
    return sorted(root.glob("*.cu")) + [root / "binding.cpp"]


def headers() -> List[Path]:
    return sorted((cuda_dir() / "include").rglob("*.cuh")) + sorted((cuda_dir() / "include").rglob("*.h"))


def source_hash() -> str:
    h = hashlib.sha256()
    for path in sources() + headers():
        h.update(path.name.encode())
        h.update(path.read_bytes())
    h.update(torch.__version__.encode())
    h.update(" ".join(NVCC_FLAGS + CXX_FLAGS).encode())
    return h.hexdigest()[:16]


def wheel_cuda_includes() -> List[str]:
    """Header folders of the ``nvidia-*`` wheels torch depends on (cusparse.h and friends),
    for machines whose CUDA toolkit lacks the math libraries' headers."""
    try:
        import nvidia  # namespace package of the nvidia-* wheels
    except ImportError:
        return []
    found = []
    for root in getattr(nvidia, "__path__", []):
        found += [str(p) for p in sorted(Path(root).glob("*/include")) if p.is_dir()]
    return found


def find_nvcc() -> Optional[str]:
    from torch.utils.cpp_extension import CUDA_HOME

    if CUDA_HOME and (Path(CUDA_HOME) / "bin" / "nvcc").is_file():
        return str(Path(CUDA_HOME) / "bin" / "nvcc")
    return shutil.which("nvcc")


def check_device(device: Optional[torch.device] = None) -> None:
    """Raises KernelBuildError unless a Hopper GPU and nvcc are available."""
    hint = "set FLASHCORE_IMPL=reference to run the float32 reference instead"
    if not torch.cuda.is_available():
        raise KernelBuildError(f"flashcore: no CUDA GPU is visible to torch; {hint}")
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) != (9, 0):
        name = torch.cuda.get_device_name(device)
        raise KernelBuildError(
            f"flashcore: the kernels are built for Hopper (sm_90a: H100/H200); this GPU is {name} "
            f"(sm_{major}{minor}); {hint}"
        )
    if find_nvcc() is None:
        raise KernelBuildError(f"flashcore: nvcc was not found (set CUDA_HOME); {hint}")


def load():
    """The compiled extension module (built on first use)."""
    global _module
    if _module is not None:
        return _module
    with _lock:
        if _module is not None:
            return _module
        check_device()
        from torch.utils.cpp_extension import load as load_extension

        digest = source_hash()
        cache = config.cache_root() / digest
        cache.mkdir(parents=True, exist_ok=True)
        if not any(cache.glob("*.so")):
            print(f"flashcore: building CUDA kernels for sm_90a into {cache} (first use, about a minute)...",
                  file=sys.stderr, flush=True)
        try:
            _module = load_extension(
                name=f"flashcore_kernels_{digest}",
                sources=[str(s) for s in sources()],
                extra_include_paths=[str(cuda_dir() / "include")] + wheel_cuda_includes(),
                extra_cflags=CXX_FLAGS,
                extra_cuda_cflags=NVCC_FLAGS,
                build_directory=str(cache),
                verbose=config.verbose_build(),
            )
        except Exception as exc:  # noqa: BLE001 - re-raised with the context a user needs
            raise KernelBuildError(f"flashcore: building the CUDA kernels failed: {exc}") from exc
        return _module
