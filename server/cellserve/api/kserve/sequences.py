"""Triton sequences as cellserve sessions.

A sequence is named by (owner, model, sequence_id); each live one is a cellserve session owned
by the caller's owner, so another owner's ids never meet it. The rules:

- ``sequence_start`` opens a session; START on a live id is refused (FAILED_PRECONDITION).
  Triton would silently end the live sequence and start again; cellserve refuses instead, so a
  retried or duplicated START cannot wipe a user's state.
- A request without START appends to the live session; for an unknown, ended or expired id it
  is refused with Triton's wording ("must specify the START flag"), INVALID_ARGUMENT.
- ``sequence_end`` forgets the id when the request is accepted, and closes the session once
  the request has been answered, so the id can START again at once.
- Idle sessions expire after ``session_idle_ttl_s`` like native ones; their ids then count as
  unknown. Entries of expired sessions are pruned as new sequences start.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from dataclasses import dataclass

from ...engine.client import EngineClient
from ...errors import InvalidInput, NotFound, PreconditionFailed
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


class SequenceTable:
    def __init__(self, engine: EngineClient, idle_ttl_s: float, max_entries: int) -> None:
        self._engine = engine
        self._ttl_s = idle_ttl_s
        self._max_entries = max_entries
        self._live: dict[Key, Sequence] = {}
        self._opening: set[Key] = set()

    def __len__(self) -> int:
        return len(self._live)

    async def start(self, owner: str, model: str, seq: SequenceKey, name: str) -> Sequence:
        key = (owner, model, seq)
        if key in self._opening or (key in self._live and await self._alive(owner, self._live[key])):
            raise PreconditionFailed(
                f"sequence {name} of model '{model}' is already live; cellserve does not restart a live sequence: "
                "end it first (sequence_end) or use another sequence_id"
            )
        self._live.pop(key, None)
        if len(self._live) >= self._max_entries:
            self._prune()
        self._opening.add(key)
        try:
            info = await self._engine.open_session(owner, model)
        finally:
            self._opening.discard(key)
        entry = self._live[key] = Sequence(key, name, info.session_id, info.position, time.monotonic())
        return entry

    def get(self, owner: str, model: str, seq: SequenceKey, name: str) -> Sequence:
        entry = self._live.get((owner, model, seq))
        if entry is None:
            raise not_live(model, name)
        return entry

    def forget(self, entry: Sequence) -> None:
        if self._live.get(entry.key) is entry:
            del self._live[entry.key]

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

    async def _alive(self, owner: str, entry: Sequence) -> bool:
        try:
            await self._engine.get_session(owner, entry.session_id)
        except NotFound:
            return False
        return True

    def _prune(self) -> None:
        """Drops entries idle beyond the TTL: the engine has expired their sessions."""
        cutoff = time.monotonic() - self._ttl_s
        for key in [k for k, e in self._live.items() if e.last_used < cutoff]:
            del self._live[key]
