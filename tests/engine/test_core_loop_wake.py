"""The core thread is woken only when it sleeps (``CoreLoop.post`` sets the event only then),
and no call is ever left in the inbox while it sleeps: posters on several threads, racing the
thread as it goes to sleep and wakes up, all get their calls taken."""

from __future__ import annotations

import random
import threading
import time

from cellserve.engine.core_io import Call, StepOutput
from cellserve.engine.loop import CoreLoop


class CountingCore:
    """Takes calls, sometimes 'steps' once after one (so the thread both sleeps and works)."""

    def __init__(self) -> None:
        self.taken = 0
        self.work = 0

    def add(self, call: Call) -> None:
        self.taken += 1
        if call.ticket % 7 == 0:
            self.work += 1

    def has_work(self) -> bool:
        return self.work > 0

    def step(self) -> StepOutput:
        time.sleep(0.0002)  # busy for a while: the calls posted meanwhile need no wake-up
        self.work -= 1
        return StepOutput([], None, self.work == 0)

    def idle_output(self) -> StepOutput:
        return StepOutput([], None, True)

    def speculating(self) -> bool:
        return False


def test_every_call_is_taken_whatever_the_race_with_sleeping() -> None:
    core = CountingCore()
    sets = 0
    loop = CoreLoop(core, lambda out: True)  # type: ignore[arg-type]
    real_set = loop._kick.set

    def counted_set() -> None:
        nonlocal sets
        sets += 1
        real_set()

    loop._kick.set = counted_set  # type: ignore[method-assign]
    loop.start()
    per_thread, threads = 3000, 3
    rng = random.Random(7)
    pauses = [[rng.random() < 0.02 for _ in range(per_thread)] for _ in range(threads)]

    def poster(k: int) -> None:
        for i in range(per_thread):
            loop.post(Call(k * per_thread + i + 1, "x"))
            if pauses[k][i]:  # now and then long enough for the thread to go to sleep
                time.sleep(0.0005)

    workers = [threading.Thread(target=poster, args=(k,)) for k in range(threads)]
    try:
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        deadline = time.monotonic() + 10.0
        while core.taken < per_thread * threads:
            assert time.monotonic() < deadline, f"{per_thread * threads - core.taken} calls left in the inbox"
            time.sleep(0.001)
    finally:
        loop.stop()
    assert core.taken == per_thread * threads
    assert 0 < sets < per_thread * threads / 2  # woken when asleep, not once per call
