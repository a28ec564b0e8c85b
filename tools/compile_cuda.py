"""CI's compile check: every translation unit under cuda/ through nvcc for sm_90a, no GPU needed.

``binding.cpp`` is compiled with torch's headers (host code); each ``.cu`` with nvcc's
device compiler. A kernel that does not compile fails this script (exit 1). So does a kernel
whose wgmmas ptxas serialized (a wait after every HGMMA: see ``serialized_wgmma_kernels``), when
a cuobjdump is at hand to read the SASS. ``--sass`` also prints the HGMMA and HMMA counts.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sglang_flashcore._jit import GENCODE, NVCC_FLAGS, cuda_dir, find_nvcc, sources, wheel_cuda_includes  # noqa: E402


def torch_includes():
    from torch.utils.cpp_extension import include_paths

    return include_paths(device_type="cuda") if "device_type" in include_paths.__code__.co_varnames else include_paths(cuda=True)


def find_cuobjdump():
    """cuobjdump from the toolkit, or the copy Triton's wheel carries."""
    import shutil

    found = shutil.which("cuobjdump")
    if found:
        return found
    try:
        import triton

        path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
        return str(path) if path.is_file() else None
    except ImportError:
        return None


def sass_functions(sass: str) -> Dict[str, List[str]]:
    """``cuobjdump --dump-sass`` output split into each function's instruction lines."""
    functions: Dict[str, List[str]] = {}
    current: Optional[List[str]] = None
    for line in sass.splitlines():
        if "Function : " in line:
            current = functions.setdefault(line.split("Function : ", 1)[1].strip(), [])
        elif current is not None and "/*" in line:
            current.append(line)
    return functions


def serialized_wgmma_kernels(sass: str) -> List[str]:
    """Kernels whose HGMMAs never run back to back: a ``WARPGROUP.DEPBAR`` (a wait for wgmma
    results) stands between every two of them. ptxas does that when it cannot follow the
    accumulators through the kernel's control flow (C7519/C7520 in its output, though not
    always); our attention tiles chain 4 to 8 k-steps per wait, and the kernel runs 30-40%
    slower when they are serialized (docs/performance.md)."""
    found = []
    for name, lines in sass_functions(sass).items():
        run, longest, count = 0, 0, 0
        for line in lines:
            if "HGMMA" in line:
                run, count = run + 1, count + 1
                longest = max(longest, run)
            elif "WARPGROUP.DEPBAR" in line:
                run = 0
        if count > 1 and longest < 2:
            found.append(name)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sass", action="store_true", help="count HGMMA/HMMA instructions in the SASS")
    args = parser.parse_args()
    nvcc = find_nvcc()
    if nvcc is None:
        print("compile_cuda: nvcc not found", file=sys.stderr)
        return 1
    includes = [f"-I{cuda_dir() / 'include'}"] + [f"-I{p}" for p in torch_includes() + wheel_cuda_includes()]
    cuobjdump = find_cuobjdump()  # reads the SASS for the serialization check (skipped without one)
    failed = 0
    with tempfile.TemporaryDirectory() as out:
        for src in sources():
            obj = Path(out) / (src.name + ".o")
            if src.suffix == ".cu":
                cmd = [nvcc, "-c", str(src), "-o", str(obj), *NVCC_FLAGS, "-std=c++20", *includes[:1], "-Xptxas=-v"]
            else:  # host code with torch headers, through nvcc so CUDA's headers are found
                import sysconfig

                cmd = [nvcc, "-c", "-x", "cu", str(src), "-o", str(obj), GENCODE, "-std=c++20", "-O1",
                       *includes, f"-I{sysconfig.get_paths()['include']}", "-DTORCH_EXTENSION_NAME=flashcore_check",
                       "-D_GLIBCXX_USE_CXX11_ABI=1"]
            print("compile_cuda:", src.name, flush=True)
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                failed += 1
                print(res.stdout, res.stderr, sep="\n", file=sys.stderr)
                continue
            spills = [line for line in res.stderr.splitlines() if "spill" in line and " 0 bytes spill" not in line]
            for line in spills:
                print("  ", line.strip())
            if cuobjdump and src.suffix == ".cu":
                sass = subprocess.run([cuobjdump, "--dump-sass", str(obj)], capture_output=True, text=True).stdout
                if args.sass:
                    print(f"   SASS: {sass.count('HGMMA')} HGMMA, {sass.count('HMMA')} HMMA instructions")
                for name in serialized_wgmma_kernels(sass):
                    failed += 1
                    print(f"compile_cuda: {src.name}: ptxas serialized the wgmmas of {name} "
                          "(a WARPGROUP.DEPBAR after every HGMMA)", file=sys.stderr)
            for line in res.stderr.splitlines():
                if "registers" in line:
                    print("  ", line.strip())
    print("compile_cuda:", "FAILED" if failed else "all translation units compile for sm_90a")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
