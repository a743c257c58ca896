"""CPU per keystroke of a server under closed-loop load, per process and per thread: a
`cellserve serve` on the shipped models (or the echo peer), N sessions each typing one
character and awaiting its answer (the bench's load generator), and /proc read at the start and
the end of the measurement window. Threads of one name (grpc's pollers, say) are summed; a
Python thread is named by its `threading` name when py-spy is installed (`py-spy dump` maps
thread ids to names), else by the OS name ("python"; " [main]" for the main thread).
Extra arguments go to `cellserve serve` (`--frontends 2`: the frontends and the core process
are told apart from the supervisor's "started (pid ...)" lines); `--echo` measures the echo peer.
REPEAT (environment, default 1) runs the window that many times on the same server. COMPLETE=1:
the bench's completion load instead (N sessions each asking for a greedy 32-character
completion, reading it to the end, asking again), and every figure per generated character. GC=1: each
server process also reports the share of its CPU its garbage collector took since it started,
per generation (``scripts/gc_stats/sitecustomize.py``, put on the server's PYTHONPATH).
PHASES=1: the process that steps the engine core also reports its steps in the window, rows per
step, how many steps its iterations took (completion bursts), and the CPU of each engine phase
per keystroke (``scripts/engine_phases/sitecustomize.py``:
``profile_core.py``'s phases, timed inside the server under load). DETAIL=1: per thread, also
its user and system CPU, its voluntary context switches (mostly waits: for the interpreter lock,
a queue, a poll), its involuntary ones (preempted) and its minor page faults, per keystroke.
PIN_CORE=1: the process that steps the core on the last CPU alone, everything else on the others
(``pin_core``; on two CPUs the frontends and the load generator then share one, and the core,
no longer the bottleneck, steps smaller batches: compare ``scripts/core_capacity.py``).

    .venv/bin/python scripts/cpu_by_thread.py N SECONDS [--echo | SERVE ARGS...]
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from typing import Any

from cellserve.bench.loadgen import Workload, run_load
from cellserve.bench.procs import ServerProc, cellserve_cmd, peer_cmd, pin_alone
from cellserve.bench.scaling import PID_WAIT_S, STARTED

_TICK = os.sysconf("SC_CLK_TCK")
DUMPED = re.compile(r'^Thread (\d+) \([^)]*\): "(.*)"$', re.M)

Reading = dict[tuple[str, int, str, int], float]  # (process, pid, thread name, tid) -> CPU seconds
# (process, pid, thread name, tid) -> (user s, system s, voluntary switches, involuntary, minor faults)
Detail = dict[tuple[str, int, str, int], tuple[float, float, int, int, int]]
_SWITCHES = re.compile(r"^(nonvoluntary_ctxt_switches|voluntary_ctxt_switches):\s+(\d+)$", re.M)


def threads_cpu(process: str, pid: int, detail: Detail | None = None) -> Reading:
    """CPU seconds per thread of ``pid``; with ``detail``, also fills it (DETAIL=1)."""
    out: Reading = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
        except (FileNotFoundError, ProcessLookupError):
            continue  # the thread ended meanwhile
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        if int(tid) == pid:  # the main thread: the event loop of a grpc server (Python names no thread)
            name += " [main]"
        fields = stat.rsplit(")", 1)[1].split()
        key = (process, pid, name, int(tid))
        out[key] = (int(fields[11]) + int(fields[12])) / _TICK
        if detail is not None:
            try:
                with open(f"/proc/{pid}/task/{tid}/status") as f:
                    switches = dict(_SWITCHES.findall(f.read()))
            except (FileNotFoundError, ProcessLookupError):
                continue
            detail[key] = (
                int(fields[11]) / _TICK,
                int(fields[12]) / _TICK,
                int(switches.get("voluntary_ctxt_switches", 0)),
                int(switches.get("nonvoluntary_ctxt_switches", 0)),
                int(fields[7]),
            )
    return out


def python_names(pids: list[int]) -> dict[int, str]:
    """tid -> the Python thread's name, from ``py-spy dump`` (empty without py-spy)."""
    spy = shutil.which("py-spy") or shutil.which("py-spy", path=os.path.dirname(sys.executable))
    names: dict[int, str] = {}
    if spy is None:
        return names
    for pid in pids:
        dump = subprocess.run([spy, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=30).stdout
        names.update((int(tid), name) for tid, name in DUMPED.findall(dump))
    return names


def server_processes(server: ServerProc, extra: list[str]) -> dict[str, int]:
    """process label -> pid: "server" alone, or the supervisor, "core" and each "frontend i"."""
    frontends = int(extra[extra.index("--frontends") + 1]) if "--frontends" in extra else 0
    if frontends == 0:
        return {"server": server.pid}
    found: dict[str, int] = {}
    deadline = time.monotonic() + PID_WAIT_S
    while len(found) < frontends + 1 and time.monotonic() < deadline:
        found = {m.group(1): int(m.group(2)) for line in server.stderr_tail if (m := STARTED.search(line))}
        time.sleep(0.05)
    if len(found) < frontends + 1:
        sys.exit("the supervisor did not log every child's pid")
    return {"supervisor": server.pid, **{("core" if k == "engine core" else k): v for k, v in found.items()}}


class Probe:
    """``run_load``'s ``server_cpu``: called at the window's start and end; keeps each reading."""

    def __init__(self, processes: dict[str, int], phases_dir: str = "", unit: str = "keystroke") -> None:
        self.processes = processes
        self.unit = unit  # what the figures are per: "character" with COMPLETE=1
        self.readings: list[Reading] = []
        self.details: list[Detail] | None = [] if os.environ.get("DETAIL") == "1" else None
        self.phases_dir = phases_dir
        self.phases: list[dict[str, Any]] = []  # per reading: the core process's phase file

    def __call__(self) -> float:
        reading: Reading = {}
        detail: Detail | None = {} if self.details is not None else None
        for label, pid in self.processes.items():
            reading.update(threads_cpu(label, pid, detail))
        self.readings.append(reading)
        if self.details is not None and detail is not None:
            self.details.append(detail)
        if self.phases_dir:
            self.phases.append(read_phases(self.phases_dir))
        return sum(reading.values())

    def report_phases(self, requests: int) -> None:
        """The engine core's steps and phases in the window (PHASES=1)."""
        first, last = self.phases[-2], self.phases[-1]
        steps = last.get("steps", 0) - first.get("steps", 0)
        if not steps:
            print("  engine phases: no step in the window (or no phase file yet)")
            return
        rows = last["rows"] - first["rows"]
        print(
            f"  engine core: {steps} steps, {rows / steps:.1f} rows per step, {requests / steps:.1f} keystrokes per step"
        )
        before = first.get("iteration_steps", {})
        took = {int(k): n - before.get(k, 0) for k, n in last.get("iteration_steps", {}).items()}
        if any(k > 1 and n for k, n in took.items()):
            spread = ", ".join(f"{n} of {k}" for k, n in sorted(took.items()) if n)
            print(f"  iterations by the steps they took: {spread}")
        guesses = last.get("guess_batches", 0) - first.get("guess_batches", 0)
        if guesses:
            g_rows = last["guess_rows"] - first["guess_rows"]
            print(f"  speculation: {guesses} batches of guesses, {g_rows / guesses:.1f} rows each")
        cpu = {k: v - first.get("cpu_s", {}).get(k, 0.0) for k, v in last["cpu_s"].items()}
        for name, used in sorted(cpu.items(), key=lambda kv: -kv[1]):
            print(f"      {used / requests * 1e6:7.1f}  {name} (us/{self.unit})")

    def report(self, requests: int, names: dict[int, str]) -> None:
        first, last = self.readings[-2], self.readings[-1]
        by_process: dict[str, float] = defaultdict(float)
        by_thread: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        for key, cpu in last.items():
            process, _, name, tid = key
            name = names.get(tid, name)
            used = cpu - first.get(key, 0.0)  # a thread born in the window counts from zero
            by_process[process] += used
            by_thread[process][name] += used
        total = sum(by_process.values())
        print(f"  all processes: {total / requests * 1e6:7.1f} us/{self.unit}")
        frontends = sum(cpu for process, cpu in by_process.items() if process.startswith("frontend"))
        if frontends:  # the connections may land on any of them: their sum per keystroke
            print(f"  all frontends: {frontends / requests * 1e6:7.1f} us/{self.unit}")
        for process in self.processes:
            print(f"  {process}: {by_process[process] / requests * 1e6:7.1f} us/{self.unit}")
            for name, used in sorted(by_thread[process].items(), key=lambda kv: -kv[1]):
                if used > 0:
                    print(f"      {used / requests * 1e6:7.1f}  {name}")
        if self.details is not None:
            self.report_detail(requests, names)

    def report_detail(self, requests: int, names: dict[int, str]) -> None:
        """DETAIL=1: per thread (summed by name within a process), per keystroke."""
        assert self.details is not None
        first, last = self.details[-2], self.details[-1]
        sums: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0] * 5)
        for key, now in last.items():
            process, _, name, tid = key
            before = first.get(key, (0.0, 0.0, 0, 0, 0))
            acc = sums[(process, names.get(tid, name))]
            for i in range(5):
                acc[i] += now[i] - before[i]
        print(f"  per thread, per {self.unit}: user us, system us, waits (voluntary switches), preempted, minor faults")
        for (process, name), (user, system, vol, invol, faults) in sorted(sums.items(), key=lambda kv: -kv[1][0]):
            if user + system > 0:
                r = requests
                print(
                    f"      {user / r * 1e6:7.1f} {system / r * 1e6:6.1f} {vol / r:6.3f} {invol / r:6.3f} {faults / r:6.2f}"
                    f"  {process}: {name}"
                )


