"""The checks every optional C extension gets (setup.py builds them where a compiler is, and the
code falls back to its Python reference where not): it is built wherever a C compiler and
Python's headers are, and from the source in the tree."""

from __future__ import annotations

import os
import shutil
import sysconfig
from pathlib import Path
from types import ModuleType

import pytest


def assert_missing_only_without_a_compiler(switch: str) -> None:
    """For an extension that did not load: ``switch`` (its environment variable) turned it off,
    or there is no compiler or no headers to build it with."""
    if os.environ.get(switch) == "0":
        pytest.skip(f"turned off by {switch}=0")
    compiler = shutil.which("cc") or shutil.which("gcc")
    headers = (Path(sysconfig.get_paths()["include"]) / "Python.h").exists()
    assert not (compiler and headers), "a C compiler and Python's headers are here: `pip install -e .` builds it"


def assert_built_from(module: ModuleType, source: Path) -> None:
    """``module`` was built after ``source`` last changed (when built in the tree, not installed)."""
    built = Path(str(module.__file__))
    if built.parent != source.parent:
        pytest.skip("installed as a wheel, not from this tree")
    assert built.stat().st_mtime >= source.stat().st_mtime, f"{source.name} changed since the build: `pip install -e .`"
