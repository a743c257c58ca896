"""Requests of one session as they wait for, and travel to, a server.

A session turns every call into an ``Op`` and puts it in its ``OpQueue``; the session's
connection takes ops from the queue, sends them and settles them with the answers. When a
connection is lost, the ops it had sent but not settled go back to the front of the queue, so
after a failover they are sent again, in the same order and at the same offsets, and the
callers awaiting them never see the failure.
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass, field
from typing import Any, Literal

from ._types import AppendOptions, CompletionChunk, CompletionOptions, SuggestOptions

OpKind = Literal["append", "complete", "suggest", "rewind", "reset", "snapshot", "close"]


@dataclass(eq=False)
class Op:
    kind: OpKind
    future: asyncio.Future[Any]
    offset: int = 0
    text: str = ""
    append: AppendOptions = field(default_factory=AppendOptions)
    completion: CompletionOptions = field(default_factory=CompletionOptions)
    suggest: SuggestOptions = field(default_factory=SuggestOptions)
    chars: int = 0
    internal: bool = False  # a snapshot the session takes for its own journal; nobody awaits it
    request_id: int = 0  # on the stream it was last sent on
    # Completion progress. ``delivered`` counts the characters of each alternative handed to the
    # caller; a completion sent again after a failover (same seed, same state: same text) skips
    # them, so the caller sees every character once.
    chunks: asyncio.Queue[CompletionChunk | BaseException | None] | None = None
    delivered: dict[int, int] = field(default_factory=dict)
    finished: set[int] = field(default_factory=set)
    _attempt: dict[int, int] = field(default_factory=dict)

    def restart(self) -> None:
        """Called before the op is sent again on a new connection."""
        self._attempt.clear()

    def deliver(self, chunk: CompletionChunk) -> None:
        """Hands the part of ``chunk`` the caller has not seen yet to the caller."""
        assert self.chunks is not None
        alt = chunk.alternative
        if alt in self.finished:
            return
        seen = self._attempt.get(alt, 0)
        self._attempt[alt] = seen + len(chunk.text)
        skip = max(0, self.delivered.get(alt, 0) - seen)
        part = chunk.text[skip:]
        self.delivered[alt] = self.delivered.get(alt, 0) + len(part)
        if chunk.done:
            self.finished.add(alt)
        if part or chunk.done:
            self.chunks.put_nowait(CompletionChunk(alt, part, chunk.done, chunk.finish_reason))

    @property
    def alternatives(self) -> int:
        return self.completion.n if self.completion.n is not None else 1

    def settle(self, result: Any = None) -> None:
        if self.chunks is not None:
            self.chunks.put_nowait(None)
        if not self.future.done():
            self.future.set_result(result)

    def fail(self, exc: BaseException) -> None:
        if self.chunks is not None:
            self.chunks.put_nowait(exc)
        if not self.future.done():
            self.future.set_exception(exc)
            # Internal ops and abandoned waits (timeouts) would warn "exception never retrieved".
            self.future.exception()


class OpQueue:
    """FIFO of ops; ``requeue`` puts unsettled ops back at the front. ``get`` returns None once
    the queue is closed and empty."""

    def __init__(self) -> None:
        self._ops: collections.deque[Op] = collections.deque()
        self._changed = asyncio.Event()
        self.closed = False

    def put(self, op: Op) -> None:
        self._ops.append(op)
        self._changed.set()

    def requeue(self, ops: list[Op]) -> None:
        self._ops.extendleft(reversed(ops))
        self._changed.set()

    def close(self) -> None:
        self.closed = True
        self._changed.set()

    def drain(self) -> list[Op]:
        ops = list(self._ops)
        self._ops.clear()
        return ops

    def __len__(self) -> int:
        return len(self._ops)

    async def get(self) -> Op | None:
        while not self._ops:
            if self.closed:
                return None
            self._changed.clear()
            await self._changed.wait()
        return self._ops.popleft()
