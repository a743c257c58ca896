"""Server subprocesses the suite starts (cellserve, the peers) and what /proc says about them."""

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

LISTENING = re.compile(r"listening on (\S+):(\d+)")
METRICS = re.compile(r"cellserve metrics on (\S+):(\d+) \(http\)")
START_TIMEOUT_S = 120.0
_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads) so far, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime (fields 14, 15)


def pin_alone(pid: int, others: Sequence[int] = ()) -> list[int] | None:
    """Every thread of ``pid`` on the last CPU alone; the calling thread (and what it starts
    from now on) and every thread of ``others`` on the rest. Returns the calling thread's CPUs
    before, to restore; None (nothing pinned) with fewer than two CPUs."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    own, rest = {cpus[-1]}, set(cpus[:-1])
    for p, where in [(pid, own), *((o, rest) for o in others)]:
        for tid in os.listdir(f"/proc/{p}/task"):
            os.sched_setaffinity(int(tid), where)
    os.sched_setaffinity(0, rest)
    return cpus


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * _PAGE


class ServerProc:
    """One server subprocess; ``target`` is host:port once it printed where it listens."""

    def __init__(self, name: str, cmd: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.name = name
        self.cmd = list(cmd)
        self.proc = subprocess.Popen(
            self.cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            start_new_session=True,
        )
        self.stderr_tail: list[str] = []
        self.metrics_target = ""  # host:port of cellserve's /metrics, once printed (before it listens)
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump_stdout, daemon=True).start()
        threading.Thread(target=self._pump_stderr, daemon=True).start()
        self.target = self._wait_listening()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _pump_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _pump_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_tail.append(line)
            del self.stderr_tail[:-50]

    def _wait_listening(self) -> str:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                line = self._lines.get(timeout=0.5)
            except queue.Empty:
                continue
            if line is None:
                break
            if mt := METRICS.search(line):
                self.metrics_target = f"{mt.group(1)}:{mt.group(2)}"
            m = LISTENING.search(line)
            if m:
                return f"{m.group(1)}:{m.group(2)}"
        self.kill()
        raise RuntimeError(f"{self.name} server did not start:\n" + "".join(self.stderr_tail[-30:]))

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def rss_bytes(self) -> int:
        return rss_bytes(self.pid)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


def cellserve_cmd(model_dir: str, model: str, device: str, threads: int, max_sessions: int) -> list[str]:
    return [
        sys.executable, "-m", "cellserve.cli", "serve",
        "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0",
        "--model-dir", model_dir, "--model", model, "--device", device,
        "--cpu-threads", str(threads), "--max-sessions", str(max_sessions),
        "--max-concurrent-streams", str(max(1024, max_sessions)),
        "--session-idle-ttl", "3600", "--log-level", "warning",
        # One process unless a workload says otherwise (the scaling one appends --frontends F):
        # the default follows the machine's CPUs, and server CPU is read from this one pid.
        "--frontends", "0",
    ]  # fmt: skip


def peer_cmd(kind: str, model_dir: str, model: str, device: str) -> list[str]:
    return [
        sys.executable, "-m", "cellserve.bench.peers", kind,
        "--host", "127.0.0.1", "--port", "0", "--model-dir", model_dir, "--model", model, "--device", device,
    ]  # fmt: skip
