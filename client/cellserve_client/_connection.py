"""Connections: how the ops of one session reach one server session.

``StreamConnection`` keeps one bidirectional ``Session`` stream per session: ops are written as
soon as they are queued (at most ``max_outstanding`` unanswered), and answers come back in
request order. ``UnaryConnection`` sends one unary call at a time, in order (concurrent
unary appends could arrive out of order and be refused as offset conflicts).

Both settle ops through ``ack``/``nack`` and return when the queue is closed and nothing is in
flight. A failure that moves the session (``_failover.moves_session``) is raised instead: the
ops in ``inflight`` stay there, unsettled, for the session to send again elsewhere.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import Any, Protocol

import grpc
from grpc import aio

from . import _convert, _errors
from ._aio import within
from ._failover import moves_session
from ._ops import Op, OpQueue
from ._proto.cellserve.v1 import service_pb2 as svc
from ._rpc import Channel, Metadata
from ._types import Prediction, Suggestion

Ack = Callable[[Op, Any], None]
Nack = Callable[[Op, BaseException], None]
Inflight = collections.deque[Op]


class Connection(Protocol):
    target: str
    session_id: str

    async def run(self, queue: OpQueue, inflight: Inflight, ack: Ack, nack: Nack) -> None: ...

    async def abort(self) -> None: ...


def _stream_error(err: svc.SessionResponse.Error) -> _errors.CellserveError:
    return _errors.from_code(
        err.code,
        err.message,
        expected_offset=err.expected_offset if err.HasField("expected_offset") else None,
        retry_after_ms=err.retry_after_ms,
    )


class UnaryConnection:
    def __init__(self, channel: Channel, metadata: Metadata, session_id: str) -> None:
        self.target = channel.target
        self.session_id = session_id
        self._ch = channel
        self._md = metadata

    async def run(self, queue: OpQueue, inflight: Inflight, ack: Ack, nack: Nack) -> None:
        while (op := await queue.get()) is not None:
            inflight.append(op)
            op.restart()
            try:
                result = await self._execute(op)
            except _errors.CellserveError as exc:
                if moves_session(exc):
                    raise
                inflight.popleft()
                nack(op, exc)
            else:
                inflight.popleft()
                ack(op, result)

    async def abort(self) -> None:
        pass  # nothing open between calls

    async def _execute(self, op: Op) -> Any:
        # No deadline: a caller's timeout only stops its wait, while the op stays in order here;
        # keepalive pings notice a dead server.
        sid, md = self.session_id, self._md
        if op.kind == "append":
            resp = await self._ch.append(_convert.unary_append(sid, op.offset, op.text, op.append), md, None)
            return _convert.prediction(resp.prediction)
        if op.kind == "complete":
            async for chunk in self._ch.complete(_convert.unary_complete(sid, op.completion), md):
                op.deliver(_convert.completion_chunk(chunk.chunk))
            return None
        if op.kind == "suggest":
            req = _convert.unary_suggest(sid, op.suggest)
            return _convert.suggestions((await self._ch.suggest(req, md, None)).suggestions)
        if op.kind == "rewind":
            return (await self._ch.rewind(svc.RewindRequest(session_id=sid, chars=op.chars), md, None)).session.position
        if op.kind == "reset":
            return (await self._ch.reset(svc.ResetRequest(session_id=sid), md, None)).session.position
        if op.kind == "snapshot":
            return (await self._ch.snapshot(svc.SnapshotRequest(session_id=sid), md, None)).blob
        await self._ch.close_session(svc.CloseSessionRequest(session_id=sid), md, None)
        return None


class StreamConnection:
    def __init__(self, channel: Channel, metadata: Metadata, session_id: str, max_outstanding: int) -> None:
        self.target = channel.target
        self.session_id = session_id
        self._ch = channel
        self._md = metadata
        self._max_outstanding = max_outstanding
        self._call: Any = None
        self._next_id = 0

    async def attach(self, timeout: float | None) -> None:
        """Opens the stream and binds it to the session (the stream's first request)."""
        self._call = self._ch.session_stream(self._md)
        try:
            await self._call.write(
                svc.SessionRequest(request_id=0, attach=svc.SessionRequest.Attach(session_id=self.session_id))
            )
            resp = await within(self._call.read(), timeout)
        except grpc.RpcError as err:
            self._call.cancel()
            raise _errors.from_rpc_error(err) from None
        except TimeoutError:
            self._call.cancel()
            raise _errors.Timeout("attaching the session stream timed out") from None
        if resp is aio.EOF:
            raise _errors.Unavailable("the session stream ended before it was attached")
        if resp.WhichOneof("result") == "error":
            self._call.cancel()
            raise _stream_error(resp.error)

    async def abort(self) -> None:
        if self._call is not None:
            self._call.cancel()

    async def run(self, queue: OpQueue, inflight: Inflight, ack: Ack, nack: Nack) -> None:
        window = asyncio.Semaphore(self._max_outstanding)
        writer = asyncio.create_task(self._write(queue, inflight, window))
        reader = asyncio.create_task(self._read(queue, inflight, window, ack, nack))
        try:
            await asyncio.wait({writer, reader}, return_when=asyncio.FIRST_EXCEPTION)
            if writer.done() and writer.exception() is None:
                await reader  # the queue closed: read the answers still owed, then the end
            for task in (reader, writer):
                if task.done() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        except grpc.RpcError as err:
            raise _errors.from_rpc_error(err) from None
        finally:
            for task in (writer, reader):
                task.cancel()
            await asyncio.gather(writer, reader, return_exceptions=True)

    async def _write(self, queue: OpQueue, inflight: Inflight, window: asyncio.Semaphore) -> None:
        while True:
            # The slot is taken before the op leaves the queue, so a lost connection never
            # strands an op between the queue and ``inflight``.
            await window.acquire()
            op = await queue.get()
            if op is None:
                break
            self._next_id += 1
            op.request_id = self._next_id
            op.restart()
            inflight.append(op)
            try:
                await self._call.write(self._request(op))
            except asyncio.InvalidStateError:  # the call ended; the reader reports how
                raise _errors.Unavailable("the session stream is closed") from None
        try:
            await self._call.done_writing()
        except asyncio.InvalidStateError:
            pass

    def _request(self, op: Op) -> svc.SessionRequest:
        rid = op.request_id
        if op.kind == "append":
            return svc.SessionRequest(request_id=rid, append=_convert.stream_append(op.offset, op.text, op.append))
        if op.kind == "complete":
            return svc.SessionRequest(request_id=rid, complete=_convert.stream_complete(op.completion))
        if op.kind == "suggest":
            return svc.SessionRequest(request_id=rid, suggest=_convert.stream_suggest(op.suggest))
        if op.kind == "rewind":
            return svc.SessionRequest(request_id=rid, rewind=svc.SessionRequest.Rewind(chars=op.chars))
        if op.kind == "reset":
            return svc.SessionRequest(request_id=rid, reset=svc.SessionRequest.Reset())
        if op.kind == "snapshot":
            return svc.SessionRequest(request_id=rid, snapshot=svc.SessionRequest.Snapshot())
        return svc.SessionRequest(request_id=rid, close=svc.SessionRequest.Close())

    async def _read(self, queue: OpQueue, inflight: Inflight, window: asyncio.Semaphore, ack: Ack, nack: Nack) -> None:
        def pop(op: Op) -> None:
            inflight.popleft()
            window.release()

        while True:
            resp = await self._call.read()
            if resp is aio.EOF:
                if inflight or not queue.closed:
                    raise _errors.Unavailable("the server ended the session stream")
                return
            # Answers come in request order; a completion ends where the next request's answers
            # begin (or when every alternative is done). Older ids are leftovers of a completion
            # already settled.
            while inflight and inflight[0].kind == "complete" and inflight[0].request_id < resp.request_id:
                op = inflight[0]
                pop(op)
                ack(op, None)
            if not inflight or resp.request_id < inflight[0].request_id:
                continue
            op = inflight[0]
            if resp.request_id != op.request_id:
                raise _errors.InternalError(f"answer to request {resp.request_id} while {op.request_id} was due")
            kind = resp.WhichOneof("result")
            if kind == "error":
                exc = _stream_error(resp.error)
                if moves_session(exc):
                    raise exc
                pop(op)
                nack(op, exc)
            elif kind == "completion_chunk":
                op.deliver(_convert.completion_chunk(resp.completion_chunk))
                if len(op.finished) >= op.alternatives:
                    pop(op)
                    ack(op, None)
            else:
                pop(op)
                ack(op, self._result(resp, kind))

    @staticmethod
    def _result(resp: svc.SessionResponse, kind: str | None) -> Prediction | int | bytes | list[Suggestion] | None:
        if kind == "prediction":
            return _convert.prediction(resp.prediction)
        if kind == "suggestions":
            return _convert.suggestions(resp.suggestions.suggestions)
        if kind == "rewound":
            return resp.rewound.position
        if kind == "reset":
            return resp.reset.position
        if kind == "snapshot":
            return resp.snapshot.blob
        return None  # closed
