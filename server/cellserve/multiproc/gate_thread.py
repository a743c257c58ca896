"""InspectGates in the engine core process: one worker thread, a bounded queue.

The core holds the weights, so it runs the frontends' gate queries (``gate_report.run_query``:
reference cells, one character at a time, far slower than a serving step). One runs at a time
(``MAX_CONCURRENT``) and at most ``MAX_WAITING`` wait; beyond, the query is answered
RESOURCE_EXHAUSTED at once. Never on the core thread: keystrokes do not wait behind it.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from ..errors import CapacityExceeded, CellserveError
from ..gate_report import BUSY, MAX_WAITING, RETRY_AFTER_S, GateQuery, ModelLookup, run_query

log = logging.getLogger("cellserve.core")

Answer = Callable[[object, BaseException | None], None]


class GateThread:
    def __init__(self, lookup: ModelLookup) -> None:
        self._lookup = lookup
        self._queue: queue.Queue[tuple[GateQuery, Answer] | None] = queue.Queue(maxsize=MAX_WAITING)
        self._thread = threading.Thread(target=self._run, name="cellserve-core-gates", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        try:
            self._queue.put(None, timeout=1.0)
        except queue.Full:
            return  # daemon: it ends with the process
        self._thread.join(timeout=5.0)

    def submit(self, query: GateQuery, answer: Answer) -> None:
        """``answer(report, error)`` runs on the gate thread (or here, when refused)."""
        try:
            self._queue.put_nowait((query, answer))
        except queue.Full:
            answer(None, CapacityExceeded(BUSY, retry_after_s=RETRY_AFTER_S))

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            query, answer = item
            try:
                report = run_query(self._lookup, query)
            except Exception as e:  # noqa: BLE001 (answered to the caller)
                if not isinstance(e, CellserveError):
                    log.exception("gate inspection failed")
                answer(None, e)
            else:
                answer(report, None)
