"""scripts/ab_servers.py end to end: two real servers (here both from this tree, so the two
must measure alike), closed-loop load on loopback, alternating windows, the per-round and
median report; a path that is no tree is refused."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "ab_servers.py"


def test_two_servers_of_one_tree_measure_alike() -> None:
    """(B with speculation off: under a closed loop speculation never runs, so still alike.)"""
    args = [str(ROOT), str(ROOT), "--n", "4", "--rounds", "2", "--window", "1.5", "--warmup", "0.3"]
    args += ["--b-args", "--set speculation=false"]  # B's own serve arguments reach it
    out = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rounds = re.findall(r"round (\d): A ([\d.]+), B ([\d.]+) us/keystroke .*; A \d+, B \d+ keystrokes/s", out.stdout)
    assert [r[0] for r in rounds] == ["1", "2"]
    for _, a, b in rounds:
        assert float(a) > 0 and float(b) > 0
        assert 0.2 < float(b) / float(a) < 5  # the same server: alike up to the box's noise
    assert re.search(r"median over 2 rounds: B - A [+-][\d.]+ us/keystroke .* B / A [\d.]+; keystrokes/s", out.stdout)


def test_completions_are_compared_in_the_same_windows() -> None:
    args = [str(ROOT), str(ROOT), "--complete", "2", "--rounds", "2", "--window", "1.5", "--warmup", "0.3"]
    out = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rounds = re.findall(
        r"round (\d): B=2 A ([\d]+), B ([\d]+) chars/s; completion p50 A [\d.]+, B [\d.]+ ms", out.stdout
    )
    assert [r[0] for r in rounds] == ["1", "2"]
    assert all(int(a) > 0 and int(b) > 0 for _, a, b in rounds)
    assert re.search(r"median over 2 rounds: chars/s B / A [\d.]+ \(range", out.stdout)


def test_a_path_that_is_no_tree_is_refused(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), str(ROOT)], capture_output=True, text=True)
    assert out.returncode != 0 and "no server/cellserve here" in out.stderr


def test_a_sides_own_arguments_reach_its_server() -> None:
    bad = [str(ROOT), str(ROOT), "--b-args", "--no-such-flag", "--rounds", "1"]
    out = subprocess.run([sys.executable, str(SCRIPT), *bad], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "round 1" not in out.stdout
