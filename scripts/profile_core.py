"""The engine core's own CPU per keystroke, with no gRPC and no event loop: N sessions on the
shipped model (server defaults: int8, session memory on, the server's garbage-collector tuning) each append one character per step,
driven synchronously (``EngineCore.submit_append`` then ``step``), for ROUNDS steps. Prints the
core's CPU per keystroke (``time.thread_time``: this thread's CPU, the model's kernels included)
split by phase, beside the model's own batched step at the same N (the bench's ceiling: step ->
head -> top-5 -> host). The text typed is this repository's server sources, one file per session.
``--cprofile`` adds the functions with the most own time. ``--beside-busy-thread`` runs a Python
thread that never sleeps beside the core (a stand-in for a busy event loop in the same process:
the two take turns on the interpreter lock, ``sys.getswitchinterval()`` apart at most;
``--switch-interval S`` sets it). ``--count-torch-calls``: torch calls (functions and tensor
methods; each ATen op releases the interpreter lock while it runs) per step, by phase.

``--also MODULE:NAME`` times one more function like a phase (repeatable); ``--no-phases``
times none of the phases (the total without their timers: for an A/B of two trees).

    .venv/bin/python scripts/profile_core.py [N] [ROUNDS] [--model python-lstm] [--set key=value ...] [--cprofile]
        [--also cellserve.engine.runner:mix_on_host ...]
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import importlib
import itertools
import pstats
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from cellserve.bench.ceiling import Ceiling
from cellserve.bench.model import ModelRef
from cellserve.boot import tune_gc
from cellserve.config import Settings, default_model_dir
from cellserve.engine.core import EngineCore
from cellserve.engine.runner import ModelRunner
from cellserve.engine.types import AppendOptions
from cellserve.engine.update import StepUpdate
from cellserve.repository import ModelRepository
from torch.overrides import TorchFunctionMode

PHASES: list[tuple[type, str]] = [
    (EngineCore, "_schedule"),
    (ModelRunner, "_prepare"),
    (ModelRunner, "_forward"),
    (ModelRunner, "_pick"),
    (ModelRunner, "_unpack"),
    (ModelRunner, "_write_back"),
    (ModelRunner, "_decode"),  # a step of completions only
    (StepUpdate, "stage"),
    (StepUpdate, "apply"),
]


_ACTIVE: list[str] = []  # the phases running now, innermost last


class _CountTorchCalls(TorchFunctionMode):
    """Counts torch calls (functions and tensor methods) by the innermost phase running."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[str, int] = defaultdict(int)

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.counts[_ACTIVE[-1] if _ACTIVE else "(outside the phases)"] += 1
        return func(*args, **(kwargs or {}))


def timed(cls: type, name: str, acc: dict[str, float]) -> Callable[[], None]:
    """Wraps ``cls.name`` to add its thread CPU to ``acc``; returns the undo."""
    fn = getattr(cls, name)
    label = f"{getattr(cls, '__name__', cls)}.{name}"

    def wrapper(*a: Any, **k: Any) -> Any:
        t0 = time.thread_time()
        _ACTIVE.append(label)
        try:
            return fn(*a, **k)
        finally:
            _ACTIVE.pop()
            acc[label] += time.thread_time() - t0

    setattr(cls, name, wrapper)
    return lambda: setattr(cls, name, fn)


def _target(spec: str) -> tuple[Any, str]:
    """``MODULE:NAME`` or ``MODULE:CLASS.NAME`` -> (the module or class, the name) for ``timed``.
    A function a module imported by name is timed where it is called from: name that module."""
    module, _, path = spec.partition(":")
    owner: Any = importlib.import_module(module)
    *classes, name = path.split(".")
    for c in classes:
        owner = getattr(owner, c)
    return owner, name


def _busy() -> None:
    x = 0
    while True:
        for i in range(1000):
            x += i


