"""The stream hygiene helpers (``cellserve.api.stream_guard``), driven with a fake clock."""

from __future__ import annotations

import asyncio

import pytest
from cellserve.api.status import status_of
from cellserve.api.stream_guard import ClientNotReading, IdleDeadline, StreamIdle, UnreadBound


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
