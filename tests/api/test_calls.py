"""The call wrapper (``cellserve.api.calls``) on a real grpc.aio server on a loopback port, around
a test service with one method of each handler kind: every kind ends a domain error with its
status and trailing metadata, records each call's outcome exactly once, answers undecodable
bytes with INVALID_ARGUMENT, and a bidirectional stream holds a stream lease for its life
(none while draining). The wrapped handler is built once per method."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from cellserve.api.admission import StreamAdmission
from cellserve.api.calls import CallInterceptor
from cellserve.api.malformed import MALFORMED_MESSAGE
from cellserve.errors import CapacityExceeded
from grpc import aio

from .fake_engine import FakeEngine

SERVICE = "test.Calls"
BROKEN = b"\xff"  # what the test deserializer cannot decode
REFUSE = b"refuse"  # a request the test handlers answer with CapacityExceeded


def _decode(raw: bytes) -> bytes:
    if raw == BROKEN:
        raise ValueError("undecodable")
    return raw


def _refused() -> CapacityExceeded:
    return CapacityExceeded("test limit reached", retry_after_s=0.25)


async def _one(request: bytes, context: Any) -> bytes:
    if request == REFUSE:
        raise _refused()
    return request


async def _gather(requests: AsyncIterator[bytes], context: Any) -> bytes:
    got = [r async for r in requests]
    if REFUSE in got:
        raise _refused()
    return b"".join(got)


async def _repeat(request: bytes, context: Any) -> AsyncIterator[bytes]:
    yield request
    if request == REFUSE:
        raise _refused()
    yield request


async def _echo(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
    async for r in requests:
        if r == REFUSE:
            raise _refused()
        yield r


HANDLERS = {
    "One": grpc.unary_unary_rpc_method_handler(_one, _decode),
    "Gather": grpc.stream_unary_rpc_method_handler(_gather, _decode),
    "Repeat": grpc.unary_stream_rpc_method_handler(_repeat, _decode),
    "Echo": grpc.stream_stream_rpc_method_handler(_echo, _decode),
}


class Recorded:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []

    def request(self, method: str, code: str) -> None:
        self.requests.append((method, code))

    def keystroke(self, model: str, kind: str, seconds: float) -> None:
        pass


class Served:
    """The test service behind one CallInterceptor, with a channel to it."""

    def __init__(self) -> None:
        self.engine = FakeEngine()
        self.admission = StreamAdmission(self.engine)
        self.recorded = Recorded()
        self.calls = CallInterceptor(
            self.engine,
            self.admission,
            recorder=self.recorded,
            stream_idle_timeout_s=30.0,
            services=(SERVICE,),
        )
        self.server = aio.server(interceptors=[self.calls])
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, HANDLERS),))
        self.channel: aio.Channel | None = None

    async def __aenter__(self) -> Served:
        port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        self.channel = aio.insecure_channel(f"127.0.0.1:{port}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.channel is not None
        await self.channel.close()
        await self.server.stop(None)

    def method(self, kind: str, name: str) -> Any:
        assert self.channel is not None
        make: Callable[..., Any] = getattr(self.channel, kind)
        return make(f"/{SERVICE}/{name}")


def _run(body: Callable[[Served], Awaitable[None]]) -> None:
    async def main() -> None:
        async with Served() as s:
            await asyncio.wait_for(body(s), 30)

    asyncio.run(main())


async def _stream_of(*items: bytes) -> AsyncIterator[bytes]:
    for item in items:
        yield item


async def _call(s: Served, kind: str, items: tuple[bytes, ...]) -> list[bytes]:
    """One call of ``kind`` with ``items`` as its request(s); its response(s)."""
    if kind == "One":
        return [await s.method("unary_unary", "One")(items[0])]
    if kind == "Gather":
        return [await s.method("stream_unary", "Gather")(_stream_of(*items))]
    if kind == "Repeat":
        return [r async for r in s.method("unary_stream", "Repeat")(items[0])]
    return [r async for r in s.method("stream_stream", "Echo")(_stream_of(*items))]


@pytest.mark.parametrize("kind", list(HANDLERS))
def test_each_kind_answers_and_records_once(kind: str) -> None:
    async def body(s: Served) -> None:
        got = await _call(s, kind, (b"a",))
        assert got == {"One": [b"a"], "Gather": [b"a"], "Repeat": [b"a", b"a"], "Echo": [b"a"]}[kind]
        assert s.recorded.requests == [(kind, "OK")]

    _run(body)


@pytest.mark.parametrize("kind", list(HANDLERS))
def test_each_kind_ends_a_domain_error_with_its_status_and_hint(kind: str) -> None:
    async def body(s: Served) -> None:
        with pytest.raises(aio.AioRpcError) as info:
            await _call(s, kind, (REFUSE,))
        err = info.value
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert err.details() == "test limit reached (retry after 250 ms)"
        assert ("retry-after-ms", "250") in tuple(err.trailing_metadata() or ())
        assert s.recorded.requests == [(kind, "RESOURCE_EXHAUSTED")]

    _run(body)


@pytest.mark.parametrize("kind", ["One", "Repeat"])
def test_an_undecodable_request_is_invalid_argument(kind: str) -> None:
    async def body(s: Served) -> None:
        with pytest.raises(aio.AioRpcError) as info:
            await _call(s, kind, (BROKEN,))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details() == MALFORMED_MESSAGE
        assert s.recorded.requests == [(kind, "INVALID_ARGUMENT")]

    _run(body)


def test_a_stream_holds_a_lease_for_its_life_and_none_while_draining() -> None:
    async def body(s: Served) -> None:
        requests: asyncio.Queue[bytes | None] = asyncio.Queue()

        async def fed() -> AsyncIterator[bytes]:
            while (r := await requests.get()) is not None:
                yield r

        call = s.method("stream_stream", "Echo")(fed())
        requests.put_nowait(b"x")
        assert await call.read() == b"x"
        assert len(s.engine.open_streams) == 1  # the lease, held while the stream runs
        requests.put_nowait(None)
        assert await call.code() == grpc.StatusCode.OK
        assert s.engine.open_streams == set()  # given back when it ended
        # unary calls take none
        await _call(s, "One", (b"a",))
        assert s.engine.streams_opened == 1

        s.admission.begin_drain()
        with pytest.raises(aio.AioRpcError) as info:
            await _call(s, "Echo", (b"y",))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert s.engine.streams_opened == 1 and s.engine.open_streams == set()

    _run(body)


def test_each_method_is_wrapped_once() -> None:
    async def body(s: Served) -> None:
        lookups: list[str] = []

        async def continuation(details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
            lookups.append(details.method)
            return HANDLERS.get(details.method.rsplit("/", 1)[-1])

        class Details(grpc.HandlerCallDetails):  # type: ignore[misc]
            def __init__(self, method: str) -> None:
                self.method = method
                self.invocation_metadata = ()

        first = await s.calls.intercept_service(continuation, Details(f"/{SERVICE}/One"))
        again = await s.calls.intercept_service(continuation, Details(f"/{SERVICE}/One"))
        assert first is again and lookups == [f"/{SERVICE}/One"]
        # an unknown method is not kept: clients choose method names
        for _ in range(2):
            assert await s.calls.intercept_service(continuation, Details(f"/{SERVICE}/Nope")) is None
        assert lookups.count(f"/{SERVICE}/Nope") == 2

    _run(body)
