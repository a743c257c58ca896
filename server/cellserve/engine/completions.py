"""A running completion and the async iterator its consumer reads (no torch). The core
updates the alternatives; its chunks leave a step as ``ChunkOut(ticket, chunk)`` and the
frontend puts them into the consumer's queue (``CompletionStream``, on the event loop).

Each alternative decodes on its own scratch slot of the pool, forked from the session's state:
the first character comes from the session's own distribution (a "peek" row), the first step
reads the session's slot and writes the scratch slot, later steps stay on the scratch slot.
The session's slot is never written, so a completion never changes the session.

The core emits one chunk per character; the consumer's iterator hands over everything of an
alternative that is already waiting as one chunk (its text concatenated). An idle consumer still
gets every character as soon as it exists; a busy one (or a multi-step decoding iteration, which
delivers several characters at once) gets fewer, longer chunks: one gRPC message per batch of
characters instead of one per character, which bounded completion throughput (measured with
`cellserve bench`).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .types import CompletionChunk, CompletionRequest

if TYPE_CHECKING:
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


@dataclass(eq=False)
class Completion:
    session: Session
    request: CompletionRequest
    alternatives: list[Alternative]
    ticket: int  # its chunks are addressed by it
    started: bool = False  # its "complete" op was reached in the session's queue

    def running(self) -> list[Alternative]:
        return [a for a in self.alternatives if not a.finish_reason]


class CompletionStream(AsyncIterator[CompletionChunk]):
    """What ``Engine.complete`` returns. Closing it (``aclose()``) or cancelling the task that
    awaits it cancels the completion and frees its scratch slots."""

    def __init__(
        self,
        completion: Completion,
        chunks: asyncio.Queue[CompletionChunk | None],
        cancel: Callable[[Completion], None],
    ) -> None:
        self._completion = completion
        self._chunks = chunks  # None: the end
        self._cancel = cancel
        self._ended = False
        self._held: list[CompletionChunk | None] = []  # taken from the queue, not handed over yet

    def __aiter__(self) -> CompletionStream:
        return self

    async def __anext__(self) -> CompletionChunk:
        if self._ended:
            raise StopAsyncIteration
        try:
            chunk = self._held.pop() if self._held else await self._chunks.get()
        except asyncio.CancelledError:
            self._ended = True
            self._cancel(self._completion)
            raise
        if chunk is None:
            self._ended = True
            raise StopAsyncIteration
        q = self._chunks
        while not chunk.done and not q.empty():  # merge what of this alternative already waits
            nxt = q.get_nowait()
            if nxt is None or nxt.alternative != chunk.alternative:
                self._held.append(nxt)
                break
            chunk = CompletionChunk(chunk.alternative, chunk.text + nxt.text, nxt.done, nxt.finish_reason)
        return chunk

    async def aclose(self) -> None:
        if not self._ended:
            self._ended = True
            self._cancel(self._completion)
