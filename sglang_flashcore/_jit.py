"""Finds or builds the CUDA kernels of ``cuda/``: a prebuilt module if one matches, else a JIT build.

1. ``prebuilt()``: an importable ``sglang_flashcore._kernels`` (the ahead-of-time build of a wheel
   made with ``FLASHCORE_BUILD_KERNELS=1``: setup.py) whose recorded ``TORCH_VERSION`` and
   ``CUDA_VERSION`` are this torch's. If there is none, ``load()`` says in one line why the JIT
   build runs instead.
2. The JIT build, cached under ``$FLASHCORE_CACHE`` (default ``~/.cache/flashcore``) in a folder
   named by a hash of the sources, the torch version and the flags (``build_dir()``). It is
   complete when its ``BUILT`` marker is there; later processes import the module from it in
   milliseconds, without ninja. The build holds ``flock`` on ``flashcore.lock`` in that folder,
   so processes that start together build once and all load the same module; the kernel drops
   the lock of a builder that is killed, and the next process builds again.

Targets ``sm_90a`` only: the kernels use Hopper instructions.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib
import importlib.util
import os
import shutil
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import torch

from . import config
from .locations import data_dir

GENCODE = "-gencode=arch=compute_90a,code=sm_90a"
# torch's cpp_extension picks the C++ standard its headers need (C++17 for 2.11, C++20 for 2.14)
NVCC_FLAGS = [GENCODE, "-O3", "--expt-relaxed-constexpr", "-lineinfo",
              "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
              "-U__CUDA_NO_BFLOAT16_CONVERSIONS__"]
CXX_FLAGS = ["-O3"]

PREBUILT_MODULE = "sglang_flashcore._kernels"
LOCK_FILE = "flashcore.lock"
BUILT_MARKER = "BUILT"  # written last: the folder holds a complete build

_lock = threading.Lock()
_module = None
_prebuilt: Optional[Tuple[object, str]] = None


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


def include_dirs() -> List[str]:
    """The header folders of the build (the JIT build's and setup.py's)."""
    return [str(cuda_dir() / "include")] + wheel_cuda_includes()


def source_hash() -> str:
    h = hashlib.sha256()
    for path in sources() + headers():
        h.update(path.name.encode())
        h.update(path.read_bytes())
    h.update(torch.__version__.encode())
    h.update(" ".join(NVCC_FLAGS + CXX_FLAGS).encode())
    return h.hexdigest()[:16]


def module_name(digest: str) -> str:
    return f"flashcore_kernels_{digest}"


def build_dir(digest: Optional[str] = None) -> Path:
    """The cache folder of the JIT build of these sources (it may not exist yet)."""
    return config.cache_root() / (digest or source_hash())


def built_library(digest: Optional[str] = None) -> Optional[Path]:
    """The module file of a complete JIT build of these sources, or None."""
    digest = digest or source_hash()
    folder = build_dir(digest)
    library = folder / f"{module_name(digest)}.so"
    return library if (folder / BUILT_MARKER).is_file() and library.is_file() else None


def prebuilt() -> Tuple[Optional[object], str]:
    """(the prebuilt module, "") when ``sglang_flashcore._kernels`` is importable and was built
    for this torch and CUDA; else (None, one line saying why it is not used). Looked up once."""
    global _prebuilt
    if _prebuilt is None:
        _prebuilt = _find_prebuilt()
    return _prebuilt


def _find_prebuilt() -> Tuple[Optional[object], str]:
    try:
        if importlib.util.find_spec(PREBUILT_MODULE) is None:
            return None, f"no prebuilt kernels ({PREBUILT_MODULE} is not installed)"
        module = importlib.import_module(PREBUILT_MODULE)
    except Exception as exc:  # noqa: BLE001 - e.g. an undefined symbol of another torch
        return None, f"the prebuilt kernels do not import ({type(exc).__name__}: {exc})"
    built = (getattr(module, "TORCH_VERSION", None), getattr(module, "CUDA_VERSION", None))
    here = (torch.__version__, torch.version.cuda)
    if built != here:
        return None, (f"the prebuilt kernels are for torch {built[0]} with CUDA {built[1]}; "
                      f"this is torch {here[0]} with CUDA {here[1]}")
    return module, ""


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
    """Raises KernelBuildError unless a Hopper GPU is here, and nvcc or matching prebuilt kernels."""
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
    if find_nvcc() is None and prebuilt()[0] is None:
        raise KernelBuildError(f"flashcore: nvcc was not found (set CUDA_HOME); {hint}")


@contextmanager
def build_lock(folder: Path) -> Iterator[None]:
    """Holds ``flock`` on ``folder/flashcore.lock``: one builder at a time, across processes."""
    with open(folder / LOCK_FILE, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build(folder: Path, digest: str):
    """Compiles the sources into ``folder`` with torch's cpp_extension (ninja) and imports them."""
    from torch.utils.cpp_extension import load as load_extension

    return load_extension(
        name=module_name(digest),
        sources=[str(s) for s in sources()],
        extra_include_paths=include_dirs(),
        extra_cflags=CXX_FLAGS,
        extra_cuda_cflags=NVCC_FLAGS,
        build_directory=str(folder),
        verbose=config.verbose_build(),
    )


def _import_built(library: Path, digest: str):
    """Imports a complete JIT build (what torch's ``load`` does once ninja has nothing to do)."""
    spec = importlib.util.spec_from_file_location(module_name(digest), library)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _jit_load():
    """The JIT-built module: imported from the cache, or built there first under the lock."""
    digest = source_hash()
    folder = build_dir(digest)
    library = built_library(digest)
    if library is not None:  # complete builds never change: no lock needed
        return _import_built(library, digest)
    folder.mkdir(parents=True, exist_ok=True)
    with build_lock(folder):
        library = built_library(digest)  # another process may have built it while we waited
        if library is not None:
            return _import_built(library, digest)
        print(f"flashcore: building CUDA kernels for sm_90a into {folder} (first use, about a minute): "
              f"{prebuilt()[1]}", file=sys.stderr, flush=True)
        # torch <= 2.13 guards the folder with a lock file whose mere existence blocks (FileBaton):
        # one left by a killed build is stale, as we are the only builder
        (folder / "lock").unlink(missing_ok=True)
        module = _build(folder, digest)
        marker = folder / f"{BUILT_MARKER}.{os.getpid()}"
        marker.write_text(f"torch {torch.__version__}\n")
        os.replace(marker, folder / BUILT_MARKER)
        return module


def load():
    """The compiled extension module: the prebuilt one if it matches, else the JIT build."""
    global _module
    if _module is not None:
        return _module
    with _lock:
        if _module is not None:
            return _module
        check_device()
        module = prebuilt()[0]
        if module is None:
            try:
                module = _jit_load()
            except KernelBuildError:
                raise
            except Exception as exc:  # noqa: BLE001 - re-raised with the context a user needs
                raise KernelBuildError(f"flashcore: building the CUDA kernels failed: {exc}") from exc
        _module = module
        return _module
