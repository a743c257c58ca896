"""Admission of a new stream, the same for every service on the server (cellserve.v1's Session
and KServe's ModelStreamInfer): none while draining; otherwise a stream lease from the engine
core, which counts the tenant's stream quota and ``max_concurrent_streams`` over every frontend
(``engine/admission.py``), held for the stream's life."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, TypeVar

from ..engine.client import EngineClient
from ..errors import Unavailable

T = TypeVar("T")


@contextlib.asynccontextmanager
async def stream_slot(engine: EngineClient, owner: str, draining: bool) -> AsyncIterator[None]:
    """Holds a stream lease while the block runs (CapacityExceeded: none was free)."""
    if draining:
        raise Unavailable("the server is shutting down; connect to another replica")
    asked = asyncio.ensure_future(engine.open_stream(owner))
    try:
        lease = await asyncio.shield(asked)
    except asyncio.CancelledError:  # the caller went away while the core answered: give it back
        asked.add_done_callback(lambda f: _give_back(engine, owner, f))
        raise
    try:
        yield
    finally:
        engine.close_stream(owner, lease)


async def admitted(
    engine: EngineClient, owner: str, draining: bool, live: set[Any], stream: object, responses: AsyncIterator[T]
) -> AsyncIterator[T]:
    """``responses`` of ``stream``, which is in ``live`` (the server's open streams, stopped on
    drain) while it holds its lease."""
    async with stream_slot(engine, owner, draining):
        live.add(stream)
        try:
            async for response in responses:
                yield response
        finally:
            live.discard(stream)


def _give_back(engine: EngineClient, owner: str, asked: asyncio.Future[int]) -> None:
    if not asked.cancelled() and asked.exception() is None:
        engine.close_stream(owner, asked.result())
