"""A running completion (no torch, nothing asynchronous): its alternatives, updated by the
core. Its chunks leave a step as ``ChunkOut`` for the frontend, which puts them into the
consumer's ``CompletionStream`` (``engine/completion_stream.py``).

Each alternative decodes on its own scratch slot of the pool, forked from the session's state:
the first character comes from the session's own distribution (a "peek" row), the first step
reads the session's slot and writes the scratch slot, later steps stay on the scratch slot.
The session's slot is never written, so a completion never changes the session.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .types import CompletionRequest

if TYPE_CHECKING:
    from ..memory.window import MemoryFork
    from .sessions import Session


@dataclass(eq=False)
class Alternative:
    index: int
    slot: int  # scratch slot (freed when the alternative ends)
    rng: random.Random  # seeded per request and alternative: sampling repeats exactly
    text: str = ""
    last_token: int | None = None  # None until the first character is drawn
    forked: bool = False  # True once the scratch slot holds a state (after the first step)
    finish_reason: str = ""  # "" while running
    # the session memory forked for this alternative, advanced with its generated text at each
    # commit (never the session's own); None: not mixed
    memory: MemoryFork | None = None


@dataclass(eq=False)
class Completion:
    session: Session
    request: CompletionRequest
    alternatives: list[Alternative]
    ticket: int  # its chunks are addressed by it
    started: bool = False  # its "complete" op was reached in the session's queue

    def running(self) -> list[Alternative]:
        return [a for a in self.alternatives if not a.finish_reason]
