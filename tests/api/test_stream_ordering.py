"""SessionStream against the fake engine: every request is submitted to the engine as soon as
it is read, in request order, and the responses go out in request order whatever order the
engine answers in. In-process and deterministic: no server, no sleeps."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from cellserve.api import convert
from cellserve.api.stream import SessionStream
from cellserve.config import Settings
from cellserve.engine.client import EngineClient
from cellserve.engine.types import CompletionChunk, Prediction, SessionInfo
from cellserve.errors import OffsetConflict
from cellserve_client._proto.cellserve.v1 import service_pb2 as svc
from cellserve_client._proto.cellserve.v1 import types_pb2 as types

from .fake_engine import FakeEngine

Req = svc.SessionRequest


class Harness:
    """A stream over the fake engine, fed request by request; responses collected as written."""

    def __init__(self) -> None:
        self.engine = FakeEngine()
        self.requests: asyncio.Queue[svc.SessionRequest | None] = asyncio.Queue()
        self.responses: asyncio.Queue[svc.SessionResponse] = asyncio.Queue()
        engine: EngineClient = self.engine  # the fake implements the protocol

        async def model_msg(name: str) -> types.ModelInfo:
            return convert.model_info((await engine.models(""))[0])

        self.stream = SessionStream(engine, Settings(), "tenant-a", model_msg)
        self.task = asyncio.create_task(self._run())
        self._id = 0

    async def _run(self) -> None:
        async def requests() -> AsyncIterator[svc.SessionRequest]:
            while (r := await self.requests.get()) is not None:
                yield r

        async for response in self.stream.run(requests()):  # an Append's answer comes serialized
            self.responses.put_nowait(svc.SessionResponse.FromString(response) if type(response) is bytes else response)

    def send(self, **op: Any) -> int:
        self._id += 1
        self.requests.put_nowait(Req(request_id=self._id, **op))
        return self._id

    async def recv(self) -> svc.SessionResponse:
        return await asyncio.wait_for(self.responses.get(), 30)

    async def close(self) -> None:
        self.requests.put_nowait(None)
        await asyncio.wait_for(self.task, 30)


def _append(offset: int, text: str) -> Req.Append:
    return Req.Append(offset=offset, input=types.Input(text=text))


def test_ops_are_submitted_in_order_and_answered_in_order() -> None:
    async def body() -> None:
        h = Harness()
        h.send(open=Req.Open())
        assert (await h.recv()).WhichOneof("result") == "opened"
        h.send(append=_append(0, "a"))
        h.send(rewind=Req.Rewind(chars=1))
        h.send(append=_append(0, "b"))
        h.send(snapshot=Req.Snapshot())
        calls = await h.engine.wait_calls(4)
        # all four submitted before any was answered, in request order, with the tenant key
        assert [c.op for c in calls] == ["append", "rewind", "append", "snapshot"]
        assert {c.owner for c in calls} == {"tenant-a"}
        # the engine answers in reverse order; the stream still writes in request order
        calls[3].future.set_result(b"blob")
        calls[2].future.set_exception(OffsetConflict(expected=0, got=5))
        calls[1].future.set_result(SessionInfo("f" * 32, "fake", 0, 0.0, 0.0))
        assert h.responses.empty()  # request 2 is not answered yet: nothing may overtake it
        calls[0].future.set_result(Prediction(position=1, top_k=(("b", 0.5),)))
        got = [await h.recv() for _ in range(4)]
        assert [r.request_id for r in got] == [2, 3, 4, 5]
        assert [r.WhichOneof("result") for r in got] == ["prediction", "rewound", "error", "snapshot"]
        assert got[2].error.expected_offset == 0
        await h.close()

    asyncio.run(body())


def test_completion_chunks_then_later_responses() -> None:
    async def body() -> None:
        h = Harness()
        h.send(open=Req.Open())
        await h.recv()
        h.send(complete=Req.Complete(max_chars=4))
        h.send(append=_append(0, "x"))  # submitted at once: in the engine it cancels the completion
        calls = await h.engine.wait_calls(2)
        assert [c.op for c in calls] == ["complete", "append"]
        calls[1].future.set_result(Prediction(position=1, top_k=()))
        chunks = h.engine.chunks[0]
        chunks.queue.put_nowait(CompletionChunk(0, "ab", False))
        first = await h.recv()
        assert first.request_id == 2 and first.completion_chunk.text == "ab"
        assert h.responses.empty()  # the append's answer waits for the completion's end
        chunks.queue.put_nowait(CompletionChunk(0, "", True, "cancelled"))
        chunks.queue.put_nowait(None)
        done, answer = await h.recv(), await h.recv()
        assert done.completion_chunk.done and done.completion_chunk.finish_reason == types.FINISH_REASON_CANCELLED
        assert answer.request_id == 3 and answer.prediction.position == 1
        assert chunks.closed
        await h.close()

    asyncio.run(body())


def test_stream_end_closes_unwritten_completions() -> None:
    async def body() -> None:
        h = Harness()
        h.send(open=Req.Open())
        await h.recv()
        h.send(complete=Req.Complete(max_chars=4))
        await h.engine.wait_calls(1)
        h.task.cancel()  # the client went away mid-completion
        await asyncio.gather(h.task, return_exceptions=True)
        assert h.engine.chunks[0].closed

    asyncio.run(body())


class CountingFuture(asyncio.Future[Any]):
    """Counts the callbacks hung on it: an awaiting task's wake-up is one."""

    callbacks = 0

    def add_done_callback(self, fn: Any, *, context: Any = None) -> None:
        CountingFuture.callbacks += 1
        super().add_done_callback(fn, context=context)


def test_the_writer_awaits_one_future_per_request_and_nothing_else() -> None:
    """Per request, the stream hangs nothing on the engine's answer but the writer's own await
    (no done-callback, queue or semaphore per request); answers still go out in order."""

    async def body() -> None:
        h = Harness()
        h.send(open=Req.Open())
        await h.recv()
        real_call = h.engine._call  # noqa: SLF001

        def counted(op: str, owner: str, *args: Any) -> asyncio.Future[Any]:
            fut = real_call(op, owner, *args)
            counting = CountingFuture()
            fut.add_done_callback(lambda f: counting.set_result(f.result()))
            return counting

        h.engine._call = counted  # type: ignore[method-assign]  # noqa: SLF001
        CountingFuture.callbacks = 0
        for i in range(8):
            h.send(append=_append(i, "a"))
        calls = await h.engine.wait_calls(8)
        await asyncio.sleep(0)  # the writer waits on the first answer
        for i, call in enumerate(reversed(calls)):  # answered last first
            call.future.set_result(Prediction(8 - i, (("a", 1.0),)))
        got = [(await h.recv()).prediction.position for _ in range(8)]
        assert got == list(range(1, 9))
        # the writer awaited each answer at most once; nothing else was hung on them
        assert CountingFuture.callbacks <= 8
        await h.close()

    asyncio.run(body())
