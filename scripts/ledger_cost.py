"""What admission costs per call with the ledger (engine/ledger.py): ``take_chars`` for a tenant
with limits, an open's ``admit_session`` plus a close's ``release_session``, and ``take_chars``
for a tenant without limits (authentication off), on the local ledger, a shared one nobody else
uses, and a shared one that another process charges for the same tenant without pause.
``--before REV``: also the dict-based admission of commit REV (before the ledger, e.g.
a4b91e6; its ``admission.py`` read with ``git show``), its session checks and counts as
``SessionTable`` made them then.

    .venv/bin/python scripts/ledger_cost.py [--before REV] [--calls N]

Prints microseconds per call, the best of five repeats of N calls.
"""

from __future__ import annotations

import argparse
import importlib.util
import multiprocessing as mp
import subprocess
import sys
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from cellserve.config import Settings
from cellserve.engine.admission import Admission, Limits
from cellserve.engine.ledger import Ledger, LedgerHandle

ROOT = Path(__file__).resolve().parents[1]
LIMITS = Limits(max_sessions=10**6, max_streams=10, max_completions=10, chars_per_s=1e12, chars_burst=10**9)
SETTINGS = Settings(max_sessions=10**6)
TENANTS = 50  # each with limits and 5 sessions, as a small tokens file would make them


def best(fn: Callable[[], object], calls: int) -> float:
    return min(timeit.repeat(fn, number=calls, repeat=5)) / calls * 1e6


def old_module(rev: str) -> ModuleType:
    """``engine/admission.py`` of ``rev``, importable beside today's (its relative imports
    resolve in the same package)."""
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{rev}:server/cellserve/engine/admission.py"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    spec = importlib.util.spec_from_loader("cellserve.engine._admission_before", loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "cellserve.engine"
    sys.modules[spec.name] = module  # dataclasses look their module up there
    exec(compile(source, f"{rev}:admission.py", "exec"), module.__dict__)  # noqa: S102 (our own history)
    return module


def before(rev: str, calls: int) -> tuple[float, float, float]:
    q: Any = old_module(rev).Admission(SETTINGS)
    for t in range(TENANTS):
        q.set_limits(f"t{t}", LIMITS)
    per_owner = {f"t{t}": 5 for t in range(TENANTS)}
    by_id = dict.fromkeys(range(TENANTS * 5))

    def cycle() -> None:  # SessionTable.open's check and count, then close's, as they were
        q.check_session("t7", per_owner, len(by_id))
        if len(by_id) >= SETTINGS.max_sessions:
            raise RuntimeError("full")
        per_owner["t7"] = per_owner.get("t7", 0) + 1
        if (left := per_owner.pop("t7", 1) - 1) > 0:
            per_owner["t7"] = left

    return best(lambda: q.take_chars("t7", 1), calls), best(cycle, calls), best(lambda: q.take_chars("x", 1), calls)


def now(ledger: Ledger, calls: int) -> tuple[float, float, float]:
    q = Admission(SETTINGS, ledger=ledger)
    for t in range(TENANTS):
        q.set_limits(f"t{t}", LIMITS)
        for _ in range(5):
            q.admit_session(f"t{t}")

    def cycle() -> None:
        q.admit_session("t7")
        q.release_session("t7")

    return best(lambda: q.take_chars("t7", 1), calls), best(cycle, calls), best(lambda: q.take_chars("x", 1), calls)


def hammer(handle: LedgerHandle, stop: Any) -> None:
    """Another core process charging the same tenant without pause."""
    ledger = Ledger.attach(handle)
    q = Admission(SETTINGS, ledger=ledger)
    q.set_limits("t7", LIMITS)
    while not stop.is_set():
        for _ in range(1000):
            q.take_chars("t7", 1)
    ledger.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", metavar="REV", help="also the dict-based admission of this commit")
    ap.add_argument("--calls", type=int, default=200_000)
    a = ap.parse_args()
    rows: list[tuple[str, tuple[float, float, float]]] = []
    if a.before:
        rows.append((f"dicts ({a.before})", before(a.before, a.calls)))
    rows.append(("ledger, local", now(Ledger.local(), a.calls)))
    ctx = mp.get_context("spawn")
    handle = Ledger.create_shared(ctx)
    try:
        shared = Ledger.attach(handle)
        rows.append(("ledger, shared, uncontended", now(shared, a.calls)))
        stop = ctx.Event()
        other = ctx.Process(target=hammer, args=(handle, stop))
        other.start()
        try:
            time.sleep(1.0)  # the other process is charging by now
            rows.append(("ledger, shared, another process charging", now(shared, a.calls)))
        finally:
            stop.set()
            other.join(10)
            if other.is_alive():
                other.kill()
                other.join()
        shared.close()
    finally:
        handle.close()
    print(f"{'':42s} {'take_chars':>11s} {'admit+release':>14s} {'no limits':>10s}  (us per call, best of 5)")
    for name, (chars, cycle, free) in rows:
        print(f"{name:42s} {chars:11.2f} {cycle:14.2f} {free:10.2f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
