"""Handoff in the API process: a miss takes the session from the store; a drain (and the
optional background sync) writes sessions to it.

``HandoffEngineClient`` wraps the ``EngineClient`` the servicers use. A session operation that
fails with ``NotFound`` for a server-issued id asks the ``Handoff`` to recover the session:
take its record from the store (get and delete in one command: at most one replica gets it),
open it (sealed under the shared snapshot key, bound to its store key) and ``adopt`` it into the
engine under the same id with its exactly-once bookkeeping; then the operation is submitted
again, once. Concurrent misses of one id share one recovery, and their operations are submitted
again in the order they were first submitted. Nothing here is on the path of a session this
replica holds: the store is touched only after a miss.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, TypeVar

from ..engine.types import AppendOptions, CompletionChunk, CompletionRequest, SuggestRequest
from ..errors import CapacityExceeded, CellserveError, NotFound, Unavailable
from .record import HandoffRecord, open_record, seal_record
from .store import SessionStore, StoreUnavailable, is_session_id

log = logging.getLogger("cellserve.handoff")
RECENT_IDS = 4096
T = TypeVar("T")


class HandoffEngine(Protocol):
    """What handoff needs of an engine beyond the ``EngineClient`` operations."""

    def export_sessions(self, idle_s: float | None, move: bool = False) -> Awaitable[list[HandoffRecord]]:
        """Every live session (``idle_s`` set: only those untouched for that long and changed
        since their last export), each as a record: sealed snapshot, id, tenant, exactly-once
        bookkeeping. ``move``: they leave the engine (later calls: UNAVAILABLE)."""
        ...

    def adopt(self, owner: str, record: HandoffRecord) -> Awaitable[object]:
        """The record's session, under its own id, owned by ``owner``; its snapshot is checked
        like any resume (weights, tenant, expiry)."""
        ...


class Handoff:
    def __init__(self, store: SessionStore, key: bytes, engine: HandoffEngine) -> None:
        self.store = store
        self._key = key
        self._engine = engine
        self._recovering: dict[tuple[str, str], asyncio.Future[bool]] = {}
        # ids recovered lately: an operation whose NotFound arrives after another operation of
        # the same session already recovered it is submitted again, not failed
        self._recent: OrderedDict[tuple[str, str], None] = OrderedDict()
        self.recovered = 0
        self.rejected = 0  # records that did not open or were refused by the engine
        self.drain_written = 0
        self.drain_left = 0
        self.synced = 0

    async def recover(self, owner: str, session_id: str) -> bool:
        """True when the session is now held here (taken from the store, or by a concurrent or
        recent recovery of the same id). A session this replica cannot take now (it is draining,
        or the tenant or the server is at a cap) stays in the store and the refusal is raised
        (UNAVAILABLE, RESOURCE_EXHAUSTED with its retry hint) instead of NOT_FOUND."""
        if not is_session_id(session_id):
            return False
        if (owner, session_id) in self._recent:
            return True
        pending = self._recovering.get((owner, session_id))
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._recovering[(owner, session_id)] = fut
        try:
            ok = await self._take(owner, session_id)
        except BaseException:
            ok = False
            raise
        finally:
            del self._recovering[(owner, session_id)]
            fut.set_result(ok)
        return ok

    async def _take(self, owner: str, session_id: str) -> bool:
        key = self.store.key(owner, session_id)
        try:
            sealed = await self.store.take(key)
        except StoreUnavailable:
            return False
        if sealed is None:
            return False
        record = open_record(sealed, self._key, key)
        if record is None or record.session_id != session_id or record.tenant != owner:
            self.rejected += 1
            log.warning("session store entry did not open under this deployment's key; dropped")
            return False
        try:
            await self._engine.adopt(owner, record)
        except (Unavailable, CapacityExceeded):  # draining, or at a cap: leave the session in the store
            await self.store.put_many([(key, sealed, record.expires_at)], asyncio.get_running_loop().time() + 5)
            raise
        except CellserveError as exc:
            self.rejected += 1
            log.warning("could not adopt a handed-off session: %s", exc)
            return False
        self.recovered += 1
        self._recent[(owner, session_id)] = None
        if len(self._recent) > RECENT_IDS:
            self._recent.popitem(last=False)
        return True

    async def recover_sequence(self, owner: str, model: str, sequence: str) -> bool:
        """A KServe sequence id of a session that moved here: its pointer, then the session."""
        alias = self.store.sequence_key(owner, model, sequence)
        try:
            sealed = await self.store.take(alias)
        except StoreUnavailable:
            return False
        pointer = None if sealed is None else open_record(sealed, self._key, alias)
        if pointer is None or pointer.tenant != owner:
            return False
        return await self.recover(owner, pointer.session_id)

    async def write(self, idle_s: float | None, deadline: float, move: bool = False) -> tuple[int, int]:
        """Exports sessions and writes them until ``deadline`` (loop time): (written, left)."""
        records = await self._engine.export_sessions(idle_s, move)
        items = []
        for r in records:
            key = self.store.key(r.tenant, r.session_id)
            items.append((key, seal_record(r, self._key, key), r.expires_at))
            for model, seq in r.sequences:  # a KServe sequence id finds its session after the move
                alias = self.store.sequence_key(r.tenant, model, seq)
                pointer = HandoffRecord(r.session_id, r.tenant, b"", r.expires_at)
                items.append((alias, seal_record(pointer, self._key, alias), r.expires_at))
        written = await self.store.put_many(items, deadline)
        return written, len(items) - written

    async def drain(self, deadline: float) -> None:
        """Writes every live session before the replica stops; what did not fit is logged."""
        t0 = time.perf_counter()
        try:
            self.drain_written, self.drain_left = await self.write(None, deadline, move=True)
        except CellserveError as exc:
            log.error("handoff on drain failed: %s", exc)
            return
        log.info(
            "handoff: wrote %d sessions to the store in %.2f s%s",
            self.drain_written,
            time.perf_counter() - t0,
            f"; {self.drain_left} did not fit in the drain grace and are lost" if self.drain_left else "",
        )

    async def sync_forever(self, idle_s: float) -> None:
        """Background sync: sessions idle ``idle_s`` are written, so a crash loses at most that."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(max(0.5, idle_s / 2))
            try:
                written, left = await self.write(idle_s, loop.time() + max(1.0, idle_s))
            except CellserveError as exc:
                log.warning("handoff sync failed: %s", exc)
                continue
            self.synced += written
            if written or left:
                log.info(
                    "handoff sync: wrote %d idle sessions to the store%s", written, f", {left} not" if left else ""
                )


