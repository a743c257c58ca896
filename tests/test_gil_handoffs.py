"""scripts/gil_handoffs.py runs every case on the shipped model and prints one line each."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gil_handoffs.py"


def test_every_case_prints_its_figures() -> None:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--rows", "8", "--calls", "5"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    lines = {ln[:26].strip(): re.findall(r"[0-9.]+|nan", ln[26:]) for ln in out.splitlines()[2:]}
    assert set(lines) == {"eager", "scripted", "scripted, inputs held", "int8 step", "int8 step, inputs held"}
    for fields in lines.values():  # alone (waits) beside (waits) ratio
        assert len(fields) == 5
        alone, waits, busy = float(fields[0]), float(fields[1]), float(fields[2])
        assert alone > 0 and busy > 0 and waits >= 0
