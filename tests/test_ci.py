"""CI runs the README's test command: the same steps, in the same order."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _steps(command: str) -> list[str]:
    return [" ".join(step.replace("-q torch", "torch").split()) for step in command.split("&&")]


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"# 2\. set up and run the tests\n(.*?)\n```", readme, flags=re.S)
    assert block is not None
    readme_steps = _steps(block.group(1).replace("\\\n", " "))
    ci = (ROOT / ".ci" / "run").read_text()
    tail = ci[ci.index("python3 -m venv .venv\n") :]
    ci_steps = _steps(" && ".join(line for line in tail.splitlines() if line and not line.startswith("#")))
    assert ci_steps == readme_steps
    assert readme_steps[-1].endswith("pytest -q -W error")
    assert any(s.startswith(".venv/bin/mypy --strict") for s in readme_steps)
