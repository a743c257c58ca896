"""The `cellserve-client` command: models, predict, complete as subprocesses; `type` driven in
tmux (send-keys, capture-pane)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from cellserve_client import Client
from cellserve_client._cli import RANKED, Typer
from servers import ServerProcess

CLI = [sys.executable, "-m", "cellserve_client._cli"]
SUGGEST = 12


def cli(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "--target", server.target, *args], capture_output=True, text=True, timeout=120)


def test_models(server: ServerProcess) -> None:
    out = cli(server, "models")
    assert out.returncode == 0, out.stderr
    assert "tiny-lstm (default)\tlstm\t2x32\tbits/char 2.500" in out.stdout


def test_predict_matches_the_sdk(server: ServerProcess) -> None:
    out = cli(server, "predict", "hello wor", "--top-k", "3")
    assert out.returncode == 0, out.stderr
    with Client(server.target) as c, c.open() as s:
        want = s.append("hello wor", top_k=3)
    assert out.stdout.splitlines() == [f"{ch!r}\t{p:.4f}" for ch, p in want.top]


def test_complete_matches_the_sdk(server: ServerProcess) -> None:
    out = cli(server, "complete", "once upon", "--max-chars", "9", "--n", "2", "--temperature", "0.7", "--seed", "5")
    assert out.returncode == 0, out.stderr
    with Client(server.target) as c, c.open() as s:
        s.append("once upon")
        want = s.complete(max_chars=9, n=2, temperature=0.7, seed=5).collect()
    assert out.stdout.splitlines() == [f"[{x.alternative}] {x.text!r}" for x in want]


def test_errors_are_one_line(server: ServerProcess) -> None:
    out = cli(server, "--model", "nope", "predict", "x")
    assert out.returncode == 1 and out.stderr.startswith("cellserve-client: ModelNotFound:")


def _top(server: ServerProcess, text: str) -> list[str]:
    with Client(server.target) as c, c.open() as s:
        return [ch for ch, _ in s.append(text).top]


def test_backspace_refreshes_the_probabilities(server: ServerProcess) -> None:
    """After a pure deletion the toolbar's probabilities are those of the text left on screen,
    on the first line and on a later one, and none at the very start."""
    with Client(server.target) as c, c.open() as s:
        typer = Typer(s, SUGGEST)
        typer.sync("hello")
        typer.sync("helloq")
        assert typer.prediction is not None and [ch for ch, _ in typer.prediction.top] == _top(server, "helloq")
        typer.sync("hel")  # Backspace x3: nothing appended
        assert s.position == 3
        assert [ch for ch, _ in typer.prediction.top] == _top(server, "hel")
        typer.sync("")
        assert s.position == 0 and typer.prediction is None
        typer.sync("ab")
        typer.newline()
        typer.sync("cd")
        typer.sync("")  # back to the start of the second line: the prediction after "ab\n"
        assert s.position == 3 and [ch for ch, _ in typer.prediction.top] == _top(server, "ab\n")


# --- type, in tmux ------------------------------------------------------------------------------


def _ghost_for(server: ServerProcess, text: str) -> str:
    """What `type` should show after ``text``: the greedy continuation up to a line break."""
    with Client(server.target) as c, c.open() as s:
        if text:
            s.append(text)
        full = s.complete(max_chars=SUGGEST, stop=["\n"]).collect()[0].text
    return str(full).split("\n")[0]


@pytest.fixture
def tmux(server: ServerProcess) -> Iterator[Callable[..., str]]:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    pytest.importorskip("prompt_toolkit")
    name = f"cs-{uuid.uuid4().hex[:8]}"
    socket = f"cellserve-test-{name}"  # a server of our own: never touches the user's tmux
    cmd = " ".join([*CLI, "--target", server.target, "type", "--suggest-chars", str(SUGGEST)])
    base = ["tmux", "-L", socket]
    subprocess.run([*base, "new-session", "-d", "-s", name, "-x", "120", "-y", "20", cmd], check=True, timeout=30)

    def run(*args: str) -> str:
        return subprocess.run([*base, *args], check=True, capture_output=True, text=True, timeout=30).stdout

    try:
        yield run
    finally:
        subprocess.run([*base, "kill-server"], capture_output=True, timeout=30)


def _prompt_line(screen: str) -> str:
    return next((line for line in screen.splitlines() if line.startswith("> ")), "")


def _wait_for(run: Callable[..., str], want: str, *, escapes: bool = False, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    line = screen = ""
    while time.monotonic() < deadline:
        screen = run("capture-pane", "-p", *(["-e"] if escapes else []))
        line = _prompt_line(screen) if not escapes else screen
        if want in line if escapes else line.rstrip() == want.rstrip():
            return line
        time.sleep(0.2)
    raise AssertionError(f"expected {want!r}, screen line was {line!r}; screen:\n{screen}")


def test_type_ghost_tab_and_backspace(server: ServerProcess, tmux: Callable[..., str]) -> None:
    run = tmux
    typed = "hello"
    ghost = _ghost_for(server, typed)
    assert ghost, "the model suggests nothing here; pick another prefix"
    _wait_for(run, f"> {_ghost_for(server, '')}")  # the editor is up (keys sent earlier would echo)
    run("send-keys", "-l", typed)
    _wait_for(run, f"> {typed}{ghost}")  # the ghost follows the cursor...
    styled = _wait_for(run, typed, escapes=True)
    assert "\x1b[" in styled.split(typed, 1)[1].split(ghost[:1], 1)[0] or ghost == ""  # ...dimmed (styled)

    run("send-keys", "-l", "q")
    ghost_q = _ghost_for(server, typed + "q")
    _wait_for(run, f"> {typed}q{ghost_q}")

    run("send-keys", "BSpace")  # rewinds the session: the suggestion is that of "hello" again
    _wait_for(run, f"> {typed}{ghost}")

    run("send-keys", "Tab")  # accepts the suggestion: the text now includes it, a new ghost follows
    accepted = typed + ghost
    _wait_for(run, f"> {accepted}{_ghost_for(server, accepted)}")
    run("send-keys", "C-d")


def test_type_ctrl_space_cycles_ranked_suggestions(server: ServerProcess, tmux: Callable[..., str]) -> None:
    run = tmux
    typed = "def ma"
    with Client(server.target) as c, c.open() as s:
        s.append(typed)
        ranked = [x.text for x in s.suggest(n=RANKED, scope="word", max_chars=SUGGEST)]
    assert len(ranked) >= 2, "the model ranks fewer than two words here; pick another prefix"
    _wait_for(run, f"> {_ghost_for(server, '')}")
    run("send-keys", "-l", typed)
    _wait_for(run, f"> {typed}{_ghost_for(server, typed)}")
    run("send-keys", "C-Space")  # the most probable word completion
    _wait_for(run, f"> {typed}{ranked[0]}")
    run("send-keys", "C-Space")  # the next one
    _wait_for(run, f"> {typed}{ranked[1]}")
    run("send-keys", "Tab")  # accepts the one shown
    accepted = typed + ranked[1]
    _wait_for(run, f"> {accepted}{_ghost_for(server, accepted)}")
    run("send-keys", "C-d")