def pin_core(processes: dict[str, int]) -> None:
    """PIN_CORE=1: the process that steps the core (the core process, or the one server
    process) on the last CPU alone, everything else (the other server processes, this load
    generator and the workers it starts) on the others: the core as it runs on a machine with
    a core to spare for it, on this one."""
    core = processes.get("core") or processes.get("server")
    if core is None:
        sys.exit("PIN_CORE=1: no process here steps an engine core (--echo)")
    if pin_alone(core, [pid for pid in processes.values() if pid != core]) is None:
        sys.exit("PIN_CORE=1 needs two CPUs or more")


def read_phases(folder: str) -> dict[str, Any]:
    """The phase file of the process that steps the core (the one that wrote one), or {}."""
    for name in os.listdir(folder):
        if name.endswith(".json"):
            with open(os.path.join(folder, name)) as f:
                out: dict[str, Any] = json.load(f)
                return out
    return {}


def gc_report(folder: str, processes: dict[str, int]) -> None:
    for label, pid in processes.items():
        try:
            with open(os.path.join(folder, f"{pid}.json")) as f:
                st = json.load(f)
        except FileNotFoundError:
            continue
        shares = ", ".join(
            f"gen{g} {100 * s / st['cpu_s']:.1f}% ({n})"
            for g, (s, n) in enumerate(zip(st["gc_s"], st["passes"], strict=True))
        )
        print(f"  {label}: GC {100 * sum(st['gc_s']) / st['cpu_s']:.1f}% of its CPU: {shares}; {st['frozen']} frozen")