class HandoffEngineClient:
    """An ``EngineClient`` that recovers missed sessions through ``handoff`` (see module doc).
    Every attribute it does not define is the wrapped client's."""

    def __init__(self, inner: Any, handoff: Handoff) -> None:
        self._inner = inner
        self._handoff = handoff

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def _retrying(self, owner: str, session_id: str, submit: Callable[[], Awaitable[T]]) -> Awaitable[T]:
        return _submit_again_after(lambda: self._handoff.recover(owner, session_id), submit)

    def get_session(self, owner: str, session_id: str) -> Awaitable[Any]:
        return self._retrying(owner, session_id, lambda: self._inner.get_session(owner, session_id))

    def append(
        self, owner: str, session_id: str, offset: int, text: str, options: AppendOptions | None = None
    ) -> Awaitable[Any]:
        args = (owner, session_id, offset, text) if options is None else (owner, session_id, offset, text, options)
        return self._retrying(owner, session_id, lambda: self._inner.append(*args))

    def rewind(self, owner: str, session_id: str, chars: int) -> Awaitable[Any]:
        return self._retrying(owner, session_id, lambda: self._inner.rewind(owner, session_id, chars))

    def reset(self, owner: str, session_id: str) -> Awaitable[Any]:
        return self._retrying(owner, session_id, lambda: self._inner.reset(owner, session_id))

    def snapshot(self, owner: str, session_id: str) -> Awaitable[bytes]:
        return self._retrying(owner, session_id, lambda: self._inner.snapshot(owner, session_id))

    def suggest(self, owner: str, session_id: str, request: SuggestRequest) -> Awaitable[Any]:
        return self._retrying(owner, session_id, lambda: self._inner.suggest(owner, session_id, request))

    def close_session(self, owner: str, session_id: str) -> Awaitable[None]:
        return self._retrying(owner, session_id, lambda: self._inner.close_session(owner, session_id))

    def find_sequence(self, owner: str, model: str, seq: str) -> Awaitable[Any]:
        return _submit_again_after(
            lambda: self._handoff.recover_sequence(owner, model, seq),
            lambda: self._inner.find_sequence(owner, model, seq),
        )

    def complete(self, owner: str, session_id: str, request: CompletionRequest) -> _RecoveringCompletion:
        return _RecoveringCompletion(self, owner, session_id, request)


def _submit_again_after(recover: Callable[[], Awaitable[bool]], submit: Callable[[], Awaitable[T]]) -> Awaitable[T]:
    """``submit()`` now (like every EngineClient operation); on NotFound, ``recover()`` and, if
    that brought the session here, ``submit()`` once more."""
    first = submit()

    async def outcome() -> T:
        try:
            return await first
        except NotFound:
            if not await recover():
                raise
        return await submit()

    return outcome()


class _RecoveringCompletion:
    """A completion stream whose first ``__anext__`` recovers a missed session once."""

    def __init__(self, client: HandoffEngineClient, owner: str, session_id: str, request: CompletionRequest) -> None:
        self._client = client
        self._args = (owner, session_id, request)
        self._stream: Any = client._inner.complete(owner, session_id, request)
        self._started = False

    def __aiter__(self) -> AsyncIterator[CompletionChunk]:
        return self

    async def __anext__(self) -> CompletionChunk:
        if self._started:
            chunk: CompletionChunk = await self._stream.__anext__()
            return chunk
        self._started = True
        try:
            first: CompletionChunk = await self._stream.__anext__()
            return first
        except NotFound:
            owner, session_id, request = self._args
            if not await self._client._handoff.recover(owner, session_id):
                raise
            await self._stream.aclose()
            self._stream = self._client._inner.complete(owner, session_id, request)
            again: CompletionChunk = await self._stream.__anext__()
            return again

    async def aclose(self) -> None:
        await self._stream.aclose()
