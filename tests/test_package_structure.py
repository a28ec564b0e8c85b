"""The package's shape, checked on CPU: the policy numbers the CUDA side shares agree with
``heuristics.h``, the modules import each other without a circle and without reaching into each
other's private names, and only ``kernels.py`` touches the compiled extension."""

import ast
import re
from pathlib import Path

from sglang_flashcore import heuristics

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "sglang_flashcore"
HEADER = ROOT / "cuda" / "include" / "flashcore" / "heuristics.h"


def header_constants() -> dict:
    """``constexpr int kName = <integer>;`` lines of heuristics.h."""
    pattern = re.compile(r"^\s*(?:inline\s+)?constexpr\s+int\s+(k\w+)\s*=\s*(-?\d+)\s*;", re.MULTILINE)
    return {name: int(value) for name, value in pattern.findall(HEADER.read_text())}


def test_mirrored_constants_agree_with_the_header():
    constants = header_constants()
    assert len(constants) >= len(heuristics.MIRRORED)
    for py_name, cpp_name in heuristics.MIRRORED.items():
        assert cpp_name in constants, f"{cpp_name} is not a literal constant of {HEADER.name}"
        assert getattr(heuristics, py_name) == constants[cpp_name], f"{py_name} != {cpp_name}"


def test_kernel_head_dim_agrees_with_the_header(tmp_path):
    """heuristics.h's kernel_head_dim_for, compiled by the host compiler, against the Python mirror
    for every head dim up to 300 (which compiled kernel serves it, padded or not)."""
    import shutil
    import subprocess

    import pytest

    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no host C++ compiler")
    src = tmp_path / "dims.cpp"
    src.write_text('#include <cstdio>\n#include "flashcore/heuristics.h"\n'
                   "int main() { for (int d = 0; d <= 300; ++d) std::printf(\"%d\\n\", "
                   "flashcore::kernel_head_dim_for(d)); }\n")
    subprocess.run([cxx, "-std=c++17", "-I", str(HEADER.parent.parent), str(src), "-o", str(tmp_path / "dims")],
                   check=True)
    out = subprocess.run([str(tmp_path / "dims")], check=True, capture_output=True, text=True).stdout.split()
    assert [int(x) for x in out] == [heuristics.kernel_head_dim(d) for d in range(301)]
    assert heuristics.kernel_head_dim(96) == 128 and heuristics.kernel_head_dim(192) == 256
    assert heuristics.DENSE_HEAD_DIMS == tuple(range(64, 257, 16))


def test_policy_constants_are_defined_once_on_the_cuda_side():
    names = list(header_constants())
    for path in sorted((ROOT / "cuda").rglob("*")):
        if path.suffix not in (".h", ".cuh", ".cu", ".cpp") or path == HEADER:
            continue
        text = path.read_text()
        for name in names:
            assert not re.search(rf"constexpr\s+\w+\s+{name}\s*=", text), f"{name} is defined again in {path.name}"


def _imports(path: Path):
    """(module imported from the package, names) for every import in the file, nested ones too."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                yield node.module.split(".")[0], [a.name for a in node.names]
            else:  # from . import a, b
                for alias in node.names:
                    yield alias.name, []
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sglang_flashcore"):
            parts = node.module.split(".")
            if len(parts) > 1:
                yield parts[1], [a.name for a in node.names]
            else:  # from sglang_flashcore import a, b
                for alias in node.names:
                    yield alias.name, []
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "sglang_flashcore" and len(parts) > 1:
                    yield parts[1], []


def _graph():
    modules = {p.stem: p for p in PACKAGE.glob("*.py")}
    return {name: {m for m, _ in _imports(path) if m in modules and m != name} for name, path in modules.items()}


def test_no_import_circle():
    graph = _graph()
    state = {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                raise AssertionError("import circle: " + " -> ".join(stack + [node, nxt]))
            if nxt not in state:
                visit(nxt, stack + [node])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


def test_no_module_imports_another_modules_private_names():
    for path in sorted(PACKAGE.glob("*.py")):
        for module, names in _imports(path):
            private = [n for n in names if n.startswith("_") and n != "__version__"]
            assert not private, f"{path.name} imports {private} from {module}"


def test_only_kernels_touches_the_extension():
    """``kernels`` loads the extension; ``doctor`` reads the build's facts (cache path, source hash,
    nvcc) from ``_jit`` and must never load or build it (``tests/test_doctor.py`` checks that)."""
    users = sorted(p.stem for p in PACKAGE.glob("*.py") if any(m == "_jit" for m, _ in _imports(p)))
    assert users == ["doctor", "kernels"]
