"""Connection hygiene of one Session stream.

``guarded`` (wired, by the call wrapper ``api.calls`` around the requests of every
bidirectional stream; ``idle_guarded`` is it without a token): when no request arrives for
``stream_idle_timeout_s``, the request iterator raises ``StreamIdle`` and the stream ends with
UNAVAILABLE "idle ... attach again"; its slot and the tenant's stream quota come back, and the
session lives on. With a ``TokenCheck`` (authentication on), each request is let through only
while the stream's token is still valid. It is the one generator between gRPC's request
iterator and the stream's reader: per request a clock read, and with a token one more check.

``UnreadBound`` (wired, by ``stream.SessionStream``): answers ready for the client but not yet
taken by gRPC are counted (a client that stops reading makes HTTP/2 flow control hold the
writer). Past ``stream_max_unread``, with no answer taken for ``stream.UNREAD_GRACE_S``, the
stream ends with RESOURCE_EXHAUSTED "client is not reading" (the servicer aborts the call from
outside the stuck writer, then cancels it). The session is kept: the client can attach again.

``IdleDeadline`` (not wired: ``guarded`` does the job at the request iterator): a finer
idle rule, a stream with no request read and nothing owed for ``stream_idle_timeout_s`` ends
with ``StreamIdle``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Protocol, TypeVar

from ..errors import CapacityExceeded, Unavailable

T = TypeVar("T")


class StreamIdle(Unavailable):
    """The stream was silent too long; the session lives on (UNAVAILABLE: reconnect)."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(
            f"the stream was idle for {timeout_s:g} s (stream_idle_timeout_s) and was closed; "
            "the session is kept: attach to it again"
        )


class ClientNotReading(CapacityExceeded):
    def __init__(self, bound: int) -> None:
        super().__init__(
            f"client is not reading: {bound} answers are waiting to be read (stream_max_unread); "
            "the session is kept: attach to it again and read the answers",
            retry_after_s=1.0,
        )


class IdleDeadline:
    def __init__(self, timeout_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout_s = timeout_s
        self._clock = clock
        self._last = clock()
        self._owed = 0
        self._changed = asyncio.Event()

    def touch(self) -> None:
        self._last = self._clock()
        self._changed.set()

    def owe(self, delta: int) -> None:
        self._owed += delta
        self._last = self._clock()
        self._changed.set()

    def remaining(self) -> float | None:
        """Seconds until the stream counts as idle; None while answers are owed."""
        if self._owed > 0:
            return None
        return self.timeout_s - (self._clock() - self._last)

    async def expired(self) -> None:
        """Returns once the stream has been idle for the timeout."""
        while True:
            left = self.remaining()
            if left is not None and left <= 0:
                return
            self._changed.clear()
            try:
                async with asyncio.timeout(left):  # not wait_for: see processes.follow_core
                    await self._changed.wait()
            except TimeoutError:
                pass


class UnreadBound:
    def __init__(self, bound: int) -> None:
        self.bound = bound
        self.unread = 0

    def produced(self, n: int = 1) -> None:
        self.unread += n
        if self.unread > self.bound:
            raise ClientNotReading(self.bound)

    def taken(self, n: int = 1) -> None:
        self.unread = max(0, self.unread - n)


class _IdleWatch:
    """One timer per stream, re-armed only when it fires: a request costs one clock read, not
    a timer (a ``wait_for`` per request created and cancelled a ``TimerHandle`` and a waiter
    every keystroke). When it fires while the stream waits for a request and the last one came
    ``timeout_s`` ago or more, it cancels the waiting task, which raises ``StreamIdle``."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.loop = asyncio.get_running_loop()
        self.last = self.loop.time()
        self.waiting: asyncio.Task[object] | None = None  # the task awaiting the next request
        self.expired = False
        self._handle = self.loop.call_at(self.last + timeout_s, self._fire)

    def _fire(self) -> None:
        now = self.loop.time()
        due = self.last + self.timeout_s
        if self.waiting is None:  # the reader is busy elsewhere: it is not the client's silence
            self._handle = self.loop.call_at(max(due, now + self.timeout_s), self._fire)
            return
        if now < due:  # a request came since this timer was set
            self._handle = self.loop.call_at(due, self._fire)
            return
        self.expired = True
        self.waiting.cancel()

    def close(self) -> None:
        self._handle.cancel()


class TokenCheck(Protocol):
    """Whether a stream's credential still holds, asked at each of its requests."""

    def due(self) -> bool:
        """True when ``check`` must run (the tokens may have changed): cheap, every request."""

    async def check(self) -> None:
        """Raises (``Unauthenticated``) when the stream's token is no longer valid."""


def idle_guarded(requests: AsyncIterator[T], timeout_s: float) -> AsyncIterator[T]:
    """``requests``, raising ``StreamIdle`` when the next one takes longer than ``timeout_s``."""
    return guarded(requests, timeout_s)


async def guarded(
    requests: AsyncIterator[T], timeout_s: float | None, token: TokenCheck | None = None
) -> AsyncIterator[T]:
    """``requests``, raising ``StreamIdle`` when the next one takes longer than ``timeout_s``
    (None: no limit), and what ``token.check`` raises before a request once it is due."""
    it = aiter(requests)
    watch = _IdleWatch(timeout_s) if timeout_s is not None else None
    try:
        while True:
            if watch is None:
                try:
                    request = await anext(it)
                except StopAsyncIteration:
                    return
            else:
                task = watch.waiting = asyncio.current_task()
                try:
                    request = await anext(it)
                except StopAsyncIteration:
                    return
                except asyncio.CancelledError:
                    if not watch.expired or task is None:
                        raise
                    task.uncancel()
                    raise StreamIdle(watch.timeout_s) from None
                finally:
                    watch.waiting = None
                watch.last = watch.loop.time()
            if token is not None and token.due():
                await token.check()
            yield request
    finally:
        if watch is not None:
            watch.close()
