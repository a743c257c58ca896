"""The skip summary: a test that skips for want of a tool must not pass for a tested one. At the
end of a run, each group of skipped tests is named with its reason, its files, and the one
command that installs what they need (``tests/conftest.py`` registers the hook)."""

from __future__ import annotations

import pytest

INSTALL_TOOLS = "sudo scripts/install_test_tools.sh"


def _wants_a_tool(reason: str) -> bool:
    """A skip for a missing tool (its reason says how to install it), not a known gap or CUDA."""
    return "install" in reason or "no kustomize renderer" in reason


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return reason.removeprefix("Skipped: ")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if isinstance(r, pytest.TestReport)]
    if not skipped:
        return
    groups: dict[str, dict[str, int]] = {}  # reason -> file -> skipped tests
    for report in skipped:
        files = groups.setdefault(_skip_reason(report), {})
        path = report.nodeid.split("::", 1)[0]
        files[path] = files.get(path, 0) + 1
    tw = terminalreporter
    tw.write_sep("=", f"{len(skipped)} skipped, in {len(groups)} groups (not tested on this machine)")
    for reason, files in sorted(groups.items(), key=lambda kv: -sum(kv[1].values())):
        where = ", ".join(f"{p} ({n})" for p, n in sorted(files.items()))
        tw.write_line(f"{sum(files.values()):4d}  {reason}: {where}")
    if any(_wants_a_tool(reason) for reason in groups):
        tw.write_line(
            f"Tools pip does not install: `{INSTALL_TOOLS}` installs them (apt, npm, venvs of their own), "
            "`sudo bash .ci/run` installs and runs everything; tests marked gpu need CUDA."
        )
