"""A fake ``EngineClient`` for API tests: it records every call in order and answers each
only when the test says so, so stream ordering is tested in-process, deterministically, with
no server process and no sleeps."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any

from cellserve.engine.admission import Limits
from cellserve.engine.client import DEFAULT_OPTIONS
from cellserve.engine.types import (
    AppendOptions,
    CompletionChunk,
    CompletionRequest,
    EngineHealth,
    EngineStats,
    ModelInfo,
    Prediction,
    SessionInfo,
    Suggestion,
    SuggestRequest,
)
from cellserve.errors import NotFound

MODEL = ModelInfo("fake", "lstm", 1, 4, ("", "a", "b"), "0" * 64, None, True)


@dataclass
class Call:
    op: str
    owner: str
    args: tuple[Any, ...]
    future: asyncio.Future[Any] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class FakeChunks:
    """A completion whose chunks the test pushes; ``closed`` once the stream closed it."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[CompletionChunk | BaseException | None] = asyncio.Queue()
        self.closed = False

    def __aiter__(self) -> AsyncIterator[CompletionChunk]:
        return self

    async def __anext__(self) -> CompletionChunk:
        item = await self.queue.get()
        if item is None:
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            raise item
        return item

    async def aclose(self) -> None:
        self.closed = True


class FakeEngine:
    """Implements ``EngineClient``; every session operation becomes a ``Call`` in ``calls``."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.submitted = asyncio.Event()  # set at every call
        self.chunks: list[FakeChunks] = []
        self.limits: dict[str, Limits] = {}
        self.streams_opened = 0
        self.open_streams: set[int] = set()  # stream leases held now
        self.sequences: dict[tuple[str, str, str], str] = {}

    def _call(self, op: str, owner: str, *args: Any) -> asyncio.Future[Any]:
        call = Call(op, owner, args)
        self.calls.append(call)
        self.submitted.set()
        return call.future

    async def wait_calls(self, n: int) -> list[Call]:
        """Returns once at least ``n`` operations were submitted."""
        while len(self.calls) < n:
            self.submitted.clear()
            await self.submitted.wait()
        return self.calls

    # ---- EngineClient --------------------------------------------------------------------
    async def start(self) -> None:
        pass

    async def drain(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def models(self, owner: str) -> Awaitable[list[ModelInfo]]:
        return _now([MODEL])

    def get_session(self, owner: str, session_id: str) -> Awaitable[SessionInfo]:
        return _now(SessionInfo(session_id, MODEL.name, 0, 0.0, 0.0))

    def health(self, owner: str) -> Awaitable[EngineHealth]:
        return _now(EngineHealth(True, 0, 0, 0, 0))

    def stats(self, owner: str) -> Awaitable[EngineStats]:
        return _now(EngineStats())

    def set_limits(self, owner: str, limits: Limits) -> None:
        self.limits[owner] = limits

    def open_stream(self, owner: str) -> Awaitable[int]:
        self.streams_opened += 1
        self.open_streams.add(self.streams_opened)
        return _now(self.streams_opened)

    def close_stream(self, owner: str, lease: int) -> None:
        self.open_streams.discard(lease)

    def bind_sequence(self, owner: str, model: str, seq: str, session_id: str) -> Awaitable[str | None]:
        previous = self.sequences.get((owner, model, seq))
        self.sequences[(owner, model, seq)] = session_id
        return _now(previous)

    def find_sequence(self, owner: str, model: str, seq: str) -> Awaitable[SessionInfo]:
        sid = self.sequences.get((owner, model, seq))
        if sid is None:
            return _failed(NotFound("unknown session"))
        return _now(SessionInfo(sid, MODEL.name, 0, 0.0, 0.0))

    def forget_sequence(self, owner: str, model: str, seq: str, session_id: str) -> None:
        if self.sequences.get((owner, model, seq)) == session_id:
            del self.sequences[(owner, model, seq)]

    def open_session(
        self, owner: str, model: str | None = None, memory: bool = True, sequence: str = ""
    ) -> Awaitable[SessionInfo]:
        return _now(SessionInfo("f" * 32, MODEL.name, 0, 0.0, 0.0))

    def append(
        self, owner: str, session_id: str, offset: int, text: str, options: AppendOptions = DEFAULT_OPTIONS
    ) -> Awaitable[Prediction]:
        return self._call("append", owner, session_id, offset, text)

    def rewind(self, owner: str, session_id: str, chars: int) -> Awaitable[SessionInfo]:
        return self._call("rewind", owner, session_id, chars)

    def reset(self, owner: str, session_id: str) -> Awaitable[SessionInfo]:
        return self._call("reset", owner, session_id)

    def snapshot(self, owner: str, session_id: str) -> Awaitable[bytes]:
        return self._call("snapshot", owner, session_id)

    def resume(
        self, owner: str, blob: bytes, replay: str = "", options: AppendOptions = DEFAULT_OPTIONS
    ) -> Awaitable[tuple[SessionInfo, Prediction | None]]:
        return self._call("resume", owner, blob, replay)

    def complete(self, owner: str, session_id: str, request: CompletionRequest) -> FakeChunks:
        self._call("complete", owner, session_id)
        chunks = FakeChunks()
        self.chunks.append(chunks)
        return chunks

    def suggest(self, owner: str, session_id: str, request: SuggestRequest) -> Awaitable[list[Suggestion]]:
        return self._call("suggest", owner, session_id, request)

    def close_session(self, owner: str, session_id: str) -> Awaitable[None]:
        return self._call("close", owner, session_id)


def _failed(error: BaseException) -> asyncio.Future[Any]:
    fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    fut.set_exception(error)
    return fut


def _now(value: Any) -> asyncio.Future[Any]:
    fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    fut.set_result(value)
    return fut
