"""Every shell command in the README is copy-paste correct: each `cellserve ...` command (in a
bash block or inline code) parses with the real argument parser, `python -c` code compiles, and
the rest are the setup commands CI runs (command 2 is `.ci/run`'s)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from cellserve.cli import build_parser
from cellserve_client._cli import _parser as client_parser

README = Path(__file__).resolve().parents[1] / "README.md"
# commands the README shows that CI itself runs (.ci/run: the venv, the installs, the tests)
RUN_BY_CI = (
    "python3 -m venv .venv",
    ".venv/bin/pip install ",
    ".venv/bin/ruff ",
    ".venv/bin/mypy ",
    ".venv/bin/pytest",
    "scripts/install_tritonclient.sh",
    "bash .ci/run",
    "sudo scripts/install_test_tools.sh",
)


def shell_commands(markdown: str) -> list[str]:
    """Commands of the ```bash blocks (continuations joined, comments dropped, split at && and ;)
    plus inline `cellserve ...` and `python -c ...` spans."""
    out: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", markdown, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                out += [c.strip() for c in re.split(r"&&|;", line) if c.strip()]
    prose = re.sub(r"```.*?```", "", markdown, flags=re.S)
    out += [
        m for m in re.findall(r"`([^`\n]+)`", prose) if m.startswith(("cellserve ", "cellserve-client ", "python -c "))
    ]
    return out


def test_readme_has_commands() -> None:
    cmds = shell_commands(README.read_text())
    assert any(c.startswith("cellserve train ") for c in cmds)
    assert any(c.startswith("cellserve eval ") for c in cmds)
    assert not any("..." in c for c in cmds), [c for c in cmds if "..." in c]


@pytest.mark.parametrize("command", shell_commands(README.read_text()))
def test_readme_command_is_correct(command: str) -> None:
    if command.startswith("python -c "):
        code = shlex.split(command)[2]
        compile(code, "<README>", "exec")
        return
    if command.startswith(RUN_BY_CI):
        return
    if command.startswith("git archive "):  # the warm-start models: they must be in the history
        _check_git_archive(command)
        return
    argv = shlex.split(command)
    argv[0] = argv[0].rsplit("/", 1)[-1]
    parsers = {"cellserve": build_parser, "cellserve-client": client_parser}
    assert argv[0] in parsers, f"a README command no test checks: {command}"
    try:
        parsers[argv[0]]().parse_args(argv[1:])
    except SystemExit as e:  # argparse: 0 after --help, 2 for a flag it does not know
        assert e.code == 0, f"{argv[0]} rejects the README's command: {command}"


def test_ci_installs_the_tools_the_readme_names() -> None:
    """The README's one command for the tools that skipped tests need is the one CI runs."""
    ci = (README.parent / ".ci" / "run").read_text()
    assert "\nscripts/install_test_tools.sh\n" in ci
    assert "sudo scripts/install_test_tools.sh" in shell_commands(README.read_text())


def test_bench_writes_committed_results_only_when_asked() -> None:
    assert build_parser().parse_args(["bench", "--quick"]).out == Path("bench-results")
    assert build_parser().parse_args(["bench", "--out", "docs/benchmarks"]).out == Path("docs/benchmarks")


def _check_git_archive(command: str) -> None:
    import subprocess

    argv = shlex.split(command.split("|")[0])
    commit, paths = argv[2], argv[3:]
    root = README.parent
    if not (root / ".git").exists():
        pytest.skip("not a git checkout")
    for path in paths:
        found = subprocess.run(
            ["git", "cat-file", "-e", f"{commit}:{path}/model.json"], cwd=root, capture_output=True, check=False
        )
        if found.returncode != 0 and b"shallow" in subprocess.run(
            ["git", "rev-parse", "--is-shallow-repository"], cwd=root, capture_output=True, check=False
        ).stdout.replace(b"true", b"shallow"):
            pytest.skip("shallow clone: the history is not here")
        assert found.returncode == 0, f"{path} is not in commit {commit}"
