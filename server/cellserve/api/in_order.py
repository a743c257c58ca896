"""The requests of one stream between its reader and its writer, in request order, bounded.

Shared by the native Session stream (``stream.py``) and KServe's ModelStreamInfer
(``kserve/stream.py``). Nothing per request but a deque append and pop: the reader waits for
room only when ``window`` requests are unanswered, the writer waits for a request only when
none is, each through a future made at that moment (no queue, semaphore or done-callback per
request).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class InOrder(Generic[T]):
    def __init__(self, window: int) -> None:
        self._items: deque[T] = deque()
        self._window = window
        self._closed = False
        self._writer_waits: asyncio.Future[None] | None = None
        self._reader_waits: asyncio.Future[None] | None = None

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[T]:
        return iter(self._items)

    def full(self) -> bool:
        """``window`` requests are unanswered: ``room`` would wait (checked first, so that the
        reader makes no coroutine per request when there is room, as there nearly always is)."""
        return len(self._items) >= self._window

    async def room(self) -> None:
        """Reader: returns once fewer than ``window`` requests are unanswered."""
        while len(self._items) >= self._window:
            self._reader_waits = asyncio.get_running_loop().create_future()
            await self._reader_waits

    def put(self, item: T) -> None:
        """Reader: the next request."""
        self._items.append(item)
        _wake(self._writer_waits)

    def close(self) -> None:
        """Reader: no more requests."""
        self._closed = True
        _wake(self._writer_waits)

    async def head(self) -> T | None:
        """Writer: the oldest unanswered request (it stays until ``pop``); None once the
        reader closed and every request was answered."""
        while not self._items:
            if self._closed:
                return None
            self._writer_waits = asyncio.get_running_loop().create_future()
            await self._writer_waits
        return self._items[0]

    def pop(self) -> T:
        """Writer: the head is answered."""
        item = self._items.popleft()
        _wake(self._reader_waits)
        return item


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)
