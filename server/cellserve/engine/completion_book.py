"""The completions and ranked-suggestion searches running on the core: their slots, their
ends and their answers (core thread only, like the rest of the core).

A completion (``engine/completions.py``) holds one scratch slot per alternative from its start
to its end; it is found by its ticket while it runs (its consumer may cancel it). A search
(``engine/beam.py``) advances one character per step after the planned rows; its answer is an
``Outcome`` for the suggest op's ticket. Every end and answer goes to the core's deliveries.
"""

from __future__ import annotations

import logging
import random
import secrets

from ..errors import CapacityExceeded
from .admission import Admission
from .completions import Alternative, Completion
from .core_io import ChunkOut, Deliveries, Outcome
from .runtime import ModelRuntime
from .sessions import Session
from .types import CompletionChunk, CompletionRequest, FinishReason

log = logging.getLogger(__name__)


class CompletionBook:
    def __init__(self, admission: Admission, runtimes: dict[str, ModelRuntime], deliveries: Deliveries) -> None:
        self._admission = admission
        self._runtimes = runtimes
        self._deliveries = deliveries
        self.running_alternatives = 0  # over every model (Settings.max_running_completions)
        self._live: dict[int, Completion] = {}  # by ticket, until their last chunk
        # suggest ops submitted and not yet answered (MAX_PENDING_SUGGESTS): their tickets,
        # dropped when their Outcome is taken from the deliveries, whichever path answered them
        self.suggest_tickets: set[int] = set()

    # ---- completions ---------------------------------------------------------------------------
    def start(self, rt: ModelRuntime, s: Session, request: CompletionRequest, owner: str, ticket: int) -> Completion:
        """A completion of ``s`` with a scratch slot per alternative, counted against the
        owner's quota; a refusal (CapacityExceeded) holds nothing."""
        slots: list[int] = []
        try:
            for _ in range(request.n):
                slots.append(rt.alloc.alloc())
            self._admission.start_completion(owner, request.n)
        except CapacityExceeded:
            for slot in slots:
                rt.alloc.free(slot)
            raise
        seed = request.seed if request.seed is not None else secrets.randbits(64)
        alts = [Alternative(i, slot, random.Random(f"{seed}/{i}")) for i, slot in enumerate(slots)]
        c = Completion(s, request, alts, ticket)
        self._live[ticket] = c
        self.running_alternatives += request.n
        s.completions.add(c)
        return c

    def cancel_ticket(self, ticket: int) -> None:
        """The consumer of completion ``ticket`` went away: it ends (its slots are freed)."""
        c = self._live.get(ticket)
        if c is not None:
            self.cancel(c)

    def cancel_of(self, s: Session) -> None:
        """Every completion of ``s`` ends (an op of the session changes what they forked)."""
        for c in list(s.completions):
            self.cancel(c)

    def cancel(self, c: Completion) -> None:
        for alt in c.running():
            self.end_alternative(c, alt, FinishReason.CANCELLED)
        if not c.started:
            try:
                c.session.queue.remove(next(op for op in c.session.queue if getattr(op, "completion", None) is c))
            except StopIteration:
                pass

    def end_alternative(self, c: Completion, alt: Alternative, reason: str, text: str = "") -> None:
        alt.finish_reason = reason
        self._deliveries.put(ChunkOut(c, CompletionChunk(alt.index, text, True, reason)))
        if not c.running():
            self._deliveries.put(ChunkOut(c, None))
        if not c.running():
            self._live.pop(c.ticket, None)
        rt = self._runtimes[c.session.model]
        rt.alloc.free(alt.slot)
        self.running_alternatives -= 1
        self._admission.end_alternative(c.session.owner)
        if not c.running():
            rt.completions.pop(c, None)
            c.session.completions.discard(c)

    # ---- ranked suggestions (engine/beam.py) ----------------------------------------------------
    def step_beams(self) -> int:
        """One character of every running search, after the planned rows (only this thread
        adds or removes searches); returns the beam rows run."""
        rows = 0
        for rt in self._runtimes.values():
            if rt.beams.running:
                try:
                    rows += rt.beams.step()
                except Exception as e:  # only the searches fail; sessions are untouched
                    log.exception("a suggestion step failed")
                    rt.beams.fail_all(e)
        return rows

    def answer_beams(self, rt: ModelRuntime) -> None:
        """The searches of ``rt`` that ended are answered (their ticket: ``q.future``)."""
        for q in rt.beams.take_finished():
            if q.error is not None:
                self._deliveries.put(Outcome(q.future, None, q.error))
            else:
                self._deliveries.put(Outcome(q.future, q.result()))
