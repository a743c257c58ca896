"""Real `cellserve serve` processes on free loopback ports, for every test folder.

Every server here is a subprocess started by the test that owns it (``python -m cellserve.cli
serve --host 127.0.0.1 --port 0``, metrics on ``127.0.0.1`` port 0 too unless the test says
otherwise); the ports are parsed from the lines it prints. Servers are
stopped by SIGTERM to their own pid (SIGKILL to that pid if they outlive a bound).
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

START_TIMEOUT_S = 90.0  # importing torch and loading models on a busy 2-core machine
STOP_TIMEOUT_S = 30.0
SNAPSHOT_KEY = "test-snapshot-key-shared-by-replicas"
LISTENING = re.compile(r"cellserve listening on (\S+):(\d+) \(grpc\)")
METRICS = re.compile(r"cellserve metrics on (\S+):(\d+) \(http\)")


class ServerProcess:
    """One `cellserve serve` subprocess; ``target`` (gRPC) and ``metrics_target`` (HTTP) are
    host:port once started."""

    def __init__(self, args: Sequence[str], env: dict[str, str] | None = None) -> None:
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
        # A free metrics port too: the default (9090) would collide between test servers.
        metrics = [] if "--metrics-port" in args else ["--metrics-host", "127.0.0.1", "--metrics-port", "0"]
        # One process unless the test asks for frontends: the default follows the machine's CPUs.
        shape = [] if "--frontends" in args else ["--frontends", "0"]
        cmd = [
            sys.executable, "-m", "cellserve.cli", "serve", "--host", "127.0.0.1", "--port", "0",
            *metrics, *shape, *args,
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env, start_new_session=True
        )
        self.stderr_lines: list[str] = []
        self.metrics_target = ""
        self._stdout: queue.Queue[str | None] = queue.Queue()
        self._readers = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self._stdout), daemon=True),
            threading.Thread(target=self._collect_stderr, daemon=True),
        ]
        for t in self._readers:
            t.start()
        self.target = self._wait_listening()

    @staticmethod
    def _pump(stream: object, out: queue.Queue[str | None]) -> None:
        with stream:  # type: ignore[attr-defined]  # closed at EOF: no unclosed-file warning
            for line in stream:  # type: ignore[attr-defined]
                out.put(line)
        out.put(None)

    def _collect_stderr(self) -> None:
        assert self.proc.stderr is not None
        with self.proc.stderr:
            for line in self.proc.stderr:
                self.stderr_lines.append(line)

    def _join_readers(self) -> None:
        """The process has exited: its pipes reach EOF and the reader threads close them."""
        for t in self._readers:
            t.join(timeout=STOP_TIMEOUT_S)

    def _wait_listening(self) -> str:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                line = self._stdout.get(timeout=0.5)
            except queue.Empty:
                continue
            if line is None:
                break
            if m := METRICS.search(line):
                self.metrics_target = f"{m.group(1)}:{m.group(2)}"
            m = LISTENING.search(line)
            if m:
                return f"{m.group(1)}:{m.group(2)}"
        self.kill()
        raise RuntimeError("server did not start:\n" + "".join(self.stderr_lines[-40:]))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def terminate(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM to this server's pid; returns its exit status."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        self._join_readers()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=STOP_TIMEOUT_S)
        self._join_readers()


def start_server(model_dir: Path, *args: str, env: dict[str, str] | None = None) -> ServerProcess:
    return ServerProcess(["--model-dir", str(model_dir), "--cpu-threads", "1", *args], env=env)
