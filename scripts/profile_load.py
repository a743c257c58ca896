"""A profile of the server under closed-loop load: a `cellserve serve` on the shipped models,
N sessions each typing one character and awaiting its answer (the bench's load generator), and
py-spy (``pip install py-spy``) sampling the server (and the processes it starts: ``--frontends
N``) at 200 Hz for SECONDS. Prints, per process and thread,
the share of its samples spent under each frame (inclusive), the most common first.
Extra arguments go to `cellserve serve`. COMPLETE=1: the bench's completion load instead (N
sessions each asking for a greedy 32-character completion, reading it to the end, asking again).

    .venv/bin/python scripts/profile_load.py N SECONDS OUT.txt [SERVE ARGS...]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import Counter, defaultdict

from cellserve.bench.loadgen import Workload, run_load
from cellserve.bench.procs import ServerProc, cellserve_cmd

TOP = 25


def shares(path: str) -> dict[str, tuple[int, Counter[str]]]:
    """thread -> (samples, frame -> samples under it) from py-spy's raw (collapsed) output."""
    per: dict[str, tuple[int, Counter[str]]] = defaultdict(lambda: (0, Counter()))
    text = open(path).read().replace("\n ", " ")  # a spawned process's command line has a newline
    for line in text.splitlines():
        stack, _, n = line.rstrip().rpartition(" ")
        if not stack:
            continue
        frames = stack.split(";")
        t = next((i for i, f in enumerate(frames) if f.startswith("thread (")), 0)  # by process and thread
        key = "; ".join(f[:60] for f in frames[: t + 1])
        total, under = per[key]
        under.update(dict.fromkeys(set(frames[t + 1 :]), int(n)))
        per[key] = (total + int(n), under)
    return per


def main() -> None:
    n, seconds, out, extra = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4:]
    spy = shutil.which("py-spy") or sys.exit("py-spy not found: pip install py-spy")
    server = ServerProc("cellserve", cellserve_cmd("models", "python-lstm", "cpu", 1, 4096) + extra)
    try:
        rec = subprocess.Popen(
            [spy, "record", "-p", str(server.pid), "-d", str(int(seconds)), "-r", "200", "-f", "raw",
             "-o", out, "--threads", "--nonblocking", "--subprocesses"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        kind = "complete" if os.environ.get("COMPLETE") == "1" else "closed"
        r = run_load(server.target, Workload(kind, n, warmup_s=1.0, window_s=seconds), 2, server.cpu_seconds)
        rec.wait(60)
    finally:
        server.stop()
    if kind == "complete":
        print(f"B={n}: {r['chars_per_s']:.0f} characters/s, completion p50 {r['latency_ms']['p50']:.2f} ms")
    else:
        print(f"N={n}: {r['throughput_rps']:.0f} keystrokes/s, p50 {r['latency_ms']['p50']:.2f} ms")
    for thread, (total, under) in sorted(shares(out).items(), key=lambda kv: -kv[1][0]):
        print(f"\n{thread}: {total} samples")
        for frame, k in under.most_common(TOP):
            print(f"  {100 * k / total:5.1f}%  {frame}")


if __name__ == "__main__":
    main()
