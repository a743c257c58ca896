"""The multi-process workload: cellserve with 1 and 2 frontends and the echo peer with 1 and 2
processes on one port, under the same closed-loop keystroke load, in one run.

For each layout and session count it reports keystrokes/s, latency, and the CPU per keystroke of
each process kind, read from /proc over the measurement window: ``frontend`` (all frontend
processes together), ``core`` (the engine core), ``supervisor`` (the parent; idle) and ``echo``
(all echo processes). From those figures ``model`` predicts keystrokes/s for F frontends on C
cores (see ``predict``); on a 2-core machine the load generator takes a core too, so the
measured throughput itself cannot show scaling there. The core process alone at capacity
(``capacity``: driven by the frontends' client, no gRPC, a CPU of its own) gives the core's
figure where it is the bottleneck, which is what the model's 1 / k needs.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from .loadgen import Workload, run_load
from .model import ModelRef
from .procs import ServerProc, cellserve_cmd, cpu_seconds, peer_cmd

STARTED = re.compile(r"(frontend \d+|engine core(?: \d+)?) started \(pid (\d+)\)")
PID_WAIT_S = 10.0
FRONTENDS = (1, 2, 4, 8)  # predicted for these frontend counts ...
CORES = (2, 4, 8, 16)  # ... on machines with this many cores


@dataclass(frozen=True)
class Layout:
    peer: str  # "cellserve" | "echo"
    processes: int  # frontends (cellserve) or echo processes
    cores: int = 1  # cellserve's engine-core processes (--cores)

    @property
    def name(self) -> str:
        if self.peer != "cellserve":
            return f"{self.peer}-{self.processes}p"
        return f"cellserve-{self.processes}f" + (f"{self.cores}c" if self.cores > 1 else "")


LAYOUTS = (Layout("cellserve", 1), Layout("cellserve", 2), Layout("echo", 1), Layout("echo", 2))


def layouts(frontends: list[int], echo: list[int], cores: list[int] | None = None) -> list[Layout]:
    """cellserve with each frontend count and each core count (``cellserve-8f4c``: 8 frontends,
    4 cores), then echo with each process count."""
    mine = [Layout("cellserve", f, k) for k in cores or [1] for f in frontends]
    return mine + [Layout("echo", p) for p in echo]


class Group:
    """The processes of one layout, by kind, and their CPU readings."""

    def __init__(self, layout: Layout, ref: ModelRef, device: str, threads: int) -> None:
        self.layout = layout
        self.servers: list[ServerProc] = []
        self.kinds: dict[str, list[int]] = {}
        try:
            if layout.peer == "cellserve":
                self._start_cellserve(ref, device, threads)
            else:
                self._start_echo(ref, device)
        except BaseException:
            self.stop()
            raise

    def _start_cellserve(self, ref: ModelRef, device: str, threads: int) -> None:
        cmd = cellserve_cmd(str(ref.model_dir), ref.name, device, threads, 10_000)
        shape = ["--frontends", str(self.layout.processes), "--cores", str(self.layout.cores)]
        server = ServerProc(self.layout.name, [*cmd, *shape, "--log-level", "info"])
        self.servers.append(server)
        self.target = server.target
        deadline = time.monotonic() + PID_WAIT_S
        found: dict[str, int] = {}
        children = self.layout.processes + self.layout.cores
        while len(found) < children and time.monotonic() < deadline:
            found = {m.group(1): int(m.group(2)) for line in server.stderr_tail if (m := STARTED.search(line))}
            time.sleep(0.05)
        if len(found) < children:
            raise RuntimeError(f"{self.layout.name}: the supervisor did not log every child's pid")
        self.kinds = {
            "core": [pid for name, pid in found.items() if name.startswith("engine core")],
            "frontend": [pid for name, pid in found.items() if name.startswith("frontend")],
            "supervisor": [server.pid],
        }

    def _start_echo(self, ref: ModelRef, device: str) -> None:
        cmd = [*peer_cmd("echo", str(ref.model_dir), ref.name, device), "--reuse-port"]
        first = ServerProc(self.layout.name, cmd)
        self.servers.append(first)
        self.target = first.target
        port = first.target.rsplit(":", 1)[1]
        for _ in range(1, self.layout.processes):
            self.servers.append(ServerProc(self.layout.name, [*cmd, "--port", port]))
        self.kinds = {"echo": [s.pid for s in self.servers]}

    def cpu(self) -> dict[str, float]:
        return {kind: sum(cpu_seconds(pid) for pid in pids) for kind, pids in self.kinds.items()}

    def alive(self) -> bool:
        return all(s.alive() for s in self.servers)

    def stop(self) -> None:
        for s in self.servers:
            s.stop()


class CpuProbe:
    """The ``server_cpu`` callback of ``run_load``: it reads the group's total and keeps each
    reading by kind, so the window's CPU per kind is the last reading minus the first."""

    def __init__(self, group: Group) -> None:
        self.group = group
        self.readings: list[dict[str, float]] = []

    def __call__(self) -> float:
        reading = self.group.cpu()
        self.readings.append(reading)
        return sum(reading.values())

    def ms_per_request(self, requests: int) -> dict[str, float | None]:
        if len(self.readings) < 2 or not requests:
            return {}
        first, last = self.readings[0], self.readings[-1]
        return {k: (last[k] - first[k]) / requests * 1e3 for k in first}


