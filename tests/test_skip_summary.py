"""pytest's summary names each group of skipped tests, why, and the command that installs
what they need (``tests/skip_summary.py``), in a real pytest run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from skip_summary import INSTALL_TOOLS

TESTS = Path(__file__).resolve().parent


def test_the_summary_names_each_skipped_group(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text("from skip_summary import pytest_terminal_summary  # noqa: F401\n")
    (tmp_path / "test_tools.py").write_text(
        "import pytest\n"
        "def test_a(): pytest.skip('frobnicator is not installed')\n"
        "def test_b(): pytest.skip('frobnicator is not installed')\n"
        "@pytest.mark.skipif(True, reason='needs CUDA')\n"
        "def test_c(): pass\n"
        "def test_d(): pass\n"
    )
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    out = run.stdout
    assert run.returncode == 0, out + run.stderr
    assert "3 skipped, in 2 groups" in out
    assert "   2  frobnicator is not installed: test_tools.py (2)" in out
    assert "   1  needs CUDA: test_tools.py (1)" in out
    assert INSTALL_TOOLS in out and "sudo bash .ci/run" in out


def test_no_install_hint_when_no_tool_is_missing(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text("from skip_summary import pytest_terminal_summary  # noqa: F401\n")
    (tmp_path / "test_gap.py").write_text("import pytest\ndef test_a(): pytest.skip('a known gap')\n")
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(TESTS)},
        cwd=tmp_path,
        timeout=120,
    )
    assert "1 skipped, in 1 groups" in run.stdout and "a known gap" in run.stdout
    assert INSTALL_TOOLS not in run.stdout
