"""What a process-shared lock costs, for the shared admission ledger that several core
processes would charge (docs/design-notes.md, "Several core processes"): one
acquire + release of a ``multiprocessing`` lock (a POSIX semaphore in shared memory) and,
for comparison, of a ``threading.Lock``, first uncontended, then with P-1 other processes
taking the same lock in a loop (each holding it for a counter update, as a charge would).

    .venv/bin/python scripts/shared_lock_cost.py [P] [SECONDS]
"""

from __future__ import annotations

import multiprocessing as mp
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

N = 200_000


def per_call_us(take: Callable[[], object], give: Callable[[], object], n: int = N) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        take()
        give()
    return (time.perf_counter() - t0) / n * 1e6


def hammer(lock: Any, counter: Any, stop: Any) -> None:
    """Another core: takes the lock and charges the counter until told to stop."""
    while not stop.is_set():
        with lock:
            counter.value += 1


def main() -> None:
    procs = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 2.0
    ctx = mp.get_context("spawn")
    lock = ctx.Lock()
    t = threading.Lock()
    print(f"uncontended: multiprocessing Lock {per_call_us(lock.acquire, lock.release):.3f} us, "
          f"threading.Lock {per_call_us(t.acquire, t.release):.3f} us per acquire + release")  # fmt: skip
    counter = ctx.Value("q", 0, lock=False)  # a bare shared int64: the lock above guards it
    stop = ctx.Event()
    others = [ctx.Process(target=hammer, args=(lock, counter, stop)) for _ in range(procs - 1)]
    for p in others:
        p.start()
    time.sleep(0.5)  # they are running
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        with lock:
            counter.value += 1
        n += 1
    took = time.perf_counter() - t0
    stop.set()
    for p in others:
        p.join()
    print(f"{procs} processes charging one lock on {mp.cpu_count()} CPUs: {took / n * 1e6:.3f} us per charge "
          f"in this process ({n:,} charges; {counter.value:,} in all)")  # fmt: skip


if __name__ == "__main__":
    main()
