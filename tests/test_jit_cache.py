"""The JIT cache on CPU, with a fake build: processes that start together build once and all load
the same module; a complete build is imported without the lock; a matching prebuilt module is
used before the JIT build, and one line says why it is not; setup.py compiles the kernels only
with FLASHCORE_BUILD_KERNELS=1, from the JIT build's sources and flags."""

import importlib.machinery
import importlib.util
import os
import subprocess
import sys
import textwrap
import threading
import time
import types
from pathlib import Path

import pytest
import torch

from sglang_flashcore import _jit

ROOT = Path(__file__).resolve().parent.parent

# A process that waits for all the others, then loads with a fake build: it sleeps, counts itself
# in builds.txt and writes a module file whose text is its pid; "importing" reads that text.
WORKER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from sglang_flashcore import _jit

    out, procs = Path(sys.argv[1]), int(sys.argv[2])

    def fake_build(folder, digest):
        with open(out / "builds.txt", "a") as f:
            f.write(f"{os.getpid()}\\n")
        time.sleep(1.0)
        (folder / f"{_jit.module_name(digest)}.so").write_text(str(os.getpid()))
        return str(os.getpid())

    _jit.check_device = lambda device=None: None
    _jit._build = fake_build
    _jit._import_built = lambda library, digest: library.read_text()
    (out / f"ready.{os.getpid()}").touch()
    deadline = time.time() + 60
    while len(list(out.glob("ready.*"))) < procs and time.time() < deadline:
        time.sleep(0.01)
    print("module", _jit.load())
