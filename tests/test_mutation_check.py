"""tools/mutation_check.py stays in step with the kernels: every mutation still applies to the
tree (its text appears exactly once) and names test files that exist."""

import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import mutation_check  # noqa: E402


@pytest.mark.parametrize("mutation", mutation_check.MUTATIONS, ids=lambda m: m.name)
def test_every_mutation_applies_once_and_names_real_tests(mutation, tmp_path):
    target = tmp_path / mutation.path
    target.parent.mkdir(parents=True)
    shutil.copy(ROOT / mutation.path, target)
    mutation_check.apply(mutation, tmp_path)
    assert target.read_text() != (ROOT / mutation.path).read_text()
    for test in mutation.tests:
        assert (ROOT / test).is_file(), test


def test_a_mutation_that_no_longer_applies_is_an_error(tmp_path):
    (tmp_path / "k.cu").write_text("int x = 1;\nint x = 1;\n")
    stale = mutation_check.Mutation("twice", "k.cu", "int x = 1;", "int x = 2;", [])
    with pytest.raises(ValueError, match="appears 2 times"):
        mutation_check.apply(stale, tmp_path)
