"""RedisSessionStore against a real redis-server: atomic take, expiry, key separation, and a
store that is down or stops answering (bounded waits, counted, back-off)."""

from __future__ import annotations

import asyncio
import socket
import time

from cellserve.handoff import HandoffRecord, RedisSessionStore, StoreUnavailable, open_record, seal_record
from cellserve.handoff.store import is_session_id

from .conftest import RedisServer, free_port

KEY = b"k" * 32
SID = "0123456789abcdef0123456789abcdef"


def _record(sid: str = SID, tenant: str = "acme") -> HandoffRecord:
    return HandoffRecord(sid, tenant, b"blob-bytes", time.time() + 60, 7, "x = 1", b"answer")


def test_record_round_trip_and_binding() -> None:
    rec = _record()
    sealed = seal_record(rec, KEY, "k1")
    assert b"x = 1" not in sealed and b"acme" not in sealed  # nothing in the clear
    assert open_record(sealed, KEY, "k1") == rec
    assert open_record(sealed, KEY, "k2") is None  # moved to another key: does not open
    assert open_record(sealed, b"z" * 32, "k1") is None  # another deployment's secret
    assert open_record(sealed[:-1], KEY, "k1") is None
    assert open_record(b"garbage", KEY, "k1") is None


def test_session_ids_only() -> None:
    assert is_session_id(SID)
    assert not is_session_id(SID.upper()) and not is_session_id("../x") and not is_session_id(SID + "0")


def test_put_take_once(redis_server: RedisServer) -> None:
    async def main() -> None:
        store = RedisSessionStore(redis_server.url, "test")
        try:
            key = store.key("acme", SID)
            assert "acme" not in key and key.endswith(SID)
            assert store.key("other", SID) != key
            loop = asyncio.get_running_loop()
            n = await store.put_many([(key, b"v1", time.time() + 60)], loop.time() + 5)
            assert n == 1
            # two replicas miss at once: exactly one gets the session
            got = await asyncio.gather(store.take(key), store.take(key))
            assert sorted(got, key=lambda v: v is None) == [b"v1", None]
            assert store.stats.takes_hit == 1 and store.stats.takes_miss == 1
            assert await store.take(store.key("other", SID)) is None
        finally:
            await store.close()

    asyncio.run(main())


def test_entries_expire_with_their_snapshot(redis_server: RedisServer) -> None:
    async def main() -> None:
        store = RedisSessionStore(redis_server.url, "test")
        try:
            loop = asyncio.get_running_loop()
            key = store.key("acme", SID)
            await store.put_many([(key, b"v", time.time() + 0.2)], loop.time() + 5)
            await asyncio.sleep(0.5)
            assert await store.take(key) is None
        finally:
            await store.close()

    asyncio.run(main())


def test_put_many_in_chunks(redis_server: RedisServer) -> None:
    async def main() -> None:
        store = RedisSessionStore(redis_server.url, "test")
        try:
            loop = asyncio.get_running_loop()
            items = [(store.key("t", f"{i:032x}"), b"v%d" % i, time.time() + 60) for i in range(600)]
            assert await store.put_many(items, loop.time() + 10) == 600
            assert await store.take(items[599][0]) == b"v599"
            assert store.stats.puts == 600
        finally:
            await store.close()

    asyncio.run(main())


def test_store_down_is_bounded_counted_and_backed_off() -> None:
    async def main() -> None:
        store = RedisSessionStore(f"redis://127.0.0.1:{free_port()}/0", "test", timeout_s=0.2)
        try:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            try:
                await store.take(store.key("t", SID))
                raise AssertionError("take on a dead store must raise StoreUnavailable")
            except StoreUnavailable:
                pass
            # the second call is skipped at once (back-off), not another connect attempt
            try:
                await store.take(store.key("t", SID))
                raise AssertionError("expected StoreUnavailable")
            except StoreUnavailable:
                pass
            assert store.stats.take_failures == 1 and store.stats.skipped == 1
            assert await store.put_many([(store.key("t", SID), b"v", time.time() + 60)], loop.time() + 5) == 0
            assert loop.time() - t0 < 2.0
        finally:
            await store.close()

    asyncio.run(main())


def test_store_that_stops_answering() -> None:
    # A listener that accepts and never answers: every call ends within its deadline.
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    port = srv.getsockname()[1]

    async def main() -> None:
        store = RedisSessionStore(f"redis://127.0.0.1:{port}/0", "test", timeout_s=0.2)
        try:
            t0 = time.monotonic()
            try:
                await store.take(store.key("t", SID))
                raise AssertionError("expected StoreUnavailable")
            except StoreUnavailable:
                pass
            assert time.monotonic() - t0 < 2.0
        finally:
            await store.close()

    try:
        asyncio.run(main())
    finally:
        srv.close()
