"""Where the non-Python parts live: ``cuda/`` and ``configs/`` sit beside the package in a
checkout and inside it in an installed wheel (pyproject.toml maps them there)."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def data_dir(name: str, marker: str) -> Path:
    """The folder ``name`` (``cuda`` or ``configs``) that contains ``marker``."""
    for candidate in (_PACKAGE.parent / name, _PACKAGE / name):
        if (candidate / marker).exists():
            return candidate
    raise FileNotFoundError(f"flashcore: {name}/{marker} is not installed beside {_PACKAGE}")
