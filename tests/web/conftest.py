"""Web test fixtures: a real `cellserve serve` on the shipped models and a real
`cellserve-client web` subprocess in front of it, both on free loopback ports."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import SNAPSHOT_KEY, ServerProcess, start_server

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_MODELS = ROOT / "models"
KEY_ENV = {"CELLSERVE_SNAPSHOT_KEY": SNAPSHOT_KEY}
LISTENING = re.compile(r"cellserve-client web on (http://\S+/)")
START_TIMEOUT_S = 60.0


class WebProcess:
    """`cellserve-client web --port 0` in front of ``target``; ``url`` once it listens."""

    def __init__(self, target: str, *args: str, port: int = 0) -> None:
        cmd = [sys.executable, "-m", "cellserve_client._cli", "web", "--target", target, "--port", str(port), *args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
        )
        self.lines: list[str] = []
        found: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._pump, args=(found,), daemon=True)
        self._reader.start()
        try:
            url = found.get(timeout=START_TIMEOUT_S)
        except queue.Empty:
            url = None
        if url is None:
            self.stop()
            raise RuntimeError("cellserve-client web did not start:\n" + "".join(self.lines[-40:]))
        self.url = url

    def _pump(self, found: queue.Queue[str | None]) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if m := LISTENING.search(line):
                found.put(m.group(1))
        found.put(None)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        self._reader.join(timeout=5)  # the pipe is at EOF once the process is gone
        if self.proc.stdout is not None and not self._reader.is_alive():
            self.proc.stdout.close()


@pytest.fixture(scope="session")
def shipped_server() -> Iterator[ServerProcess]:
    """A server on the shipped models (so the page shows real suggestions), at the precision
    ``auto`` serves them at (int8 on CPU): the tests compare a session the page typed in pieces
    with a fresh session given the text at once, which int8 answers bit for bit alike whatever
    the cuts (docs/precision.md)."""
    s = start_server(SHIPPED_MODELS, env=KEY_ENV)
    try:
        yield s
    finally:
        s.terminate()


@pytest.fixture(scope="session")
def web(shipped_server: ServerProcess) -> Iterator[WebProcess]:
    w = WebProcess(shipped_server.target)
    try:
        yield w
    finally:
        w.stop()


def wait_for(predicate: object, timeout: float = 60.0, what: str = "condition") -> None:
    """Polls ``predicate()`` until true; fails after ``timeout`` seconds (a bound, not a timing)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")
