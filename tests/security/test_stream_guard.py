"""The stream hygiene helpers (``cellserve.api.stream_guard``), driven with a fake clock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from cellserve.api.status import status_of
from cellserve.api.stream_guard import ClientNotReading, IdleDeadline, StreamIdle, UnreadBound, idle_guarded


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_idle_counts_from_the_last_activity_and_not_while_owed() -> None:
    async def main() -> None:
        clock = Clock()
        idle = IdleDeadline(10.0, clock)
        clock.now = 6.0
        assert idle.remaining() == 4.0
        idle.touch()
        assert idle.remaining() == 10.0
        idle.owe(+1)
        clock.now = 100.0
        assert idle.remaining() is None  # a long completion is not idleness
        idle.owe(-1)
        assert idle.remaining() == 10.0
        clock.now = 111.0
        await asyncio.wait_for(idle.expired(), timeout=5)  # already past: returns at once

    asyncio.run(main())


def test_expired_wakes_on_activity_and_returns_once_idle() -> None:
    async def main() -> None:
        clock = Clock()
        idle = IdleDeadline(0.05)  # real clock: 50 ms, bounded by wait_for below
        task = asyncio.create_task(idle.expired())
        idle.touch()
        await asyncio.wait_for(task, timeout=5)
        assert clock.now == 0.0

    asyncio.run(main())


def test_unread_bound() -> None:
    u = UnreadBound(3)
    for _ in range(3):
        u.produced()
    u.taken()
    u.produced()
    with pytest.raises(ClientNotReading):
        u.produced()


def test_statuses_are_clear() -> None:
    st = status_of(ClientNotReading(1024))
    assert st.code.name == "RESOURCE_EXHAUSTED" and "client is not reading" in st.message and st.retry_after_ms
    st = status_of(StreamIdle(600))
    assert st.code.name == "UNAVAILABLE" and "idle for 600 s" in st.message


def test_idle_guarded_keeps_a_talking_stream_and_ends_a_silent_one_with_one_timer() -> None:
    """Requests closer together than the timeout keep the stream open for longer than the
    timeout in all; a pause longer than it ends the stream with StreamIdle. However many
    requests pass, the guard holds one timer (none created per request)."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        timers = {"n": 0}
        real_call_at = loop.call_at

        def call_at(*args: Any, **kwargs: Any) -> asyncio.TimerHandle:
            timers["n"] += 1
            return real_call_at(*args, **kwargs)

        loop.call_at = call_at  # type: ignore[method-assign]

        async def requests() -> AsyncIterator[int]:
            for i in range(12):
                await asyncio.sleep(0.02)  # 12 x 0.02 s = 0.24 s > the 0.1 s timeout
                yield i
            await asyncio.sleep(5)  # silent: the guard ends the stream long before

        got = []
        started = loop.time()
        with pytest.raises(StreamIdle):
            async for r in idle_guarded(requests(), 0.1):
                got.append(r)
        assert got == list(range(12))
        assert loop.time() - started < 2.0
        assert timers["n"] <= 13 + 4  # the 13 sleeps' own, and the guard's few re-arms

    asyncio.run(main())


def test_idle_guarded_does_not_count_time_the_reader_spends_elsewhere() -> None:
    async def main() -> None:
        async def requests() -> AsyncIterator[int]:
            for i in range(3):
                yield i

        got = []
        async for r in idle_guarded(requests(), 0.05):
            got.append(r)
            await asyncio.sleep(0.12)  # busy elsewhere, longer than the timeout: not idleness
        assert got == [0, 1, 2]

    asyncio.run(main())