def texts(n: int) -> list[str]:
    root = Path(__file__).resolve().parents[1] / "server" / "cellserve"
    files = sorted(root.rglob("*.py"))
    out = [f.read_text() for f in files if f.stat().st_size > 4000]
    return [out[i % len(out)] for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("n", type=int, nargs="?", default=256)
    ap.add_argument("rounds", type=int, nargs="?", default=200)
    ap.add_argument("--model", default="python-lstm")
    ap.add_argument("--set", action="append", default=[], help="a Settings field, key=value")
    ap.add_argument("--cprofile", action="store_true")
    ap.add_argument("--sort", default="tottime", help="cProfile order: tottime, cumtime...")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--beside-busy-thread", action="store_true")
    ap.add_argument("--switch-interval", type=float, default=None, help="sys.setswitchinterval, seconds")
    ap.add_argument("--count-torch-calls", action="store_true", help="torch calls per step by phase (slows it)")
    ap.add_argument("--no-phases", action="store_true", help="the total only: no phase timers (about 1 us less)")
    ap.add_argument(
        "--also",
        action="append",
        default=[],
        help="one more function timed like the phases, MODULE:NAME or MODULE:CLASS.NAME "
        "(e.g. cellserve.engine.runner:mix_on_host, cellserve.nn.int8:FixedRangeHead.forward)",
    )
    a = ap.parse_args()
    torch.set_num_threads(1)
    extra: dict[str, Any] = dict(kv.split("=", 1) for kv in a.set)
    st = Settings(device="cpu", models=[a.model], max_sessions=max(4096, a.n), cpu_threads=1, **extra)
    core = EngineCore(st, ModelRepository.load(st))
    tune_gc(st)  # as a server does once loaded (Settings.gc_young_threshold)
    sids = [core.open_session().session_id for _ in range(a.n)]
    typed = texts(a.n)
    tickets = itertools.count(1)
    opts = AppendOptions()

    steps = 0

    def round_(r: int) -> None:
        nonlocal steps
        for sid, text in zip(sids, typed, strict=True):
            core.submit_append(sid, r, text[r % len(text)], opts, "", next(tickets))
        while core.has_work():
            core.step()
            steps += 1
        core.take_deliveries()

    warm = 20
    for r in range(warm):
        round_(r)
    ceiling = Ceiling(ModelRef(default_model_dir(), a.model, ""), "cpu", 1).keystrokes(a.n, 2.0)  # alone
    if a.switch_interval is not None:
        sys.setswitchinterval(a.switch_interval)
    if a.beside_busy_thread:
        threading.Thread(target=_busy, daemon=True).start()
    acc: dict[str, float] = defaultdict(float)
    phases = [] if a.no_phases else PHASES
    undo = [timed(cls, name, acc) for cls, name in phases + [_target(spec) for spec in a.also]]
    prof = cProfile.Profile() if a.cprofile else None
    counter = _CountTorchCalls() if a.count_torch_calls else None
    steps = 0
    t0 = time.thread_time()
    if prof:
        prof.enable()
    with counter if counter is not None else contextlib.nullcontext():
        for r in range(warm, warm + a.rounds):
            round_(r)
    if prof:
        prof.disable()
    total = time.thread_time() - t0
    for u in undo:
        u()
    keys = a.n * a.rounds
    model_row = ceiling["step_s"] / a.n
    print(f"N={a.n}, {a.rounds} rounds: core CPU {1e6 * total / keys:.1f} us per keystroke; "
          f"the model's own step {1e6 * model_row:.1f} us per row ({ceiling['precision']})")  # fmt: skip
    for k, v in sorted(acc.items(), key=lambda kv: -kv[1]):
        print(f"  {k:28s} {1e6 * v / keys:7.1f} us")
    if counter is not None:  # (the CPU figures above include the counting)
        print(f"torch calls per step ({steps} steps), by the innermost phase:")
        for k, n in sorted(counter.counts.items(), key=lambda kv: -kv[1]):
            print(f"  {k:28s} {n / steps:7.1f}")
    if prof:
        pstats.Stats(prof).sort_stats(a.sort).print_stats(a.top)


if __name__ == "__main__":
    main()
