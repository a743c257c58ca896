"""The async iterator a completion's consumer reads (event loop side).

The core emits one chunk per character; the iterator hands over everything of an alternative
that is already waiting as one chunk (its text concatenated). An idle consumer still gets every
character as soon as it exists; a busy one (or a multi-step decoding iteration, which delivers
several characters at once) gets fewer, longer chunks: one gRPC message per batch of characters
instead of one per character, which bounded completion throughput (docs/measurements.md,
"Multi-step decoding").
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from .types import CompletionChunk


class CompletionStream(AsyncIterator[CompletionChunk]):
    """What ``Engine.complete`` returns. Closing it (``aclose()``) or cancelling the task that
    awaits it cancels the completion and frees its scratch slots; a refused completion raises
    the refusal from the first ``__anext__``."""

    def __init__(
        self,
        ticket: int,
        chunks: asyncio.Queue[CompletionChunk | BaseException | None],
        cancel: Callable[[int], None],
    ) -> None:
        self._ticket = ticket
        self._chunks = chunks  # None: the end; an exception: refused
        self._cancel = cancel
        self._ended = False
        self._held: list[CompletionChunk | BaseException | None] = []  # taken from the queue, not handed over yet

    def __aiter__(self) -> CompletionStream:
        return self

    async def __anext__(self) -> CompletionChunk:
        if self._ended:
            raise StopAsyncIteration
        try:
            chunk = self._held.pop() if self._held else await self._chunks.get()
        except asyncio.CancelledError:
            self._ended = True
            self._cancel(self._ticket)
            raise
        if not isinstance(chunk, CompletionChunk):  # the end, or a refusal
            self._ended = True
            raise chunk or StopAsyncIteration()
        q = self._chunks
        while not chunk.done and not q.empty():  # merge what of this alternative already waits
            nxt = q.get_nowait()
            if not isinstance(nxt, CompletionChunk) or nxt.alternative != chunk.alternative:
                self._held.append(nxt)
                break
            chunk = CompletionChunk(chunk.alternative, chunk.text + nxt.text, nxt.done, nxt.finish_reason)
        return chunk

    async def aclose(self) -> None:
        if not self._ended:
            self._ended = True
            self._cancel(self._ticket)
