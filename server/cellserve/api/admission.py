"""Admission of a new stream, the same for every service on the server (cellserve.v1's Session
and KServe's ModelStreamInfer): none while draining; otherwise a stream lease from the engine
core, which counts the tenant's stream quota and ``max_concurrent_streams`` over every frontend
(``engine/admission.py``), held for the stream's life. The call wrapper (``api.calls``) takes
the lease before the stream's handler runs and gives it back when the call ends."""

from __future__ import annotations

import asyncio

from ..engine.client import EngineClient
from ..errors import Unavailable

DRAINING = "the server is shutting down; connect to another replica"


class StreamAdmission:
    def __init__(self, engine: EngineClient) -> None:
        self._engine = engine
        self.draining = False

    def begin_drain(self) -> None:
        """No stream is admitted from now on (UNAVAILABLE)."""
        self.draining = True

    async def lease(self, owner: str) -> int:
        """A stream lease for ``owner`` (``CapacityExceeded``: none was free; ``Unavailable``:
        draining). Give it back with ``release``."""
        if self.draining:
            raise Unavailable(DRAINING)
        asked = asyncio.ensure_future(self._engine.open_stream(owner))
        try:
            return await asyncio.shield(asked)
        except asyncio.CancelledError:  # the caller went away while the core answered: give it back
            asked.add_done_callback(lambda f: self._give_back(owner, f))
            raise

    def release(self, owner: str, lease: int) -> None:
        self._engine.close_stream(owner, lease)

    def _give_back(self, owner: str, asked: asyncio.Future[int]) -> None:
        if not asked.cancelled() and asked.exception() is None:
            self._engine.close_stream(owner, asked.result())
