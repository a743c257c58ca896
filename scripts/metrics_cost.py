"""CPU per keystroke of the metrics the event loop writes for every keystroke (a keystroke-latency
observation, a request count, a queue-wait observation, and one iteration's step time and batch
size per BATCH keystrokes), two ways in one run: prometheus_client's own Counter and Histogram
(children looked up once, as ``Metrics`` did) and this server's ``Metrics`` (the lock-free
families of ``metric_families``). Best of ROUNDS, ``time.thread_time``; one thread, no server.

    .venv/bin/python scripts/metrics_cost.py [--keystrokes 51200] [--rounds 5] [--batch 128]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from cellserve.engine.types import IterationStats, Phase
from cellserve.metrics import LATENCY_BUCKETS, Metrics
from prometheus_client import CollectorRegistry, Counter, Histogram


def best_of(rounds: int, keystrokes: int, batch: int, keystroke: Callable[[], None], step: Callable[[], None]) -> float:
    best = float("inf")
    for _ in range(rounds):
        t0 = time.thread_time()
        for _ in range(keystrokes // batch):
            for _ in range(batch):
                keystroke()
            step()
        best = min(best, (time.thread_time() - t0) / keystrokes)
    return best * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keystrokes", type=int, default=51200)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=128)
    a = ap.parse_args()

    r = CollectorRegistry()
    latency = Histogram("k_seconds", "K.", ["model", "kind"], buckets=LATENCY_BUCKETS, registry=r)
    requests = Counter("r", "R.", ["method", "code"], registry=r)
    wait = Histogram("w_seconds", "W.", buckets=LATENCY_BUCKETS, registry=r)
    step_time = Histogram("s_seconds", "S.", ["phase"], buckets=LATENCY_BUCKETS, registry=r)
    rows = Histogram("b", "B.", buckets=tuple(float(2**i) for i in range(15)), registry=r)
    lat_child, req_child, step_child = (
        latency.labels("m", "append_single"),
        requests.labels("Session.append", "OK"),
        step_time.labels("step"),
    )

    def plain_keystroke() -> None:
        lat_child.observe(0.045)
        req_child.inc()
        wait.observe(0.004)

    def plain_step() -> None:
        step_child.observe(0.003)
        rows.observe(a.batch)

    m = Metrics(["m"])
    st = IterationStats(a.batch, (), ((Phase.STEP, 0.003),), ((Phase.STEP, a.batch),))

    def ours_keystroke() -> None:
        m.keystroke("m", "append_single", 0.045)
        m.request("Session.append", "OK")
        m.queue_wait.observe(0.004)  # observe_iteration's per-op loop, one op

    def ours_step() -> None:
        m.observe_iteration(st)

    for name, k, s in (("prometheus_client", plain_keystroke, plain_step), ("Metrics", ours_keystroke, ours_step)) * 2:
        print(f"{name:18s} {best_of(a.rounds, a.keystrokes, a.batch, k, s):.2f} us per keystroke")


if __name__ == "__main__":
    main()
