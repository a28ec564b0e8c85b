"""benchmarks/summarize.py and the committed results it reads (CPU only)."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"


def load_summarize():
    spec = importlib.util.spec_from_file_location("summarize", ROOT / "benchmarks" / "summarize.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def result_jsons():
    return sorted(p for p in RESULTS.rglob("*.json") if p.name != "index.json")


def copy_tree(tmp_path: Path):
    results = tmp_path / "results"
    shutil.copytree(RESULTS, results)
    readme = tmp_path / "README.md"
    shutil.copy(README, readme)
    return results, readme


def test_results_exist():
    assert result_jsons(), "no result JSON under benchmarks/results"


@pytest.mark.parametrize("path", result_jsons(), ids=lambda p: p.relative_to(RESULTS).as_posix())
def test_result_names_device_and_command(path):
    data = json.loads(path.read_text())
    info = data.get("info")
    assert isinstance(info, dict), f"{path}: no 'info'"
    for key in ("device", "command"):
        assert isinstance(info.get(key), str) and info[key].strip(), f"{path}: info has no {key}"
    assert isinstance(data.get("rows"), list) and data["rows"], f"{path}: no rows"


def test_layout_is_gpu_then_operation_with_one_json():
    summarize = load_summarize()
    folders = summarize.folders_of(RESULTS)
    assert folders
    for folder in folders:
        assert folder.parent.parent == RESULTS, f"{folder}: expected results/<gpu>/<operation>/"
        assert len(list(folder.glob("*.json"))) == 1, f"{folder}: expected one result JSON"
    assert not list(RESULTS.rglob("*.patch")), "patches belong in git history, cited in docs/experiments.md"


def test_index_covers_every_folder():
    summarize = load_summarize()
    index = json.loads((RESULTS / "index.json").read_text())
    folders = {f.relative_to(RESULTS).as_posix() for f in summarize.folders_of(RESULTS)}
    assert set(index) == folders
    for name, meta in index.items():
        assert meta.get("measured_at"), f"{name}: no commit"


def test_committed_files_are_up_to_date():
    summarize = load_summarize()
    assert summarize.main(["--check", "--results", str(RESULTS), "--readme", str(README)]) == 0


def test_regenerates_on_a_copy_deterministically(tmp_path):
    summarize = load_summarize()
    results, readme = copy_tree(tmp_path)
    for generated in results.rglob("README.md"):
        generated.unlink()
    args = ["--results", str(results), "--readme", str(readme)]
    assert summarize.main(args) == 0
    first = {p: p.read_text() for p in results.rglob("README.md")}
    assert summarize.main(args) == 0
    assert first == {p: p.read_text() for p in results.rglob("README.md")}
    for path, text in first.items():
        committed = RESULTS / path.relative_to(results)
        assert committed.read_text() == text, f"{committed} differs from a fresh run"
    assert summarize.main(["--check"] + args) == 0


def test_check_reports_a_stale_file(tmp_path):
    summarize = load_summarize()
    results, readme = copy_tree(tmp_path)
    page = next(results.rglob("*/README.md"))
    page.write_text(page.read_text() + "edited by hand\n")
    args = ["--results", str(results), "--readme", str(readme)]
    assert summarize.main(["--check"] + args) == 1
    assert summarize.main(args) == 0
    assert summarize.main(["--check"] + args) == 0


def test_readme_performance_table_between_markers():
    text = README.read_text()
    summarize = load_summarize()
    assert text.count(summarize.BEGIN) == 1 and text.count(summarize.END) == 1
    table = text.split(summarize.BEGIN, 1)[1].split(summarize.END, 1)[0]
    for folder in summarize.folders_of(RESULTS):
        assert folder.relative_to(RESULTS).as_posix() + "/" in table
