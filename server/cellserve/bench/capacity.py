"""The engine core process's capacity: what it spends per keystroke when it is the bottleneck.

The core process of ``serve --frontends`` is started as the supervisor starts it and driven over
its socket by the frontends' own client (``ZmqEngineClient``, in this process, no gRPC): N
sessions, each appending one character and awaiting its answer. Nothing else runs, and with
two CPUs or more the core process has the last CPU to itself (this process takes the others
while it measures), so the core steps as fast as it can and its batches fill up: this is the
keystrokes/s one core process can serve, and its CPU per keystroke there.

The core's CPU per keystroke in a layout with frontends (``scaling``) is another figure: there
the core steps whatever has arrived, so when it is not the bottleneck its batches are smaller
and each keystroke costs more (and on a 2-CPU machine it shares the CPUs with the frontends and
the load generator). What bounds a big machine's keystrokes/s is the capacity measured here.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from typing import Any

from ..config import Settings
from ..multiproc.client import ZmqEngineClient
from ..multiproc.supervisor import Supervisor
from .loadgen import source_text
from .model import ModelRef
from .procs import cpu_seconds, pin_alone


async def _drive(address: str, pid: int, n: int, warmup_s: float, window_s: float) -> dict[str, Any]:
    client = ZmqEngineClient(address, frontend=0)
    await client.start()
    stop = asyncio.Event()
    counting = False
    answered = 0

    text = source_text()  # the bench's typed text; each session starts at its own place in it

    async def typist(sid: str, start: int) -> None:
        nonlocal answered
        pos = 0
        while not stop.is_set():
            await client.append("", sid, pos, text[(start + pos) % len(text)])
            pos += 1
            if counting:
                answered += 1

    try:
        sids = [(await client.open_session("")).session_id for _ in range(n)]
        tasks = [asyncio.create_task(typist(s, i * len(text) // n)) for i, s in enumerate(sids)]
        try:
            await asyncio.sleep(warmup_s)
            before = await client.stats("")
            counting, t0, c0 = True, time.perf_counter(), cpu_seconds(pid)
            await asyncio.sleep(window_s)
            counting = False
            wall, cpu = time.perf_counter() - t0, cpu_seconds(pid) - c0
            after = await client.stats("")
        finally:
            stop.set()
            await asyncio.gather(*tasks)
    finally:
        await client.stop()
    steps = after.iterations - before.iterations
    return {
        "sessions": n,
        "keystrokes": answered,
        "keystrokes_per_s": answered / wall,
        "rows_per_step": answered / steps if steps else None,
        "cpu_ms_per_keystroke": cpu / answered * 1e3 if answered else None,
        "cores": cpu / wall,
    }


def measure_core(ref: ModelRef, device: str, threads: int, n: int, warmup_s: float, window_s: float) -> dict[str, Any]:
    """The core process's keystrokes/s and CPU per keystroke at ``n`` sessions typing as fast
    as it answers (see the module's docstring); ``pinned``: it had a CPU of its own."""
    run_dir = tempfile.mkdtemp(prefix="cellserve-capacity-")
    settings = Settings(
        model_dir=ref.model_dir, models=[ref.name], device=device, cpu_threads=threads, metrics_port=0,
        metrics_host="127.0.0.1", max_sessions=max(n, 1000), log_level="warning",
    )  # fmt: skip
    supervisor = Supervisor(settings, run_dir)
    try:
        supervisor.start_cores()
        core = supervisor.cores[0]
        assert core.pid is not None
        before = pin_alone(core.pid)  # the core on the last CPU alone; this thread (the driver) on the others
        try:
            out = asyncio.run(_drive(supervisor.addresses[0], core.pid, n, warmup_s, window_s))
        finally:
            if before is not None:
                os.sched_setaffinity(0, before)
        return {**out, "pinned": before is not None}
    finally:
        supervisor.shutdown()  # SIGTERM, the drain, a kill past its grace
        supervisor.kill_all()
        shutil.rmtree(run_dir, ignore_errors=True)
