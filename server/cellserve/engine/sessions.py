"""Session records and their queued operations (asyncio loop thread only; no torch).

A session's operations are applied strictly in the order they were accepted. They wait in
the session's queue until the scheduler takes them; consecutive appends waiting together are
taken as one run (coalescing).
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from .rewind import RewindLog
from .types import AppendOptions, Prediction, SessionInfo

if TYPE_CHECKING:
    from .completions import Completion


@dataclass(eq=False)
class AppendOp:
    offset: int
    text: str
    tokens: list[int]
    options: AppendOptions
    future: asyncio.Future[Prediction]
    submitted_at: float  # perf_counter seconds, for the queue-wait statistic


@dataclass(eq=False)
class ControlOp:
    """An ordered non-append operation.

    - "write": set the state to ``state`` (ZERO for open/reset, a snapshot's state for resume)
    - "rewind": go back ``chars`` characters
    - "snapshot": copy the state to the host
    - "complete": start ``completion`` (it forks the state as it is after the earlier ops)
    """

    kind: Literal["write", "rewind", "snapshot", "complete"]
    future: asyncio.Future[object] | None
    submitted_at: float
    chars: int = 0  # rewind: characters back
    position: int = 0  # write: the session position it sets (0 for open/reset)
    state: object | None = None  # write: ZERO or a state handle
    completion: Completion | None = None


Op = AppendOp | ControlOp


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
    queue: deque[Op] = field(default_factory=deque)
    # exactly-once: the latest accepted append (offset, text, its future) and the latest applied one
    last_piece: tuple[int, str, asyncio.Future[Prediction]] | None = None
    last_applied: tuple[int, str, asyncio.Future[Prediction]] | None = None
    completions: set[Completion] = field(default_factory=set)
    closed: bool = False

    def info(self) -> SessionInfo:
        return SessionInfo(
            self.session_id,
            self.model,
            self.position,
            self.created_at,
            self.last_used_at,
            self.history.reach(self.position),
        )
