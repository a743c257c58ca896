"""The one core thread: drains the inbox into the core, steps while there is work, and hands
each step's output on as one object.

The core (``engine/core.py``) is synchronous and owned by this thread alone: nothing else
touches it while the thread runs, so it needs no lock. Other threads only ``post`` a ``Call``
(a deque append, and an event set when the thread sleeps; ``collections.deque`` appends and
pops are atomic) and get
the answers, by ticket, in the ``StepOutput`` that ``hand_off`` receives once per pass: after
each step, or after a pass that only answered calls.

``hand_off`` runs on this thread; the in-process engine passes one that schedules the output
onto the event loop with one ``call_soon_threadsafe`` per step.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from .core import EngineCore
from .core_io import Call, StepOutput

log = logging.getLogger(__name__)

STEP_RETRY_S = 0.05  # after a step raised: the pause before the next one


class CoreLoop:
    def __init__(
        self, core: EngineCore, hand_off: Callable[[StepOutput], bool], speculation_delay_s: float = 0.0
    ) -> None:
        """``hand_off(output)`` delivers one pass's output; False: nobody is left to answer
        (the thread ends). ``speculation_delay_s``: how long the core stays idle before it
        guesses keystrokes (``Settings.speculation_delay_s``)."""
        self.core = core
        self._hand_off = hand_off
        self._inbox: deque[Call] = deque()
        self._kick = threading.Event()  # a call was posted (or stop was asked)
        # True while the core thread sleeps (or is about to): only then does a post set the
        # event. Under load the thread never sleeps, and setting it per call (a lock and a
        # notify) stood out in a profile of the core process's input thread. The thread raises the flag
        # before it looks at the inbox a last time, and a poster appends before it reads the
        # flag, so a call is either seen by that look or kicks the sleep.
        self._sleeping = False
        self._stopping = False
        self._speculation_delay_s = speculation_delay_s
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="cellserve-core", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def backlog(self) -> int:
        """Calls posted and not yet taken by the core thread (a reader may bound its intake)."""
        return len(self._inbox)

    def post(self, call: Call) -> None:
        """Any thread: ``call`` runs on the core thread, in the order posted."""
        self._inbox.append(call)
        if self._sleeping:
            self._kick.set()

    def stop(self) -> None:
        """Ends the thread after the pass in flight (blocking: join it off the event loop)."""
        self._stopping = True
        self._kick.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def drain_inbox(self) -> None:
        """After ``stop``: the calls still posted run now, on the caller's thread (the core
        thread is gone, so the core is this caller's alone)."""
        assert not self.alive
        while self._inbox:
            self.core.add(self._inbox.popleft())

    def _sleep(self, timeout: float | None = None) -> bool:
        """Waits for a post (or stop) unless one is already there; False: the timeout passed."""
        self._sleeping = True
        try:
            if self._inbox or self._stopping:
                return True
            return self._kick.wait(timeout)
        finally:
            self._sleeping = False
            self._kick.clear()  # the inbox is drained next: whatever set it is taken then

    def _run(self) -> None:
        inbox, core = self._inbox, self.core
        while not self._stopping:
            self._sleep()
            while not self._stopping:
                while inbox:
                    core.add(inbox.popleft())
                if core.has_work():
                    try:
                        out = core.step()
                    except Exception:  # a bug in the core's own bookkeeping: keep serving
                        log.exception("engine step failed")
                        out = core.after_failed_step()
                        time.sleep(STEP_RETRY_S)  # a bug that repeats must not spin the CPU
                else:
                    out = core.idle_output()
                if not self._hand_off(out):
                    return
                if out.idle and not inbox:
                    # idle: speculative keystrokes, one small batch at a time, until a call
                    # arrives (it is taken at once) or nothing is left to guess; first a short
                    # wait, so the event loop writes this pass's answers without competing
                    # with the guesses for the interpreter lock (a call ends the wait)
                    if core.speculating() and not self._sleep(self._speculation_delay_s):
                        while not inbox and not self._stopping and core.speculate():
                            pass
                    if not inbox:
                        break