""")


def _fake_prebuilt(monkeypatch, module=None, reason="no prebuilt kernels (test)"):
    monkeypatch.setattr(_jit, "_prebuilt", (module, reason))


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """A fresh loader over an empty cache, no device check, no prebuilt kernels."""
    monkeypatch.setenv("FLASHCORE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(_jit, "_module", None)
    monkeypatch.setattr(_jit, "check_device", lambda device=None: None)
    _fake_prebuilt(monkeypatch)
    return tmp_path


def test_processes_starting_together_build_once(tmp_path):
    procs = 4
    env = dict(os.environ, FLASHCORE_CACHE=str(tmp_path / "cache"), PYTHONPATH=str(ROOT))
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    runs = [subprocess.Popen([sys.executable, str(script), str(tmp_path), str(procs)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(procs)]
    results = [run.communicate(timeout=300) for run in runs]
    for run, (out, err) in zip(runs, results):
        assert run.returncode == 0, err
    builders = (tmp_path / "builds.txt").read_text().split()
    assert len(builders) == 1
    loaded = [line.split()[1] for out, _ in results for line in out.splitlines() if line.startswith("module")]
    assert loaded == builders * procs  # all loaded the one build
    built_messages = sum("building CUDA kernels" in err for _, err in results)
    assert built_messages == 1
    assert "no prebuilt kernels" in "".join(err for _, err in results)


def test_threads_build_once_and_share_the_module(fresh, monkeypatch):
    builds = []

    def fake_build(folder, digest):
        builds.append(digest)
        time.sleep(0.2)
        (folder / f"{_jit.module_name(digest)}.so").write_text("x")
        return object()

    monkeypatch.setattr(_jit, "_build", fake_build)
    got = []
    threads = [threading.Thread(target=lambda: got.append(_jit.load())) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1 and len(got) == 6 and all(m is got[0] for m in got)


def test_a_complete_build_is_imported_without_building_or_locking(fresh, monkeypatch):
    digest = _jit.source_hash()
    folder = _jit.build_dir(digest)
    folder.mkdir(parents=True)
    library = folder / f"{_jit.module_name(digest)}.so"
    library.write_text("built")
    assert _jit.built_library(digest) is None  # no marker: an interrupted build
    (folder / _jit.BUILT_MARKER).write_text("")
    assert _jit.built_library(digest) == library

    def no(*args):
        raise AssertionError("must not build or lock")

    monkeypatch.setattr(_jit, "_build", no)
    monkeypatch.setattr(_jit, "build_lock", no)
    monkeypatch.setattr(_jit, "_import_built", lambda lib, dig: ("imported", lib, dig))
    assert _jit.load() == ("imported", library, digest)


def test_a_build_without_marker_is_built_again_and_marked(fresh, monkeypatch):
    digest = _jit.source_hash()
    folder = _jit.build_dir(digest)
    folder.mkdir(parents=True)
    (folder / f"{_jit.module_name(digest)}.so").write_text("partial")
    (folder / "lock").write_text("")  # a FileBaton of torch <= 2.13 left by a killed build
    calls = []

    def fake_build(f, d):
        assert not (f / "lock").exists()
        calls.append(d)
        return "module"

    monkeypatch.setattr(_jit, "_build", fake_build)
    assert _jit.load() == "module" and calls == [digest]
    assert _jit.built_library(digest) is not None
    assert "torch" in (folder / _jit.BUILT_MARKER).read_text()


def test_a_failed_build_is_a_kernel_build_error_and_leaves_no_marker(fresh, monkeypatch):
    def broken(folder, digest):
        raise RuntimeError("nvcc said no")

    monkeypatch.setattr(_jit, "_build", broken)
    with pytest.raises(_jit.KernelBuildError, match="nvcc said no"):
        _jit.load()
    assert not (_jit.build_dir() / _jit.BUILT_MARKER).exists()


# ---------------------------------------------------------------------------- prebuilt
def _install_fake_kernels(monkeypatch, **attrs):
    module = types.ModuleType(_jit.PREBUILT_MODULE)
    module.__spec__ = importlib.machinery.ModuleSpec(_jit.PREBUILT_MODULE, None)
    for key, value in attrs.items():
        setattr(module, key, value)
    monkeypatch.setitem(sys.modules, _jit.PREBUILT_MODULE, module)
    monkeypatch.setattr(_jit, "_prebuilt", None)
    return module


def test_no_prebuilt_module_says_why(monkeypatch):
    monkeypatch.setattr(_jit, "_prebuilt", None)
    module, reason = _jit.prebuilt()
    assert module is None and reason == "no prebuilt kernels (sglang_flashcore._kernels is not installed)"


def test_a_matching_prebuilt_module_is_used_before_the_jit_build(fresh, monkeypatch):
    fake = _install_fake_kernels(monkeypatch, TORCH_VERSION=torch.__version__, CUDA_VERSION=torch.version.cuda)
    assert _jit.prebuilt() == (fake, "")
    monkeypatch.setattr(_jit, "_jit_load", lambda: pytest.fail("the JIT build must not run"))
    assert _jit.load() is fake


def test_a_prebuilt_module_of_another_torch_is_not_used(fresh, monkeypatch):
    _install_fake_kernels(monkeypatch, TORCH_VERSION="2.0.0", CUDA_VERSION="11.8")
    module, reason = _jit.prebuilt()
    assert module is None
    assert reason == (f"the prebuilt kernels are for torch 2.0.0 with CUDA 11.8; "
                      f"this is torch {torch.__version__} with CUDA {torch.version.cuda}")
    assert "\n" not in reason
    monkeypatch.setattr(_jit, "_jit_load", lambda: "jit")
    assert _jit.load() == "jit"


def test_a_prebuilt_module_without_versions_is_not_used(monkeypatch):
    _install_fake_kernels(monkeypatch)
    module, reason = _jit.prebuilt()
    assert module is None and "torch None with CUDA None" in reason


def test_a_prebuilt_module_file_in_the_package_is_found_and_used(fresh, monkeypatch, tmp_path):
    """What an ahead-of-time wheel installs: a module file ``_kernels`` inside the package (here a
    Python file standing in for the .so) that records the torch and CUDA it was built for."""
    import sglang_flashcore

    folder = tmp_path / "wheel"
    folder.mkdir()
    (folder / "_kernels.py").write_text(f"TORCH_VERSION = {torch.__version__!r}\nCUDA_VERSION = {torch.version.cuda!r}\n")
    monkeypatch.setattr(sglang_flashcore, "__path__", list(sglang_flashcore.__path__) + [str(folder)])
    monkeypatch.delitem(sys.modules, _jit.PREBUILT_MODULE, raising=False)
    monkeypatch.setattr(_jit, "_prebuilt", None)
    module, reason = _jit.prebuilt()
    assert reason == "" and Path(module.__file__) == folder / "_kernels.py"
    monkeypatch.setattr(_jit, "_jit_load", lambda: pytest.fail("the JIT build must not run"))
    assert _jit.load() is module


# ------------------------------------------------------------------ setup.py (the ahead-of-time build)
def _setup_module():
    spec = importlib.util.spec_from_file_location("flashcore_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # not __main__: setup() does not run
    return module


@pytest.mark.parametrize("value", [None, "", "0"])
def test_the_build_compiles_no_kernels_by_default(monkeypatch, value):
    if value is None:
        monkeypatch.delenv("FLASHCORE_BUILD_KERNELS", raising=False)
    else:
        monkeypatch.setenv("FLASHCORE_BUILD_KERNELS", value)
    assert _setup_module().kernel_build() == {}


def test_the_kernel_build_uses_the_jit_builds_sources_and_flags(monkeypatch):
    """FLASHCORE_BUILD_KERNELS=1: one extension, sglang_flashcore._kernels, of the JIT build's
    sources, headers and flags, and a build_ext that records the versions (nothing compiles here)."""
    from torch.utils import cpp_extension

    made = {}
    monkeypatch.setattr(cpp_extension, "CUDAExtension", lambda **kw: made.update(kw) or "extension")
    monkeypatch.setenv("FLASHCORE_BUILD_KERNELS", "1")
    setup = _setup_module()
    if torch.version.cuda is None:
        with pytest.raises(SystemExit, match="CUDA build of torch"):
            setup.kernel_build()
        return
    options = setup.kernel_build()
    assert options["ext_modules"] == ["extension"]
    assert issubclass(options["cmdclass"]["build_ext"], cpp_extension.BuildExtension)
    assert made["name"] == _jit.PREBUILT_MODULE == "sglang_flashcore._kernels"
    assert [ROOT / s for s in made["sources"]] == _jit.sources() and not any(Path(s).is_absolute() for s in made["sources"])
    assert made["include_dirs"] == _jit.include_dirs()
    assert made["extra_compile_args"]["nvcc"] == _jit.NVCC_FLAGS
    assert made["extra_compile_args"]["cxx"][:len(_jit.CXX_FLAGS)] == _jit.CXX_FLAGS
    assert "-DFLASHCORE_PREBUILT" in made["extra_compile_args"]["cxx"]


def test_the_binding_records_the_versions_setup_writes():
    """cuda/binding.cpp includes setup.py's header and sets the attributes _jit.prebuilt() reads."""
    binding = (ROOT / "cuda" / "binding.cpp").read_text()
    setup = (ROOT / "setup.py").read_text()
    assert f'#include "{_setup_module().PREBUILT_HEADER}"' in binding
    for attribute in ("TORCH_VERSION", "CUDA_VERSION"):
        assert f'm.attr("{attribute}") = FLASHCORE_{attribute};' in binding
        assert f'"FLASHCORE_{attribute}"' in setup
