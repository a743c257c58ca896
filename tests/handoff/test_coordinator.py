"""The API-side handoff against a real redis-server with a small in-memory engine: a miss takes
the session once, pipelined operations of a missed session are submitted again in order,
unknown and foreign ids stay NotFound, and a dead store costs a miss nothing but NotFound."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any

import pytest
from cellserve.errors import NotFound, PreconditionFailed
from cellserve.handoff import HandoffRecord, RedisSessionStore
from cellserve.handoff.coordinator import Handoff, HandoffEngineClient

from .conftest import RedisServer, free_port

KEY = b"s" * 32
SID = "00112233445566778899aabbccddeeff"


class TinyEngine:
    """Sessions are (owner, text); append checks the offset; ops resolve on the next loop turn
    in submission order, like a real engine's step."""

    def __init__(self) -> None:
        self.sessions: dict[str, tuple[str, str]] = {}
        self.adopted: list[str] = []
        self.log: list[tuple[str, int]] = []
        self.refuse = False

    def _later(self, fn: Any) -> Awaitable[Any]:
        fut = asyncio.get_running_loop().create_future()

        def run() -> None:
            try:
                fut.set_result(fn())
            except Exception as exc:
                fut.set_exception(exc)

        asyncio.get_running_loop().call_soon(run)
        return fut

    def append(self, owner: str, sid: str, offset: int, text: str) -> Awaitable[int]:
        def run() -> int:
            s = self.sessions.get(sid)
            if s is None or s[0] != owner:
                raise NotFound("unknown session")
            assert offset == len(s[1]), (offset, s)
            self.sessions[sid] = (owner, s[1] + text)
            self.log.append((sid, offset))
            return offset + len(text)

        return self._later(run)

    def export_sessions(self, idle_s: float | None, move: bool = False) -> Awaitable[list[HandoffRecord]]:
        return self._later(
            lambda: [
                HandoffRecord(sid, owner, text.encode(), time.time() + 60, -1, "", b"")
                for sid, (owner, text) in self.sessions.items()
            ]
        )

    def adopt(self, owner: str, record: HandoffRecord) -> Awaitable[None]:
        def run() -> None:
            if self.refuse:
                raise PreconditionFailed("other weights")
            self.sessions[record.session_id] = (owner, record.blob.decode())
            self.adopted.append(record.session_id)

        return self._later(run)


async def _replicas(url: str) -> tuple[TinyEngine, Handoff, TinyEngine, HandoffEngineClient, RedisSessionStore]:
    store = RedisSessionStore(url, "t")
    a, b = TinyEngine(), TinyEngine()
    a.sessions[SID] = ("acme", "hello")
    ha = Handoff(store, KEY, a)
    hb = Handoff(store, KEY, b)
    return a, ha, b, HandoffEngineClient(b, hb), store


def test_miss_recovers_once_and_pipelined_ops_keep_their_order(redis_server: RedisServer) -> None:
    async def main() -> None:
        a, ha, b, client_b, store = await _replicas(redis_server.url)
        loop = asyncio.get_running_loop()
        await ha.drain(loop.time() + 5)
        assert ha.drain_written == 1 and ha.drain_left == 0
        # three pipelined appends reach replica B, which does not hold the session
        outs = await asyncio.gather(*(client_b.append("acme", SID, 5 + i, "!") for i in range(3)))
        assert outs == [6, 7, 8]
        assert b.adopted == [SID] and b.sessions[SID] == ("acme", "hello!!!")
        assert [o for _, o in b.log] == [5, 6, 7]
        assert store.stats.takes_hit == 1
        await store.close()

    asyncio.run(main())


def test_unknown_and_foreign_sessions_stay_not_found(redis_server: RedisServer) -> None:
    async def main() -> None:
        a, ha, b, client_b, store = await _replicas(redis_server.url)
        loop = asyncio.get_running_loop()
        await ha.drain(loop.time() + 5)
        with pytest.raises(NotFound):
            await client_b.append("mallory", SID, 5, "x")  # another tenant: a plain miss
        with pytest.raises(NotFound):
            await client_b.append("acme", "f" * 32, 0, "x")  # never existed
        with pytest.raises(NotFound):
            await client_b.append("acme", "not-an-id", 0, "x")  # never looked up
        assert b.adopted == []
        assert await client_b.append("acme", SID, 5, "x") == 6  # the owner still gets it
        await store.close()

    asyncio.run(main())


def test_refused_record_is_not_found_and_counted(redis_server: RedisServer) -> None:
    async def main() -> None:
        a, ha, b, client_b, store = await _replicas(redis_server.url)
        b.refuse = True
        await ha.drain(asyncio.get_running_loop().time() + 5)
        with pytest.raises(NotFound):
            await client_b.append("acme", SID, 5, "x")
        await store.close()

    asyncio.run(main())


def test_store_down_is_a_plain_miss() -> None:
    async def main() -> None:
        store = RedisSessionStore(f"redis://127.0.0.1:{free_port()}/0", "t", timeout_s=0.2)
        b = TinyEngine()
        client_b = HandoffEngineClient(b, Handoff(store, KEY, b))
        t0 = time.monotonic()
        for _ in range(5):
            with pytest.raises(NotFound):
                await client_b.append("acme", SID, 0, "x")
        assert time.monotonic() - t0 < 2.0
        assert store.stats.take_failures == 1 and store.stats.skipped == 4
        await store.close()

    asyncio.run(main())
