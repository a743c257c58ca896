"""Connection hygiene of one Session stream.

``idle_guarded`` (wired, by the error-mapping interceptor around every bidirectional stream):
when no request arrives for ``stream_idle_timeout_s``, the request iterator raises
``StreamIdle`` and the stream ends with UNAVAILABLE "idle ... attach again"; its slot and the
tenant's stream quota come back, and the session lives on.

Two objects for the stream itself to drive, once it is rewritten:

``IdleDeadline``: a finer idle rule, a stream with no request read and nothing owed for ``stream_idle_timeout_s``
is ended with UNAVAILABLE (``StreamIdle``: "idle for N s ... attach again"), so silent streams
give their slot (and the tenant's stream quota) back even while their session lives on.

``UnreadBound``: answers produced for the client but not yet taken by gRPC (the client is not
reading, HTTP/2 flow control has stopped the writer) are counted; past ``stream_max_unread``
the stream ends with RESOURCE_EXHAUSTED "client is not reading". The session is kept: the
client can attach or resume it.

Not wired yet: the Session stream is being rewritten. Wiring adds the setting
``stream_max_unread`` (e.g. 1024) and drives the two objects from the stream:
- reader: ``idle.touch()`` after each request read; ``idle.owe(+1)`` when a request is
  accepted and ``idle.owe(-1)`` when its last response is written;
- the stream runs ``await idle.expired()`` as a task next to the reader and ends the stream
  with ``StreamIdle`` when it returns;
- every response put in a reply queue: ``unread.produced()`` (raises ``ClientNotReading``);
  every response yielded to gRPC: ``unread.taken()``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

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
                await asyncio.wait_for(self._changed.wait(), timeout=left)
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


async def idle_guarded(requests: AsyncIterator[T], timeout_s: float) -> AsyncIterator[T]:
    """``requests``, raising ``StreamIdle`` when the next one takes longer than ``timeout_s``."""
    it = aiter(requests)
    while True:
        try:
            request = await asyncio.wait_for(anext(it), timeout_s)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise StreamIdle(timeout_s) from None
        yield request
