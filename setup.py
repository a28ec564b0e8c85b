"""The package's build; pyproject.toml holds its metadata.

By default the wheel is pure Python and the CUDA kernels are built on first use (the JIT build of
``sglang_flashcore/_jit.py``). With ``FLASHCORE_BUILD_KERNELS=1`` it also compiles ``cuda/`` for
sm_90a into ``sglang_flashcore._kernels``, with the JIT build's sources and flags, against the
torch of the build environment, and records that torch's version and CUDA version in the module:
at import, ``_jit.prebuilt()`` uses it only under the same torch and CUDA. torch must be
importable while building, so build without isolation::

    FLASHCORE_BUILD_KERNELS=1 MAX_JOBS=4 pip wheel --no-build-isolation --no-deps -w dist .
    FLASHCORE_BUILD_KERNELS=1 python -m build --wheel --no-isolation

nvcc comes from ``CUDA_HOME`` (else PATH); its major version must be torch's CUDA major.
"""

import json
import os
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
BUILD_KERNELS = "FLASHCORE_BUILD_KERNELS"
PREBUILT_HEADER = "flashcore_prebuilt.h"  # included by cuda/binding.cpp under FLASHCORE_PREBUILT


def kernel_build() -> dict:
    """setup()'s ext_modules and cmdclass for the ahead-of-time build; nothing without the env var."""
    if os.environ.get(BUILD_KERNELS, "") in ("", "0"):
        return {}
    try:
        import torch
        from torch.utils.cpp_extension import BuildExtension, CUDAExtension
    except ImportError as exc:
        raise SystemExit(f"{BUILD_KERNELS}=1 needs torch in the build environment ({exc}): "
                         "build with pip's --no-build-isolation (python -m build: --no-isolation)")
    if torch.version.cuda is None:
        raise SystemExit(f"{BUILD_KERNELS}=1 needs a CUDA build of torch; this is torch {torch.__version__}")
    sys.path.insert(0, str(ROOT))
    from sglang_flashcore import _jit  # the JIT build's sources, flags and header folders

    versions = {"FLASHCORE_TORCH_VERSION": torch.__version__, "FLASHCORE_CUDA_VERSION": torch.version.cuda}

    class BuildKernels(BuildExtension):
        """Writes the header that records the torch and CUDA versions, then builds as torch does."""

        def build_extensions(self):
            folder = Path(self.build_temp).resolve() / "flashcore_prebuilt"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / PREBUILT_HEADER).write_text(
                "".join(f"#define {name} {json.dumps(value)}\n" for name, value in versions.items()))
            for ext in self.extensions:
                ext.include_dirs.append(str(folder))
            print(f"flashcore: building the CUDA kernels for sm_90a against torch {torch.__version__} "
                  f"(CUDA {torch.version.cuda})", flush=True)
            super().build_extensions()

    kernels = CUDAExtension(
        name=_jit.PREBUILT_MODULE,
        sources=[os.path.relpath(s, ROOT) for s in _jit.sources()],
        include_dirs=_jit.include_dirs(),
        # -g0: Python's CFLAGS add -g, which the JIT build does not (it would quadruple the module)
        extra_compile_args={"cxx": _jit.CXX_FLAGS + ["-g0", "-DFLASHCORE_PREBUILT"], "nvcc": _jit.NVCC_FLAGS},
    )
    return {"ext_modules": [kernels], "cmdclass": {"build_ext": BuildKernels}}


if __name__ == "__main__":  # setuptools' build backend runs this file as __main__; tests import it
    setup(**kernel_build())
