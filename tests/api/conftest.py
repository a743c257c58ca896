"""API test fixtures: real `cellserve serve` processes on free loopback ports.

Every server here is a subprocess started by the test that owns it (``python -m cellserve.cli
serve --host 127.0.0.1 --port 0``); the port is parsed from the line it prints. Servers are
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
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
import pytest
from cellserve_client._proto.cellserve.v1 import service_pb2 as svc
from cellserve_client._proto.cellserve.v1 import service_pb2_grpc as rpc

START_TIMEOUT_S = 90.0  # importing torch and loading models on a busy 2-core machine
STOP_TIMEOUT_S = 30.0
SNAPSHOT_KEY = "test-snapshot-key-shared-by-replicas"
LISTENING = re.compile(r"cellserve listening on (\S+):(\d+) \(grpc\)")


class ServerProcess:
    """One `cellserve serve` subprocess; ``target`` is host:port once started."""

    def __init__(self, args: Sequence[str], env: dict[str, str] | None = None) -> None:
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
        cmd = [sys.executable, "-m", "cellserve.cli", "serve", "--host", "127.0.0.1", "--port", "0", *args]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env, start_new_session=True
        )
        self.stderr_lines: list[str] = []
        self._stdout: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, args=(self.proc.stdout, self._stdout), daemon=True).start()
        threading.Thread(target=self._collect_stderr, daemon=True).start()
        self.target = self._wait_listening()

    @staticmethod
    def _pump(stream: object, out: queue.Queue[str | None]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            out.put(line)
        out.put(None)

    def _collect_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_lines.append(line)

    def _wait_listening(self) -> str:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                line = self._stdout.get(timeout=0.5)
            except queue.Empty:
                continue
            if line is None:
                break
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
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=STOP_TIMEOUT_S)


def start_server(model_dir: Path, *args: str, env: dict[str, str] | None = None) -> ServerProcess:
    return ServerProcess(["--model-dir", str(model_dir), "--cpu-threads", "1", *args], env=env)


@pytest.fixture(scope="session")
def server(model_dir: Path) -> Iterator[ServerProcess]:
    """The shared server: default settings, both tiny models, a snapshot key from the
    environment (so a second process can resume its snapshots)."""
    s = start_server(model_dir, env={"CELLSERVE_SNAPSHOT_KEY": SNAPSHOT_KEY})
    try:
        yield s
    finally:
        s.terminate()


@pytest.fixture(scope="session")
def channel(server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.target) as ch:
        grpc.channel_ready_future(ch).result(timeout=30)
        yield ch


@pytest.fixture
def stub(channel: grpc.Channel) -> rpc.CellserveServiceStub:
    return rpc.CellserveServiceStub(channel)


def open_session(stub: rpc.CellserveServiceStub, model: str = "", **kw: object) -> str:
    return stub.OpenSession(svc.OpenSessionRequest(model=model), **kw).session.session_id  # type: ignore[arg-type]


def rpc_error(fn: object, *args: object, **kw: object) -> grpc.RpcError:
    """Calls ``fn`` and returns the RpcError it raised (fails the test if it did not)."""
    try:
        fn(*args, **kw)  # type: ignore[operator]
    except grpc.RpcError as e:
        return e
    pytest.fail("expected an RpcError")


def trailing(err: grpc.RpcError) -> dict[str, str]:
    return {k: v for k, v in (err.trailing_metadata() or ())}  # type: ignore[attr-defined]