def main() -> None:
    n, seconds, extra = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
    complete = os.environ.get("COMPLETE") == "1"
    gc_dir = tempfile.mkdtemp() if os.environ.get("GC") == "1" else ""
    phases_dir = tempfile.mkdtemp() if os.environ.get("PHASES") == "1" else ""
    here = os.path.dirname(os.path.abspath(__file__))
    for folder, hook, var in ((gc_dir, "gc_stats", "GC_STATS_DIR"), (phases_dir, "engine_phases", "ENGINE_PHASES_DIR")):
        if folder:  # inherited by the server and its children, not by this process
            os.environ["PYTHONPATH"] = os.pathsep.join(
                p for p in (os.path.join(here, hook), os.environ.get("PYTHONPATH")) if p
            )
            os.environ[var] = folder
    if extra == ["--echo"]:
        server = ServerProc("echo", peer_cmd("echo", "models", "python-lstm", "cpu"))
        processes = {"echo": server.pid}
    else:
        cmd = cellserve_cmd("models", "python-lstm", "cpu", 1, 4096) + [*extra, "--log-level", "info"]
        server = ServerProc("cellserve", cmd)
        processes = server_processes(server, extra)
    if os.environ.get("PIN_CORE") == "1":
        pin_core(processes)
    try:
        probe = Probe(processes, phases_dir, "character" if complete else "keystroke")
        for _ in range(int(os.environ.get("REPEAT", "1"))):
            time.sleep(1.0)  # let the previous window's sessions close
            if complete:  # per generated character
                r = run_load(server.target, Workload("complete", n, warmup_s=2.0, window_s=seconds), 2, probe)
                units = round(r["chars_per_s"] * seconds)
                print(
                    f"B={n} {' '.join(extra) or 'one process'}: {r['chars_per_s']:.0f} characters/s, errors {r['errors']}"
                )
            else:
                r = run_load(server.target, Workload("closed", n, warmup_s=2.0, window_s=seconds), 2, probe)
                units = r["requests"]
                print(
                    f"N={n} {' '.join(extra) or 'one process'}: {r['throughput_rps']:.0f} keystrokes/s, "
                    f"p50 {r['latency_ms']['p50']:.2f} ms, errors {r['errors']}"
                )
            probe.report(units, python_names(list(processes.values())))
            if phases_dir:
                probe.report_phases(units)
        if gc_dir:
            time.sleep(1.1)  # the last second's figures
            gc_report(gc_dir, processes)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
