"""scripts/engine_phases: the hook that times the engine core's phases inside a server process
(``cpu_by_thread.py`` with PHASES=1) writes the steps, rows and phase CPU of the process that
steps the core, and nothing for a process that never steps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOOK = ROOT / "scripts" / "engine_phases"


def _env(folder: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HOOK), env.get("PYTHONPATH")) if p)
    env["ENGINE_PHASES_DIR"] = str(folder)
    return env


def test_a_process_that_steps_the_core_writes_its_phases(tmp_path: Path) -> None:
    # profile_core steps a real core on the shipped model: 3 sessions, 4 rounds (+1 warm-up)
    script = (
        "import sys, time; sys.argv = ['profile_core', '3', '4']; "
        f"sys.path.insert(0, {str(ROOT / 'scripts')!r}); import profile_core; profile_core.main(); time.sleep(0.4)"
    )
    subprocess.run([sys.executable, "-c", script], env=_env(tmp_path), check=True, capture_output=True, timeout=300)
    files = list(tmp_path.glob("*.json"))
    assert len(files) == 1
    data = json.loads(files[0].read_text())
    assert data["steps"] >= 4 and data["rows"] >= 3 * data["steps"] - 3
    assert sum(data["iteration_steps"].values()) == data["steps"]  # keystroke steps: one each
    assert set(data["iteration_steps"]) == {"1"}
    assert {"EngineCore.step", "ModelRunner._forward", "StepUpdate.apply"} <= set(data["cpu_s"])
    assert data["cpu_s"]["EngineCore.step"] >= data["cpu_s"]["ModelRunner._forward"] > 0


def test_a_process_that_never_steps_writes_nothing(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-c", "import time; time.sleep(0.3)"], env=_env(tmp_path), check=True, timeout=120)
    time.sleep(0.1)
    assert list(tmp_path.iterdir()) == []
