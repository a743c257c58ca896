"""scripts/ledger_cost.py runs end to end: every row of its table, the contended one included
(a second process charging the same shared ledger), and the dict-based baseline of an older
commit when the history has it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "a4b91e6"  # the last commit before the ledger


def _run(*args: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "ledger_cost.py"), "--calls", "2000", *args],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    return out.splitlines()


def _figures(line: str) -> list[float]:
    return [float(x) for x in line.split()[-3:]]


def test_every_ledger_shape_is_timed() -> None:
    lines = _run()
    names = [line[:42].strip() for line in lines[1:]]
    assert names == ["ledger, local", "ledger, shared, uncontended", "ledger, shared, another process charging"]
    assert all(v > 0 for line in lines[1:] for v in _figures(line))


def test_the_baseline_is_the_older_commits_admission() -> None:
    has = subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{BASELINE}^{{commit}}"], capture_output=True)
    if has.returncode != 0:
        pytest.skip(f"{BASELINE} is not in this clone's history")
    lines = _run("--before", BASELINE)
    assert lines[1].startswith(f"dicts ({BASELINE})") and all(v > 0 for v in _figures(lines[1]))
