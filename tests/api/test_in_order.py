"""The reader/writer queue of both streams: request order, the window, and the end."""

from __future__ import annotations

import asyncio

from cellserve.api.in_order import InOrder


def test_order_window_and_end() -> None:
    async def body() -> None:
        q: InOrder[int] = InOrder(2)
        got: list[int] = []

        async def writer() -> None:
            while (item := await q.head()) is not None:
                got.append(item)
                await asyncio.sleep(0)
                assert q.pop() == item

        w = asyncio.create_task(writer())
        for i in range(5):
            await q.room()
            assert len(q) < 2  # the reader never runs ahead of the window
            q.put(i)
        q.close()
        await asyncio.wait_for(w, 5)
        assert got == [0, 1, 2, 3, 4] and len(q) == 0
        assert await q.head() is None  # closed and empty: the writer ends

    asyncio.run(body())


def test_a_waiting_writer_is_woken_by_the_next_request() -> None:
    async def body() -> None:
        q: InOrder[str] = InOrder(4)
        head = asyncio.create_task(q.head())
        await asyncio.sleep(0)
        assert not head.done()  # nothing yet: it waits
        q.put("a")
        assert await asyncio.wait_for(head, 5) == "a" and len(q) == 1  # the head stays until pop

    asyncio.run(body())