def _settle(group: Group, idle_util: float = 0.1, sample_s: float = 0.3, max_s: float = 30.0) -> None:
    deadline = time.monotonic() + max_s
    while time.monotonic() < deadline:
        c0 = sum(group.cpu().values())
        time.sleep(sample_s)
        if sum(group.cpu().values()) - c0 < idle_util * sample_s:
            return


def run_scaling(
    ref: ModelRef,
    sessions: list[int],
    *,
    device: str,
    threads: int,
    warmup_s: float,
    window_s: float,
    workers: int,
    ceiling_s: float,
    log: Any = print,
    plan: list[Layout] | None = None,
) -> dict[str, Any]:
    runs: dict[str, dict[str, Any]] = {}
    for layout in plan or LAYOUTS:
        group = Group(layout, ref, device, threads)
        log(f"{layout.name} listening on {group.target} ({', '.join(f'{k}: {v}' for k, v in group.kinds.items())})")
        try:
            by_n: dict[str, Any] = {}
            for n in sessions:
                _settle(group)
                probe = CpuProbe(group)
                r = run_load(group.target, Workload("closed", n, warmup_s, window_s), workers, probe)
                r["cpu_ms_per_keystroke"] = probe.ms_per_request(r["requests"])
                by_n[str(n)] = r
                per = ", ".join(f"{k} {v:.3f}" for k, v in r["cpu_ms_per_keystroke"].items() if v is not None)
                log(
                    f"{layout.name} N={n}: {r['throughput_rps']:.0f} keystrokes/s, errors {r['errors']}; CPU ms/keystroke {per}"
                )
            runs[layout.name] = by_n
            if not group.alive():
                raise RuntimeError(f"{layout.name}: a server process died")
        finally:
            group.stop()
    capacity = None
    if any(layout.peer == "cellserve" for layout in plan or LAYOUTS):
        from .capacity import measure_core

        capacity = measure_core(ref, device, threads, max(sessions), warmup_s, window_s)
        log(
            f"core alone at capacity N={capacity['sessions']}: {capacity['keystrokes_per_s']:.0f} keystrokes/s, "
            f"{_num(capacity['rows_per_step'])} rows per step, CPU ms/keystroke {_num(capacity['cpu_ms_per_keystroke'], 3)}"
        )
    ceiling = _ceiling_per_row(ref, device, threads, sessions, ceiling_s)
    return {
        "sessions": sessions,
        "runs": runs,
        "core_capacity": capacity,
        "ceiling_ms_per_row": ceiling,
        "model": model(runs, sessions, capacity),
    }


def _num(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _ceiling_per_row(ref: ModelRef, device: str, threads: int, sessions: list[int], seconds: float) -> dict[str, float]:
    """The in-process model's own batched step per row (ms) at each N: what the core's CPU per
    keystroke is compared with."""
    from .ceiling import Ceiling

    c = Ceiling(ref, device, threads)
    return {str(n): float(c.keystrokes(n, seconds)["step_s"]) / n * 1e3 for n in sessions}


def predict(frontend_ms: float, core_ms: float, frontends: int, cores: int, core_processes: int = 1) -> float:
    """Keystrokes/s with ``frontends`` frontends and ``core_processes`` engine cores
    (``--cores``) on ``cores`` cores, from the measured CPU per keystroke of a frontend and of
    the core: the least of what the frontends can parse (each one process, at most one core:
    F / f), what the core processes can step (K / k), and what the cores can run in all
    (C / (f + k)); the load generator is elsewhere."""
    f, k = frontend_ms / 1e3, core_ms / 1e3
    return min(frontends / f, core_processes / k, cores / (f + k))


def fewest_cores(frontend_ms: float, core_ms: float, frontends: int, cores: int) -> int:
    """The fewest core processes that carry what ``frontends`` frontends on ``cores`` cores can
    (at most the cores the frontends leave)."""
    best = predict(frontend_ms, core_ms, frontends, cores, cores - frontends)
    return next(
        kp for kp in range(1, cores - frontends + 1) if predict(frontend_ms, core_ms, frontends, cores, kp) >= best
    )


def model(
    runs: dict[str, dict[str, Any]], sessions: list[int], capacity: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """The prediction table from the 2-frontend run at the largest N (1 frontend if absent):
    its frontend's CPU per keystroke, and the core's at capacity (``capacity.measure_core``:
    where 1 / k binds, the core is the bottleneck, and that is what it spends there) when
    measured, else the core's in that run."""
    n = str(max(sessions))
    r = runs.get("cellserve-2f", {}).get(n) or runs.get("cellserve-1f", {}).get(n)
    cpu = (r or {}).get("cpu_ms_per_keystroke") or {}
    f = cpu.get("frontend")
    k, core_from = (capacity or {}).get("cpu_ms_per_keystroke"), "the core alone at capacity"
    if not k:
        k, core_from = cpu.get("core"), "the core in the frontends' run"
    if not f or not k:
        return None
    table = {str(c): {str(fr): predict(f, k, fr, c) for fr in FRONTENDS if fr + 1 <= c} for c in CORES}
    # --cores K: each F with the fewest core processes that keep up (F + K <= C)
    several: dict[str, dict[str, list[float]]] = {}
    for c in CORES:
        several[str(c)] = {}
        for fr in FRONTENDS:
            if fr + 1 <= c:
                kp = fewest_cores(f, k, fr, c)
                several[str(c)][str(fr)] = [predict(f, k, fr, c, kp), kp]
    return {
        "sessions": int(n), "frontend_ms": f, "core_ms": k, "core_from": core_from, "keystrokes_per_s": table,
        "with_cores": several,
    }  # fmt: skip
