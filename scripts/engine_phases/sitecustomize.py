"""Loaded by every Python process started with this folder on PYTHONPATH (``cpu_by_thread.py``
with PHASES=1 does that) when $ENGINE_PHASES_DIR is set: times the engine core's phases with the
thread CPU clock in whichever process steps the core (``EngineCore.step`` and ``speculate``,
and ``profile_core.PHASES`` inside them, with the same wrappers as ``profile_core.py``; a
phase inside a batch of guesses counts too), counts its steps and rows and its batches of
guesses and their rows, counts the steps each iteration took (``iteration_steps``: a multi-
step completion burst takes several), and writes ``<pid>.json`` into $ENGINE_PHASES_DIR every
0.1 s. A process that never steps writes nothing. For experiments, $MAX_DECODE_STEPS (when set)
replaces ``engine.core.MAX_DECODE_STEPS`` in that process."""

import os
import sys

_DIR = os.environ.get("ENGINE_PHASES_DIR", "")


def _install() -> None:
    import json
    import threading
    import time
    from collections import defaultdict

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # scripts/
    from cellserve.engine import core as core_module
    from cellserve.engine.core import EngineCore
    from cellserve.engine.runner import ModelRunner
    from profile_core import PHASES, timed

    acc: dict[str, float] = defaultdict(float)
    counts = {"steps": 0, "rows": 0, "guess_batches": 0, "guess_rows": 0}
    iteration_steps: dict[int, int] = defaultdict(int)  # steps an iteration took -> iterations
    guessing = [False]  # inside EngineCore.speculate: a batch of guesses, not a step
    execute, speculate = ModelRunner.execute, EngineCore.speculate
    if os.environ.get("MAX_DECODE_STEPS"):
        core_module.MAX_DECODE_STEPS = int(os.environ["MAX_DECODE_STEPS"])

    def counted(self, plan):  # type: ignore[no-untyped-def]
        kind = "guess_" if guessing[0] else ""
        counts[kind + ("batches" if kind else "steps")] += 1
        counts[kind + "rows"] += len(plan.rows)
        if not kind and plan.rows:
            iteration_steps[1 + len(plan.rows[0].more)] += 1  # a burst's rows all take as many
        return execute(self, plan)

    def flagged(self):  # type: ignore[no-untyped-def]
        guessing[0] = True
        try:
            return speculate(self)
        finally:
            guessing[0] = False

    ModelRunner.execute = counted  # type: ignore[method-assign]
    EngineCore.speculate = flagged  # type: ignore[method-assign]
    for cls, name in [(EngineCore, "step"), (EngineCore, "speculate"), *PHASES]:
        timed(cls, name, acc)

    def write() -> None:
        path = os.path.join(_DIR, f"{os.getpid()}.json")
        while True:
            time.sleep(0.1)
            if counts["steps"]:
                with open(path + ".tmp", "w") as f:
                    json.dump({"cpu_s": dict(acc), **counts, "iteration_steps": dict(iteration_steps)}, f)
                os.replace(path + ".tmp", path)

    threading.Thread(target=write, name="engine-phases", daemon=True).start()


if _DIR:
    _install()
