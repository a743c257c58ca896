"""The in-process ``EngineClient``: the API layer's view of an ``Engine`` on the same event loop.

It only adapts calling conventions (the owner first, every result an awaitable, errors raised
at call time delivered through the awaitable instead); ordering, exactly-once and admission
are the engine's, and every call is answered through the future of its own ticket (a refusal
too): a caller that is cancelled drops its answer, never engine state (an append submitted is
applied exactly once).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from ..handoff.record import HandoffRecord
from .admission import Limits
from .client import DEFAULT_OPTIONS, CompletionStream, StatsListener
from .engine import Engine
from .types import (
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

T = TypeVar("T")


class InProcessEngineClient:
    """Implements ``cellserve.engine.client.EngineClient`` over an ``Engine``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # ---- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        await self.engine.start()

    async def drain(self) -> None:
        await self.engine.drain()

    async def stop(self) -> None:
        await self.engine.stop()

    # ---- queries ----------------------------------------------------------------------------
    def models(self, owner: str) -> Awaitable[list[ModelInfo]]:
        return _now(self.engine.models)

    def get_session(self, owner: str, session_id: str) -> Awaitable[SessionInfo]:
        return self.engine.get_session_queued(session_id, owner)

    def health(self, owner: str) -> Awaitable[EngineHealth]:
        return self.engine.health(owner)

    def stats(self, owner: str) -> Awaitable[EngineStats]:
        return self.engine.stats()

    def add_stats_listener(self, listener: StatsListener) -> Callable[[], None]:
        return self.engine.add_stats_listener(listener)

    # ---- admission ----------------------------------------------------------------------------
    def set_limits(self, owner: str, limits: Limits) -> None:
        self.engine.set_limits(owner, limits)

    def open_stream(self, owner: str) -> Awaitable[int]:
        return self.engine.open_stream(owner)

    def close_stream(self, owner: str, lease: int) -> None:
        self.engine.close_stream(lease)

    def bind_sequence(self, owner: str, model: str, seq: str, session_id: str) -> Awaitable[str | None]:
        return self.engine.bind_sequence(owner, model, seq, session_id)

    def find_sequence(self, owner: str, model: str, seq: str) -> Awaitable[SessionInfo]:
        return self.engine.find_sequence(owner, model, seq)

    def forget_sequence(self, owner: str, model: str, seq: str, session_id: str) -> None:
        self.engine.forget_sequence(owner, model, seq, session_id)

    # ---- session operations -----------------------------------------------------------------
    def open_session(
        self, owner: str, model: str | None = None, memory: bool = True, sequence: str = ""
    ) -> Awaitable[SessionInfo]:
        return self.engine.open_session(model, owner, memory)

    def append(
        self, owner: str, session_id: str, offset: int, text: str, options: AppendOptions = DEFAULT_OPTIONS
    ) -> Awaitable[Prediction]:
        return self.engine.submit_append(session_id, offset, text, options, owner)

    def rewind(self, owner: str, session_id: str, chars: int) -> Awaitable[SessionInfo]:
        return self.engine.submit_rewind(session_id, chars, owner)

    def reset(self, owner: str, session_id: str) -> Awaitable[SessionInfo]:
        return self.engine.submit_reset(session_id, owner)

    def snapshot(self, owner: str, session_id: str) -> Awaitable[bytes]:
        return self.engine.submit_snapshot(session_id, owner)

    def resume(
        self, owner: str, blob: bytes, replay: str = "", options: AppendOptions = DEFAULT_OPTIONS
    ) -> Awaitable[tuple[SessionInfo, Prediction | None]]:
        return self.engine.resume(blob, replay, options, owner)

    def complete(self, owner: str, session_id: str, request: CompletionRequest) -> CompletionStream:
        return self.engine.complete(session_id, request, owner)

    def suggest(self, owner: str, session_id: str, request: SuggestRequest) -> Awaitable[list[Suggestion]]:
        return self.engine.submit_suggest(session_id, request, owner)

    def close_session(self, owner: str, session_id: str) -> Awaitable[None]:
        return self.engine.submit_close(session_id, owner)

    # ---- handoff (cellserve.handoff.coordinator.HandoffEngine) -----------------------------
    def export_sessions(self, idle_s: float | None, move: bool = False) -> Awaitable[list[HandoffRecord]]:
        return self.engine.export_sessions(idle_s, move)

    def adopt(self, owner: str, record: HandoffRecord) -> Awaitable[SessionInfo]:
        return self.engine.adopt(owner, record)


class FailedStream(AsyncIterator[CompletionChunk]):
    """A completion refused at submission: its first ``__anext__`` raises the error."""

    def __init__(self, error: BaseException) -> None:
        self._error: BaseException | None = error

    def __aiter__(self) -> FailedStream:
        return self

    async def __anext__(self) -> CompletionChunk:
        if self._error is None:
            raise StopAsyncIteration
        error, self._error = self._error, None
        raise error

    async def aclose(self) -> None:
        self._error = None


def _now(fn: Callable[[], T]) -> Awaitable[T]:
    """A result (or error) known at call time, as an awaitable."""
    fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
    try:
        fut.set_result(fn())
    except Exception as e:  # noqa: BLE001 (delivered through the awaitable)
        fut.set_exception(e)
    return fut


def _failed(e: BaseException) -> Awaitable[Any]:
    fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    fut.set_exception(e)
    return fut
