"""What a torch call costs the thread that makes it when another Python thread wants the
interpreter lock: each case runs alone, then beside a thread that never sleeps (the worst case
of an event loop in the same process), and prints per call the caller's CPU and its
voluntary context switches (each one a wait for the lock: the caller slept, the other thread
ran, and the caller's caches went cold), beside the ratio of the two CPU figures.

The cases:
- ``eager``: 20 small ops on [128, 512] from Python (each releases the lock while it runs);
- ``scripted``: the same function compiled by TorchScript (``nn/scripted.py``): one release;
- ``scripted, inputs held``: the same, its input tensors also referenced from C++ (a
  ScriptModule's list attribute). A Python-owned tensor whose C++ reference count goes back to
  one inside a no-lock region makes torch take the lock there to settle its Python object
  (PyObject preservation), so a scripted call takes the lock again at each input's last use
  unless something else still references it;
- ``int8 step``, ``int8 step, inputs held``: the served model's batched step (``step_ids``, one
  scripted call; N rows of the shipped python-lstm), as the runner calls it and with its
  inputs held.

    .venv/bin/python scripts/gil_handoffs.py [--rows 128] [--calls 100]
"""

# no "from __future__ import annotations": TorchScript reads the Holder's class annotation
import argparse
import resource
import threading
import time
from collections.abc import Callable
from typing import List  # noqa: UP035 (TorchScript reads typing.List, not list[...])

import torch
from cellserve.config import Settings
from cellserve.engine.core import EngineCore
from cellserve.nn.int8 import FixedRangeRNN
from cellserve.repository import ModelRepository


class Holder(torch.nn.Module):
    """Keeps C++ references to tensors (a TorchScript list attribute)."""

    held: List[torch.Tensor]  # noqa: UP006

    def __init__(self) -> None:
        super().__init__()
        self.held = []

    @torch.jit.export
    def hold(self, t: torch.Tensor) -> None:
        self.held.append(t)

    @torch.jit.export
    def release(self) -> None:
        self.held.clear()

    def forward(self) -> int:
        return len(self.held)


def ops(x: torch.Tensor, w: torch.Tensor, c: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    y = x @ w + c
    for _ in range(4):
        y = torch.tanh(y @ w) * torch.sigmoid(d) + y
    return y


def _spin() -> None:
    v = 0
    while True:
        for i in range(1000):
            v += i


def measure(fn: Callable[[], object], calls: int) -> tuple[float, float]:
    """(CPU us, voluntary context switches) per call of ``fn``, on this thread (the CPU from
    the thread's CPU clock: getrusage's user time is tick-grained here)."""
    for _ in range(max(5, calls // 5)):
        fn()
    r0, t0 = resource.getrusage(resource.RUSAGE_THREAD), time.thread_time()
    for _ in range(calls):
        fn()
    t1, r1 = time.thread_time(), resource.getrusage(resource.RUSAGE_THREAD)
    return (t1 - t0) / calls * 1e6, (r1.ru_nvcsw - r0.ru_nvcsw) / calls


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=128)
    ap.add_argument("--calls", type=int, default=100)
    a = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    b = a.rows
    x, c, d = torch.rand(b, 512), torch.rand(b, 512), torch.rand(b, 512)
    w = torch.randn(512, 512) * 0.02
    scripted = torch.jit.script(ops)

    st = Settings(device="cpu", models=["python-lstm"], cpu_threads=1)
    core = EngineCore(st, ModelRepository.load(st))
    rnn = next(rt.runner.model.rnn for rt in core._runtimes.values())
    if not isinstance(rnn, FixedRangeRNN):
        raise SystemExit("the shipped model is not served at int8 here: nothing to time for the step")
    ids = torch.randint(0, rnn.project.by_id.shape[0], (b,))
    h, cc = torch.zeros(rnn.layers, b, rnn.hidden), torch.zeros(rnn.layers, b, rnn.hidden)
    step: Callable[[], object] = lambda: rnn.step_ids(ids, (h, cc))  # noqa: E731

    cases: list[tuple[str, Callable[[], object]]] = [
        ("eager", lambda: ops(x, w, c, d)),
        ("scripted", lambda: scripted(x, w, c, d)),
        ("scripted, inputs held", lambda: scripted(x, w, c, d)),
        ("int8 step", step),
        ("int8 step, inputs held", step),
    ]
    holder = torch.jit.script(Holder())
    held = {"scripted, inputs held": (x, w, c, d), "int8 step, inputs held": (ids, rnn.project.by_id, h, cc)}

    def run_all() -> dict[str, tuple[float, float]]:
        out = {}
        for name, fn in cases:
            for t in held.get(name, ()):
                holder.hold(t)
            out[name] = measure(fn, a.calls)
            holder.release()  # the next case runs with nothing held (from Python, .held is a copy)
        return out

    alone = run_all()
    threading.Thread(target=_spin, daemon=True, name="spinner").start()
    time.sleep(0.05)
    busy = run_all()
    print(f"rows {b}, {a.calls} calls per case; the caller's CPU per call, us (context switches per call)")
    print(f"{'case':26s} {'alone':>16s} {'beside a busy thread':>22s} {'ratio':>7s}")
    for name, _ in cases:
        (u0, s0), (u1, s1) = alone[name], busy[name]
        ratio = u1 / u0 if u0 > 0 else float("nan")  # a case too short for the CPU clock
        print(f"{name:26s} {u0:9.0f} ({s0:4.1f}) {u1:14.0f} ({s1:4.1f}) {ratio:7.2f}")


if __name__ == "__main__":
    main()
