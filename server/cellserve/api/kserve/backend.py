"""The KServe front's only way to the engine.

Every engine call of ``cellserve.api.kserve`` goes through ``Backend``, whose methods mirror
the ``EngineClient`` protocol of the engine-core rewrite: the caller's owner comes first, and
each session operation is a plain method that submits the operation when called and returns an
awaitable of its result (operations on one session apply in call order; cancelling the awaiter
never withdraws a submitted append). Today it wraps ``Engine``; when the engine speaks
``EngineClient`` this module becomes a pass-through.

Where today's ``Engine`` differs from the protocol, the difference is absorbed here:
``close_session`` closes at once rather than after earlier operations, so callers that close
after an append await the append first (``sequences`` does).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TYPE_CHECKING, TypeVar

from ...engine.types import AppendOptions, CompletionRequest, ModelInfo, Prediction, SessionInfo

if TYPE_CHECKING:
    from ...engine.completions import CompletionStream
    from ...engine.engine import Engine

T = TypeVar("T")
_DEFAULT_OPTIONS = AppendOptions()


def _ready(value: T) -> Awaitable[T]:
    fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
    fut.set_result(value)
    return fut


class Backend:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def models(self, owner: str) -> Awaitable[list[ModelInfo]]:
        return _ready(self._engine.models())

    def get_session(self, owner: str, session_id: str) -> Awaitable[SessionInfo]:
        return _ready(self._engine.get_session(session_id, owner=owner))

    def open_session(self, owner: str, model: str | None = None) -> Awaitable[SessionInfo]:
        return _ready(self._engine.open_session(model, owner=owner))

    def append(
        self, owner: str, session_id: str, offset: int, text: str, options: AppendOptions = _DEFAULT_OPTIONS
    ) -> Awaitable[Prediction]:
        # The engine's future is shared state: shielded, so a cancelled awaiter leaves it alone.
        return asyncio.shield(self._engine.submit_append(session_id, offset, text, options, owner=owner))

    def complete(self, owner: str, session_id: str, request: CompletionRequest) -> CompletionStream:
        """Errors of the request surface at call time or from the first chunk."""
        return self._engine.complete(session_id, request, owner=owner)

    def close_session(self, owner: str, session_id: str) -> Awaitable[None]:
        return self._engine.close_session(session_id, owner=owner)
