"""What goes into the engine core and what comes out of it: plain dataclasses, no torch.

In: a ``Call`` (a ticket, a core method, its arguments), one per inbox request
(``EngineCore.add``). Out: one ``StepOutput`` per pass of the core thread, holding the
``Delivery``s of that pass in the order they happened: an ``Outcome`` answers a ticket, a
``ChunkOut`` carries a completion's next chunk. Between passes the core collects them in its
``Deliveries``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from .sessions import AppendOp, Op
from .types import CompletionChunk, IterationStats, Prediction

if TYPE_CHECKING:
    from .completions import Completion


# Call, Outcome and ChunkOut are made per keystroke (or chunk): plain slots dataclasses, since a
# frozen one's __init__ sets every field through object.__setattr__, several times slower.
# Nothing changes them after they are made.
@dataclass(slots=True)
class Call:
    """A request for the core, through the core thread's inbox (``EngineCore.add``): the core
    method ``method`` with ``args``. Not ``ticketed``: its return value (or the error it
    raises) answers ``ticket`` at once. ``ticketed``: the ticket is passed as the last
    argument and answered when the op is; a refusal raised at once answers it at once.
    Ticket 0: nobody waits for the answer."""

    ticket: int
    method: str
    args: tuple[Any, ...] = ()
    ticketed: bool = False


@dataclass(slots=True)
class Outcome:
    """A caller's answer: ``ticket`` (handed in at submission) gets ``value``, or ``error``
    when set."""

    ticket: int
    value: object = None
    error: BaseException | None = None


@dataclass(slots=True)
class ChunkOut:
    """A completion's next chunk for its consumer; ``chunk`` None: the completion ended."""

    completion: Completion
    chunk: CompletionChunk | None


Delivery = Outcome | ChunkOut


@dataclass(frozen=True)
class StepOutput:
    """What one pass of the core hands the frontend, in the order it happened."""

    deliveries: list[Delivery]
    stats: IterationStats | None  # None when no device work ran
    idle: bool  # nothing queued, running or completing after this pass


class Deliveries:
    """Everything the core owes callers since the last pass was handed on, in order: the
    answers of calls (``add``) and of the ops a step applied or failed, and completion chunks.
    An op is answered once (``op.answered``); an append's answer also answers the retries
    that attached to it while it waited."""

    __slots__ = ("_items",)

    def __init__(self) -> None:
        self._items: list[Delivery] = []

    def put(self, d: Delivery) -> None:
        self._items.append(d)

    def take(self) -> list[Delivery]:
        out, self._items = self._items, []
        return out

    def resolve(self, op: Op, value: object) -> None:
        if op.ticket is not None and not op.answered:
            op.answered = True
            self._items.append(Outcome(op.ticket, value))
            if isinstance(op, AppendOp) and isinstance(value, Prediction):
                for t in op.retries:
                    self._items.append(Outcome(t, replace(value, replayed=True)))

    def fail(self, op: Op, err: BaseException) -> None:
        if op.ticket is not None and not op.answered:
            op.answered = True
            self._items.append(Outcome(op.ticket, None, err))
            for t in op.retries if isinstance(op, AppendOp) else ():
                self._items.append(Outcome(t, None, err))
