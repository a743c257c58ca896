"""Triton sequences as cellserve sessions.

A sequence is named by (owner, model, sequence_id); each live one is a cellserve session owned
by the caller's owner, so another owner's ids never meet it. The id -> session table is the
engine core's (``engine/sequence_ids.py``), so a sequence goes on from any connection to any
frontend. The rules:

- ``sequence_start`` opens a session. START on an id that is live restarts it for its owner:
  the live session is closed and a new one opened at position 0 (a client that was killed
  mid-sequence starts its ids again without waiting for the TTL). Another owner's ids are
  never touched: its START opens a sequence of its own.
- A request without START appends to the live session; for an unknown, ended or expired id it
  is refused with Triton's wording ("must specify the START flag"), INVALID_ARGUMENT.
- ``sequence_end`` forgets the id when the request is accepted, and closes the session once
  the request has been answered, so the id can START again at once.
- Idle sessions expire after ``session_idle_ttl_s`` like native ones; their ids then count as
  unknown.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from dataclasses import dataclass

from ...engine.client import EngineClient
from ...errors import InvalidInput, NotFound
from .params import SequenceKey

Key = tuple[str, str, SequenceKey]  # (owner, model, sequence id)


@dataclass(eq=False)
class Sequence:
    key: Key
    name: str  # the id as a client reads it, for messages
    session_id: str
    next_offset: int = 0  # where a request without OFFSET appends
    last_used: float = 0.0  # monotonic seconds

    def submitted(self, offset: int, text: str) -> None:
        """An append was accepted at ``offset``: a request without OFFSET continues after it."""
        if offset == self.next_offset:
            self.next_offset += len(text)
        self.last_used = time.monotonic()


def not_live(model: str, name: str) -> InvalidInput:
    return InvalidInput(
        f"inference request for sequence {name} to model '{model}' must specify the START flag on the first "
        "request of the sequence (the sequence is unknown, has ended, or was idle longer than the session TTL)"
    )


def id_of(seq: SequenceKey) -> str:
    """The sequence id as the core's table keys it: integer and string ids never meet."""
    return f"{seq[0]}:{seq[1]}"


class SequenceTable:
    def __init__(self, engine: EngineClient) -> None:
        self._engine = engine

    async def start(self, owner: str, model: str, seq: SequenceKey, name: str) -> Sequence:
        key = (owner, model, seq)
        try:  # a restart: the live session goes first, so a server at its session cap restarts too
            live = await self._engine.find_sequence(owner, model, id_of(seq))
        except NotFound:
            pass
        else:
            await self.close(owner, Sequence(key, name, live.session_id))
        info = await self._engine.open_session(owner, model, sequence=id_of(seq))
        entry = Sequence(key, name, info.session_id, info.position, time.monotonic())
        try:
            previous = await self._engine.bind_sequence(owner, model, id_of(seq), info.session_id)
        except BaseException:
            await asyncio.shield(self.close(owner, entry))
            raise
        if previous is not None:  # a START of the same id won the race meanwhile: ours replaces it
            await self.close(owner, Sequence(key, name, previous))
        return entry

    async def get(self, owner: str, model: str, seq: SequenceKey, name: str) -> Sequence:
        try:
            info = await self._engine.find_sequence(owner, model, id_of(seq))
        except NotFound:
            raise not_live(model, name) from None
        return Sequence((owner, model, seq), name, info.session_id, info.position, time.monotonic())

    def forget(self, entry: Sequence) -> None:
        owner, model, seq = entry.key
        self._engine.forget_sequence(owner, model, id_of(seq), entry.session_id)

    async def abandon(self, owner: str, entry: Sequence) -> None:
        """A START whose first request failed: the session goes, so the START can be retried."""
        self.forget(entry)
        await self.close(owner, entry)

    def close(self, owner: str, entry: Sequence) -> Awaitable[None]:
        """Submits the close now: it applies after the operations submitted before it."""
        closed = self._engine.close_session(owner, entry.session_id)

        async def settled() -> None:
            try:
                await closed
            except NotFound:
                pass  # expired meanwhile: closed already

        return asyncio.ensure_future(settled())
