"""Every public method of the asyncio API, against a real server, over both transports; and
pipelining: appends from concurrent tasks keep their call order."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from cellserve_client import AsyncClient, AsyncSession, Cell, ClosedError, FinishReason, Prediction
from servers import ServerProcess


def run(server: ServerProcess, transport: str, body: Callable[[AsyncClient], Awaitable[None]]) -> None:
    async def main() -> None:
        async with AsyncClient(server.target, transport=transport, timeout=60) as client:
            await asyncio.wait_for(body(client), 120)

    asyncio.run(main())


def test_models_open_append_info(server: ServerProcess, transport: str) -> None:
    async def body(client: AsyncClient) -> None:
        models = await client.models()
        assert any(m.name == "tiny-lstm" and m.cell is Cell.LSTM for m in models)
        async with await client.open() as s:
            assert isinstance(s, AsyncSession)
            p = await s.append("hello", logprobs=True)
            assert isinstance(p, Prediction) and p.position == 5 and len(p.logprobs) == 5
            assert (await s.info()).position == 5
        assert s.closed

    run(server, transport, body)


def test_complete_rewind_reset_snapshot_resume_close(server: ServerProcess, transport: str) -> None:
    async def body(client: AsyncClient) -> None:
        s = await client.open("tiny-gru")
        await s.append("abc")
        stream = await s.complete(max_chars=6, n=2, temperature=0.5, seed=11)
        chunks = [c async for c in stream]
        assert {c.alternative for c in chunks} == {0, 1}
        comps = stream.completions
        assert [len(c.text) for c in comps] == [6, 6] and comps[0].finish_reason is FinishReason.LENGTH
        assert await (await s.complete(max_chars=6, n=2, temperature=0.5, seed=11)).collect() == comps
        await s.append("def")
        assert await s.rewind(3) == 3
        blob = await s.snapshot()
        want = await s.append("xy")
        assert await s.reset() == 0 and s.position == 0
        r = await client.resume(blob, "xy")
        assert r.last_prediction == want and r.model.cell is Cell.GRU
        await r.close()
        await s.close()
        try:
            await s.append("z")
        except ClosedError:
            pass
        else:
            raise AssertionError("append on a closed session")

    run(server, transport, body)


def test_concurrent_appends_keep_call_order(server: ServerProcess, transport: str) -> None:
    """Appends issued from many tasks at once are pipelined, yet each gets its offset in call
    order and the same prediction as a sequential run."""
    text = "pipelined keystrokes!"

    async def body(client: AsyncClient) -> None:
        async with await client.open() as seq:
            want = [await seq.append(ch) for ch in text]
        async with await client.open() as s:
            got = await asyncio.gather(*(s.append(ch) for ch in text))
        assert [p.position for p in got] == list(range(1, len(text) + 1))
        assert [p.top[0][0] for p in got] == [p.top[0][0] for p in want]

    run(server, transport, body)
