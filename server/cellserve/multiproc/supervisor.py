"""The parent of a multi-process server: starts the core(s), then the frontends, and watches them.

Start: the cores first (models, device, internal socket on an ``ipc://`` path in a private
temporary folder; core 0 also the metrics endpoint), in parallel; then frontend 0 on
``settings.port`` (port 0: a free one), then the others on the port it got. With ``--cores K``
(K > 1) the parent first makes the shared admission ledger (``engine/ledger.py``), which every
core attaches to, and unlinks it when the server ends. The two lines tests and operators read (``cellserve
metrics on ...``, ``cellserve listening on ...``) are printed once everything is up.

While serving:
- a frontend that exits is started again on the same port (its sessions live in the core);
  more than ``MAX_RESTARTS`` within ``RESTART_WINDOW_S`` stops the server with status 1;
- a core exiting ends the server (its sessions are gone; with several cores, so are the
  others', since the frontends can no longer route to all): every frontend is told (SIGUSR1: NOT_SERVING, calls fail
  with UNAVAILABLE), they are stopped, and the parent exits with status 1 so the orchestrator
  restarts the pod.

SIGTERM/SIGINT: the frontends drain (``ApiServer.shutdown``, bounded by ``drain_grace_s``),
then the cores drain and stop; exit 0. Whatever happens, no child outlives the parent: the
``finally`` kills what is left, and each child also dies with the parent by the kernel's
parent-death signal (``lifecycle``), so even SIGKILL of the parent leaves no orphan.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from types import FrameType

from ..config import Settings
from ..engine.ledger import Ledger, LedgerHandle
from .processes import run_core, run_frontend

log = logging.getLogger("cellserve.supervisor")

EXIT_CONFIG = 2
EXIT_FAILED = 1
CORE_START_S = 600.0  # loading models onto a device; the parent waits this long at most
FRONTEND_START_S = 120.0
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
STOP_SLACK_S = 5.0  # beyond the drain grace, before a child that does not stop is killed
CORE_LOST_NOTICE_S = 0.5  # frontends show NOT_SERVING this long before they are stopped


class StartError(Exception):
    """A child could not start; the message says why (for the operator)."""


class Supervisor:
    def __init__(self, settings: Settings, run_dir: str) -> None:
        self.settings = settings
        self.addresses = [f"ipc://{run_dir}/core{i}.sock" for i in range(settings.cores)]
        self.ctx = multiprocessing.get_context("spawn")
        self.cores: list[BaseProcess] = []
        self.ledger: LedgerHandle | None = None
        self.frontends: list[BaseProcess | None] = [None] * settings.frontends
        self.port = settings.port
        self._stop_requested = False
        self._restarts: deque[float] = deque()

    # ---- starting ---------------------------------------------------------------------------
    def _spawn(
        self, name: str, target: Callable[..., None], args: tuple[object, ...]
    ) -> tuple[BaseProcess, Connection]:
        receive, send = self.ctx.Pipe(duplex=False)
        proc = self.ctx.Process(target=target, args=(*args, send, os.getpid()), name=name)
        proc.start()
        send.close()
        return proc, receive

    def _await_report(self, proc: BaseProcess, conn: Connection, expect: str, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline and not self._stop_requested:
                ready = wait([conn, proc.sentinel], timeout=0.5)
                if conn in ready:
                    try:
                        kind, value = conn.recv()
                    except EOFError:  # exited without a word
                        raise StartError(f"{proc.name} exited with status {proc.exitcode}") from None
                    if kind == expect:
                        return int(value)
                    raise StartError(str(value))
                if proc.sentinel in ready:
                    proc.join()
                    raise StartError(f"{proc.name} exited with status {proc.exitcode}")
            raise StartError(f"{proc.name} did not start within {timeout_s:.0f} s")
        finally:
            conn.close()

    def start_cores(self) -> int:
        """Starts every core (they load their models in parallel); core 0's metrics port."""
        if len(self.addresses) > 1:
            self.ledger = Ledger.create_shared(self.ctx)
        started = []
        for i in range(len(self.addresses)):
            name = "cellserve-core" if len(self.addresses) == 1 else f"cellserve-core-{i}"
            proc, conn = self._spawn(name, run_core, (self.settings, self.addresses, i, self.ledger))
            self.cores.append(proc)
            started.append((proc, conn))
            log.info("engine core%s started (pid %s)", f" {i}" if len(self.addresses) > 1 else "", proc.pid)
        ports = [self._await_report(proc, conn, "ready", CORE_START_S) for proc, conn in started]
        return ports[0]

    def start_frontend(self, index: int) -> int:
        settings = self.settings.model_copy(update={"port": self.port})
        proc, conn = self._spawn(f"cellserve-frontend-{index}", run_frontend, (settings, index, self.addresses))
        self.frontends[index] = proc
        log.info("frontend %d started (pid %s)", index, proc.pid)
        return self._await_report(proc, conn, "listening", FRONTEND_START_S)

    # ---- running ----------------------------------------------------------------------------
    def run(self) -> int:
        from ..api.server import format_address

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        if self.settings.auth_tokens_file:  # SIGHUP: every frontend re-reads the tokens file now
            signal.signal(signal.SIGHUP, self._forward_sighup)
        taken = port_taken(self.settings.host, self.settings.port)
        if taken:
            print(f"cellserve serve: cannot listen on {format_address(self.settings.host, self.settings.port)}: {taken}",
                  file=sys.stderr)  # fmt: skip
            return EXIT_CONFIG
        try:
            metrics_port = self.start_cores()
            self.port = self.start_frontend(0)
            for i in range(1, len(self.frontends)):
                self.start_frontend(i)
        except StartError as e:
            if self._stop_requested:
                return self.shutdown()
            print(f"cellserve serve: cannot start: {e}", file=sys.stderr)
            return EXIT_CONFIG
        s = self.settings
        print(f"cellserve metrics on {format_address(s.metrics_host, metrics_port)} (http)", flush=True)
        print(f"cellserve listening on {format_address(s.host, self.port)} (grpc)", flush=True)
        log.info("serving with %d frontend processes and %d engine cores", len(self.frontends), len(self.cores))
        return self.supervise()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stop_requested = True

    def _forward_sighup(self, signum: int, frame: FrameType | None) -> None:
        for proc in self.frontends:
            if proc is not None and proc.pid is not None and proc.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGHUP)

    def supervise(self) -> int:
        while not self._stop_requested:
            wait(
                [*(c.sentinel for c in self.cores), *(f.sentinel for f in self.frontends if f is not None)], timeout=0.5
            )
            if self._stop_requested:
                break
            for core in self.cores:
                if not core.is_alive():
                    return self.core_died(core)
            for i, proc in enumerate(self.frontends):
                if proc is not None and not proc.is_alive():
                    if not self._restart(i, proc):
                        self.shutdown()
                        return EXIT_FAILED
        return self.shutdown()

    def _restart(self, index: int, dead: BaseProcess) -> bool:
        now = time.monotonic()
        self._restarts.append(now)
        while self._restarts and self._restarts[0] < now - RESTART_WINDOW_S:
            self._restarts.popleft()
        log.warning("frontend %d exited with status %s; starting it again", index, dead.exitcode)
        if len(self._restarts) > MAX_RESTARTS:
            log.error("more than %d frontend restarts within %.0f s: stopping", MAX_RESTARTS, RESTART_WINDOW_S)
            return False
        try:
            self.start_frontend(index)
        except StartError as e:
            log.error("frontend %d did not start again: %s", index, e)
            self.frontends[index] = None
            return bool(self._stop_requested) or any(f is not None and f.is_alive() for f in self.frontends)
        return True

    def core_died(self, core: BaseProcess) -> int:
        log.error("%s exited with status %s: stopping the server", core.name, core.exitcode)
        alive = [f for f in self.frontends if f is not None and f.is_alive()]
        for f in alive:
            _signal(f, signal.SIGUSR1)
        time.sleep(CORE_LOST_NOTICE_S)
        self._stop_frontends(STOP_SLACK_S)
        self._stop_cores(STOP_SLACK_S)
        return EXIT_FAILED

    # ---- stopping ---------------------------------------------------------------------------
    def shutdown(self) -> int:
        """Frontends drain first (they hold the clients), then the core."""
        grace = self.settings.drain_grace_s
        started = time.monotonic()
        log.info("shutting down: draining for at most %.1f s", grace)
        self._stop_frontends(grace + STOP_SLACK_S)
        if not self.cores:
            return 0
        if not self._stop_cores(max(grace - (time.monotonic() - started), 0.0) + STOP_SLACK_S):
            return EXIT_FAILED
        log.info("stopped")
        return 0 if all(c.exitcode == 0 for c in self.cores) else EXIT_FAILED

    def _stop_cores(self, timeout_s: float) -> bool:
        """SIGTERM to every core (each drains), then waits; False if one had to be killed."""
        for core in self.cores:
            _signal(core, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        stopped = True
        for core in self.cores:
            core.join(max(0.0, deadline - time.monotonic()))
            if core.is_alive():
                log.error("%s did not stop in time: killed", core.name)
                _signal(core, signal.SIGKILL)
                core.join(STOP_SLACK_S)
                stopped = False
        return stopped

    def _stop_frontends(self, timeout_s: float) -> None:
        alive = [f for f in self.frontends if f is not None and f.is_alive()]
        for f in alive:
            _signal(f, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for f in alive:
            f.join(max(0.0, deadline - time.monotonic()))
            if f.is_alive():
                log.error("%s did not stop in time: killed", f.name)
                _signal(f, signal.SIGKILL)
                f.join(STOP_SLACK_S)

    def kill_all(self) -> None:
        """Last resort (the parent is leaving): nothing it started may outlive it."""
        for proc in [*self.frontends, *self.cores]:
            if proc is not None and proc.is_alive():
                _signal(proc, signal.SIGKILL)
                proc.join(STOP_SLACK_S)


def port_taken(host: str, port: int) -> str:
    """Why ``host:port`` cannot be ours ("" when it can). The frontends bind with SO_REUSEPORT,
    which would silently share the port with another server of this user still listening
    there; a plain bind (SO_REUSEADDR only: connections in TIME_WAIT do not count) fails
    with EADDRINUSE while anybody listens."""
    if port == 0:
        return ""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as e:
        return str(e)
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as e:
            return e.strerror or str(e)
    return ""


def _signal(proc: BaseProcess, sig: signal.Signals) -> None:
    if proc.pid is not None and proc.is_alive():
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            pass


def run_multiprocess(settings: Settings) -> int:
    """Runs the server as ``settings.cores`` cores and ``settings.frontends`` frontends; returns
    the exit status."""
    run_dir = tempfile.mkdtemp(prefix="cellserve-")  # 0700: only this user reaches the sockets
    supervisor = Supervisor(settings, run_dir)
    try:
        return supervisor.run()
    finally:
        supervisor.kill_all()
        if supervisor.ledger is not None:
            supervisor.ledger.close()
        shutil.rmtree(run_dir, ignore_errors=True)
