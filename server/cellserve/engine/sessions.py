"""Session records and their queued operations (the engine core, under its lock; no torch).

An op carries an integer ``ticket``: the core answers it with an ``Outcome`` in a step's
output, and the frontend turns tickets into whatever its callers wait on (futures, messages).
Nothing here is asynchronous.

A session's operations are applied strictly in the order they were accepted. They wait in
the session's queue until the scheduler takes them; consecutive appends waiting together are
taken as one run (coalescing). A piece longer than an iteration's budget is applied in chunks
over several iterations (chunked prefill): it stays at the head of the queue, its progress in
``AppendOp.done`` and its partial state in a scratch slot, until its last chunk lands.

Three positions describe a session, each at most the next:

- ``position``: characters applied (the state in the session's slot);
- ``planned_end``: where the session will be once the operations taken into the running
  iteration succeed (= ``position`` between iterations);
- ``queued_end``: where it will be once every accepted operation succeeds: the offset the
  next Append must carry. Recomputed from ``planned_end`` plus the queue when an operation
  fails, so operations already taken into a batch are never forgotten.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Literal

from .rewind import RewindLog
from .types import AppendOptions, Prediction, SessionInfo, SuggestRequest

if TYPE_CHECKING:
    from ..memory.window import SessionMemory
    from .completions import Completion
    from .plan import CheckpointRef


@dataclass(eq=False, slots=True)
class AppendOp:
    offset: int
    text: str
    tokens: list[int]
    options: AppendOptions
    ticket: int
    submitted_at: float  # perf_counter seconds, for the queue-wait statistic
    # chunked prefill: characters applied so far into ``scratch`` (a slot of its own, so the
    # session's slot changes only when the whole piece has landed), and what the applied
    # chunks answered that the final Prediction carries
    done: int = 0
    scratch: int | None = None
    logprobs: list[float] = field(default_factory=list)
    gates: list[list[list[float]]] = field(default_factory=list)
    answered: bool = False  # the core emitted this op's outcome
    retries: list[int] = field(default_factory=list)  # tickets of retries sent while it was queued
    with_session: bool = False  # a resume's replay: answered with (the session, the Prediction)


@dataclass(eq=False)
class ControlOp:
    """An ordered non-append operation.

    - "write": set the state to ``state`` (ZERO for open/reset, a snapshot's state for resume)
    - "rewind": go back ``chars`` characters
    - "snapshot": copy the state to the host
    - "complete": start ``completion`` (it forks the state as it is after the earlier ops)
    - "suggest": copy the state to the host for a beam search on it (engine/beam.py)
    - "close": end the session (after the earlier ops)
    """

    kind: Literal["write", "rewind", "snapshot", "complete", "suggest", "close"]
    ticket: int | None  # None: nobody waits (a new session's start-state write)
    submitted_at: float
    chars: int = 0  # rewind: characters back
    position: int = 0  # write: the session position it sets (0 for open/reset)
    state: object | None = None  # write: ZERO or a state handle
    completion: Completion | None = None
    suggest: SuggestRequest | None = None
    answered: bool = False
    applied: bool = False  # a write that landed: a failure afterwards never re-queues or undoes it
    # write: the session memory it installs (a fresh one for open/reset, a resumed snapshot's);
    # None: the session has no memory
    memory: SessionMemory | None = None


Op = AppendOp | ControlOp


class SessionState(Enum):
    IDLE = "idle"  # nothing queued, nothing in the running iteration, no completion
    BUSY = "busy"  # work queued or running: never expired by the idle TTL
    CLOSED = "closed"


@dataclass(eq=False)
class Session:
    session_id: str
    model: str
    owner: str
    slot: int
    created_at: float
    last_used_at: float  # unix seconds; also refreshed while work is queued
    history: RewindLog
    position: int = 0  # characters applied
    queued_end: int = 0  # position once every queued op is applied: what the next Append must carry
    planned_end: int = 0  # position once the ops taken into the running iteration are applied
    in_flight: bool = False  # ops of this session are in the running iteration
    last_prefill: int = 0  # the scheduler's tick when it last gave this session prefill budget
    queue: deque[Op] = field(default_factory=deque)
    # exactly-once: the latest accepted append (offset, text, and the op while it is queued or
    # its answer once applied) and the latest applied one (offset, text, its answer)
    last_piece: tuple[int, str, AppendOp | Prediction] | None = None
    last_applied: tuple[int, str, Prediction] | None = None
    completions: set[Completion] = field(default_factory=set)
    closed: bool = False
    exported_at: float = -1.0  # handoff: ``last_used_at`` when last exported (unchanged since: skip)
    # the session memory (docs/session-memory.md): the text applied so far, pushed at commit;
    # None: memory off for this session (the model ships no mixer, or the session said so)
    memory: SessionMemory | None = None
    memory_bytes: int = 0  # ``memory.nbytes()`` as of its last change (summed by the stats)

    @property
    def state(self) -> SessionState:
        if self.closed:
            return SessionState.CLOSED
        if self.queue or self.in_flight or self.completions:
            return SessionState.BUSY
        return SessionState.IDLE

    # ---- transitions ---------------------------------------------------------------------
    def accept_append(self, op: AppendOp) -> None:
        """An append whose offset is ``queued_end``: queued, and the latest accepted piece."""
        self.queue.append(op)
        self.queued_end += len(op.text)
        self.last_piece = (op.offset, op.text, op)

    def accept_control(self, op: ControlOp) -> None:
        self.queue.append(op)
        if op.kind == "write":
            self.queued_end = op.position
        elif op.kind == "rewind":
            self.queued_end = max(0, self.queued_end - op.chars)
        if op.kind in ("write", "rewind"):
            self.last_piece = None  # a retry of an earlier piece is no longer a retry

    def memory_changed(self) -> None:
        self.memory_bytes = self.memory.nbytes() if self.memory is not None else 0

    def begin_iteration(self) -> None:
        self.in_flight = True

    def end_iteration(self) -> None:
        self.in_flight = False
        self.planned_end = self.position

    def apply(self, position: int) -> None:
        """The session's slot now holds the state at ``position``."""
        self.position = position

    def land_piece(
        self,
        position: int,
        tokens: list[int],
        text: str,
        checkpoint: CheckpointRef | None,
        applied: tuple[int, str, Prediction],
        now: float,
    ) -> None:
        """Appended text landed (its state is in the slot): the position, the memory, the
        rewind log and the last applied piece (``applied``: offset, text, answer) follow.
        Shared by a step's commit and a speculative hit, which must leave the same session."""
        self.apply(position)
        if self.memory is not None:
            self.memory.push(tokens)
            self.memory_changed()
        self.history.record(text, position, checkpoint)
        self.last_applied = applied
        self.last_used_at = now

    def mark_closed(self) -> bool:
        """False when it already was closed."""
        if self.closed:
            return False
        self.closed = True
        return True

    def requeue_end(self) -> None:
        """After a failure: later offsets are checked against where the session will really be."""
        end = self.planned_end
        for op in self.queue:
            if isinstance(op, AppendOp):
                if op.offset == end:
                    end += len(op.text)
            elif op.kind == "write":
                end = op.position
            elif op.kind == "rewind":
                end = max(0, end - op.chars)
        self.queued_end = end

    def info(self, position: int | None = None) -> SessionInfo:
        """``position`` defaults to the applied one; ``GetSession`` passes ``queued_end``."""
        pos = self.position if position is None else position
        return SessionInfo(
            self.session_id,
            self.model,
            pos,
            self.created_at,
            self.last_used_at,
            self.history.reach(self.position),
        )
