"""Micro-measurement behind ``Settings.max_batch_tokens`` and ``scheduler.GATE_CHAR_COST``: the
device time of one B=1 prefill chunk of T characters, of a gate-traced (want_gates) chunk, and
of single-step batches, through ``ModelRunner.execute`` on the default shipped model.

    .venv/bin/python scripts/measure_budget.py [THREADS]     # median of 7 runs each; CPU
"""

from __future__ import annotations

import statistics
import sys
import time

import torch
from cellserve.config import Settings
from cellserve.engine.plan import ZERO, Plan, Row
from cellserve.engine.runner import ModelRunner
from cellserve.engine.state_pool import StatePool
from cellserve.repository import ModelRepository


def median_s(runner: ModelRunner, plan: Plan, n: int = 7) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        runner.execute(plan)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
    repo = ModelRepository.load(Settings(device="cpu"))
    m = repo.get().model
    print(f"model {repo.default}: {m.cell} {m.layers}x{m.hidden}, {torch.get_num_threads()} thread(s)")
    runner = ModelRunner(m, StatePool(m.layers, m.hidden, m.state_arity, torch.device("cpu")))
    for t in (8, 16, 24, 32, 48, 64):
        plan = Plan([Row([5] * t, src=None, init=ZERO, dst=0, ends=[(t, 5)])], capacity=64)
        print(f"prefill T={t}: {median_s(runner, plan) * 1e3:.1f} ms")
    plan = Plan([Row([5] * 32, src=None, init=ZERO, dst=0, ends=[(32, 5)], gates=True)], capacity=64)
    g = median_s(runner, plan, 3)
    print(f"gates T=32: {g * 1e3:.1f} ms ({g / 32 * 1e3:.2f} ms/char)")
    for b in (1, 16, 64):
        plan = Plan([Row([5], src=i, dst=i, ends=[(1, 5)]) for i in range(b)], capacity=64)
        print(f"step B={b}: {median_s(runner, plan) * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
