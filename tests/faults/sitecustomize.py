"""Fault injection for server processes started by tests (never installed, never imported by
the package): put this folder on ``PYTHONPATH`` and set ``CELLSERVE_TEST_FAULTS=1``, and every
Python process of the server (frontends and engine core too: they inherit the environment)
breaks one phase of an iteration whose plan holds a row of a trigger length, once per phase:

    TRIGGERS[phase] characters in one row  ->  that phase raises RuntimeError(phase)

The phases are the runner's (prepare, forward, pick, unpack, commit) and the core's staging of
the answers (``StepUpdate.stage``), so a wire test can check that each one is answered and changes nothing.
"""

from __future__ import annotations

import os
from typing import Any

TRIGGERS = {"_prepare": 37, "_forward": 38, "_pick": 39, "_unpack": 40, "commit": 41, "stage": 42}


def _install() -> None:
    from cellserve.engine.runner import ModelRunner
    from cellserve.engine.update import StepUpdate

    armed: set[str] = set()  # phases the running iteration will break
    spent: set[str] = set()  # each phase breaks once

    real_execute = ModelRunner.execute

    def execute(self: ModelRunner, plan: Any) -> Any:
        armed.clear()
        lengths = {len(r.tokens) for r in plan.rows}
        armed.update(p for p, n in TRIGGERS.items() if n in lengths and p not in spent)
        return real_execute(self, plan)

    ModelRunner.execute = execute  # type: ignore[method-assign]
    for phase in TRIGGERS:
        owner: Any = StepUpdate if phase == "stage" else ModelRunner
        real = getattr(owner, phase)

        def broken(*args: Any, _real: Any = real, _phase: str = phase, **kwargs: Any) -> Any:
            if _phase in armed:
                armed.discard(_phase)
                spent.add(_phase)
                raise RuntimeError(f"injected fault in {_phase}")
            return _real(*args, **kwargs)

        setattr(owner, phase, broken)


if os.environ.get("CELLSERVE_TEST_FAULTS") == "1":
    _install()
