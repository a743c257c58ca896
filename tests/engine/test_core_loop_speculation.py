"""The core loop guesses keystrokes only once the core has been idle for the speculation delay
(so the event loop writes the answers just made without competing with the guesses), and a
call that arrives during the delay is taken at once, before any guess."""

from __future__ import annotations

import threading
import time
from typing import Any

from cellserve.engine.core_io import Call, StepOutput
from cellserve.engine.loop import CoreLoop


class FakeCore:
    """Answers calls at once and always has something to guess; records what ran when."""

    def __init__(self) -> None:
        self.events: list[tuple[str, float]] = []
        self.lock = threading.Lock()

    def add(self, call: Call) -> None:
        with self.lock:
            self.events.append(("add", time.monotonic()))

    def has_work(self) -> bool:
        return False

    def idle_output(self) -> StepOutput:
        return StepOutput([], None, True)

    def speculating(self) -> bool:
        return True

    def speculate(self) -> bool:
        with self.lock:
            self.events.append(("speculate", time.monotonic()))
        time.sleep(0.001)
        return False  # one batch, then nothing left

    def seen(self) -> list[tuple[str, float]]:
        with self.lock:
            return list(self.events)


def run_loop(delay_s: float) -> tuple[FakeCore, CoreLoop]:
    core = FakeCore()
    loop = CoreLoop(core, lambda out: True, delay_s)  # type: ignore[arg-type]
    loop.start()
    return core, loop


def wait_for(pred: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


def test_guesses_wait_for_the_delay() -> None:
    core, loop = run_loop(0.3)
    try:
        posted = time.monotonic()
        loop.post(Call(1, "ping", ()))
        wait_for(lambda: any(k == "speculate" for k, _ in core.seen()))
        first_guess = next(t for k, t in core.seen() if k == "speculate")
        assert first_guess - posted >= 0.29
    finally:
        loop.stop()


def test_no_delay_guesses_at_once() -> None:
    core, loop = run_loop(0.0)
    try:
        posted = time.monotonic()
        loop.post(Call(1, "ping", ()))
        wait_for(lambda: any(k == "speculate" for k, _ in core.seen()))
        assert next(t for k, t in core.seen() if k == "speculate") - posted < 0.25
    finally:
        loop.stop()


def test_a_call_during_the_delay_is_taken_before_any_guess() -> None:
    core, loop = run_loop(0.5)
    try:
        loop.post(Call(1, "ping", ()))
        wait_for(lambda: len(core.seen()) >= 1)
        time.sleep(0.05)  # inside the delay
        loop.post(Call(2, "ping", ()))
        wait_for(lambda: sum(k == "add" for k, _ in core.seen()) == 2, timeout=0.4)
        assert [k for k, _ in core.seen()] == ["add", "add"]
        wait_for(lambda: any(k == "speculate" for k, _ in core.seen()))
    finally:
        loop.stop()
