"""``ZmqEngineClient``: the ``EngineClient`` of a frontend process, talking to the engine core.

Every call is submitted when made, as the protocol says: it gets a call number and a future,
and its operation joins the unsent list, sent as one ``ToCore`` message once the
event loop has run everything that was ready (``call_soon``), so what one loop pass gathered
crosses in one message, in call order. The core applies each session's operations in the
order it receives them, so one frontend's order is kept end to end.

Cancelling the awaiting task does not withdraw anything (the operation is unsent or
already sent); the answer, when it comes, is dropped. A completion is withdrawn by closing its
stream (``CloseCompletion``).

The API layer's metric events (``ForwardingRecorder``) ride along in the same messages, so the
core's one ``/metrics`` endpoint counts every frontend's requests.

The socket is a plain ZMQ socket whose ZMQ_FD the event loop watches (``_read`` empties it);
sends never wait (a full queue refuses, see ``_refuse``).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import msgspec
import zmq

from ..engine.admission import Limits
from ..engine.client import DEFAULT_OPTIONS
from ..engine.types import (
    AppendOptions,
    CompletionChunk,
    CompletionRequest,
    EngineHealth,
    EngineStats,
    ModelInfo,
    Prediction,
    SessionInfo,
    Suggestion,
    SuggestRequest,
)
from ..errors import CapacityExceeded, Unavailable
from ..gate_report import GateQuery, GateReport
from ..handoff.record import HandoffRecord
from . import messages as m
from .ratelimit import RateLimitedLog

log = logging.getLogger("cellserve.frontend")
T = TypeVar("T")

CORE_GONE = "the engine is unavailable; retry on another replica"
CALL_DEADLINE_S = 120.0  # the default bound on one call across the socket (see Settings)
SEND_QUEUE_MESSAGES = 1024  # the default bound on messages queued for the core (see Settings)
CORE_BUSY = "the engine core is not keeping up (its queue from this frontend is full); retry shortly"
BUSY_RETRY_S = 0.2
STOP_LINGER_MS = 500
_DECODERS: dict[Any, msgspec.msgpack.Decoder[Any]] = {}


def _decoder(tp: Any) -> msgspec.msgpack.Decoder[Any]:
    d = _DECODERS.get(tp)
    if d is None:
        d = _DECODERS[tp] = msgspec.msgpack.Decoder(tp)
    return d


class ForwardingRecorder:
    """A ``Recorder`` that keeps the API layer's events until the next message to the core."""

    # Undecodable requests are counted and logged by the core, rate-limited once for every
    # frontend together: this frontend does not log them itself.
    logs_malformed_elsewhere = True

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str], int] = {}
        self.keystrokes: list[tuple[str, str, float]] = []
        self.malformed_counts: dict[str, int] = {}

    def request(self, method: str, code: str) -> None:
        key = (method, code)
        self.requests[key] = self.requests.get(key, 0) + 1

    def keystroke(self, model: str, kind: str, seconds: float) -> None:
        self.keystrokes.append((model, kind, seconds))

    def malformed(self, method: str) -> None:
        self.malformed_counts[method] = self.malformed_counts.get(method, 0) + 1

    def message(self, ops: list[m.Op]) -> m.ToCore:
        """``ops`` and the events gathered since the last message (taken: they go once)."""
        requests = [(a, b, n) for (a, b), n in self.requests.items()]
        malformed = list(self.malformed_counts.items())
        message = m.ToCore(ops, requests, self.keystrokes, malformed)
        self.requests, self.keystrokes, self.malformed_counts = {}, [], {}
        return message

    def restore(self, message: m.ToCore) -> None:
        """The events of a ``message`` that was not sent: they go with the next one."""
        for method, code, n in message.requests:
            self.requests[(method, code)] = self.requests.get((method, code), 0) + n
        self.keystrokes[:0] = message.keystrokes
        for method, n in message.malformed:
            self.malformed_counts[method] = self.malformed_counts.get(method, 0) + n


class _Completion:
    """The chunk stream of one completion, fed by the client's reader."""

    def __init__(self, client: ZmqEngineClient, call_id: int) -> None:
        self._client = client
        self._id = call_id
        self.queue: asyncio.Queue[m.Chunk | m.End | m.Err] = asyncio.Queue()
        self._finished = False

    def __aiter__(self) -> _Completion:
        return self

    async def __anext__(self) -> CompletionChunk:
        if self._finished:
            raise StopAsyncIteration
        item = await self.queue.get()
        if isinstance(item, m.Chunk):
            return CompletionChunk(item.alternative, item.text, item.done, item.finish_reason)
        self._finish()
        if isinstance(item, m.Err):
            raise m.error_of(item)
        raise StopAsyncIteration

    def _finish(self) -> None:
        self._finished = True
        self._client._streams.pop(self._id, None)
        self._client._check_idle()

    async def aclose(self) -> None:
        if not self._finished:
            self._finish()
            self._client._send(m.CloseCompletion(self._id))


class ZmqEngineClient:
    """Implements ``cellserve.engine.client.EngineClient`` over the core's ROUTER socket."""

    def __init__(
        self,
        address: str,
        frontend: int,
        recorder: ForwardingRecorder | None = None,
        call_deadline_s: float = CALL_DEADLINE_S,
        send_queue_messages: int = SEND_QUEUE_MESSAGES,
    ) -> None:
        """``call_deadline_s``: a call the core has not answered by then fails UNAVAILABLE
        (its caller retries elsewhere) instead of waiting forever."""
        self._address = address
        self._deadline_s = call_deadline_s
        self._send_hwm = send_queue_messages
        # (deadline, call id) in call order: deadlines only grow, so one timer at the head
        self._deadlines: collections.deque[tuple[float, int]] = collections.deque()
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._identity = f"{frontend}:{os.getpid()}".encode()
        self.recorder = recorder or ForwardingRecorder()
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[asyncio.Future[Any], msgspec.msgpack.Decoder[Any]]] = {}
        self._streams: dict[int, _Completion] = {}
        self._unsent: list[m.Op] = []
        self._flush_scheduled = False
        self._ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self._sock: zmq.Socket[bytes] | None = None
        self._fd = -1  # the socket's ZMQ_FD, watched by the loop while the socket is open
        self._draining = False
        self._lost = False
        self._idle = asyncio.Event()
        self._bad = RateLimitedLog(log, "dropped a malformed message from the engine core")

    # ---- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        if self._sock is not None:
            return
        # A plain socket, its ZMQ_FD watched by the loop (not pyzmq's asyncio socket, whose
        # every send makes a future and schedules an extra pass that reads ZMQ_EVENTS again).
        self._ctx = zmq.Context()
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, self._identity)
        sock.setsockopt(zmq.LINGER, 0)
        # bounded: a core that does not keep up makes new calls fail RESOURCE_EXHAUSTED (see
        # _flush) instead of growing a queue without end
        sock.setsockopt(zmq.SNDHWM, self._send_hwm)
        # bounded too: answers this frontend does not read in time are refused by the core
        # (RESOURCE_EXHAUSTED, see core_server) instead of piling up here
        sock.setsockopt(zmq.RCVHWM, self._send_hwm)
        sock.connect(self._address)
        self._sock = sock
        loop = asyncio.get_running_loop()
        self._fd = cast(int, sock.getsockopt(zmq.FD))
        loop.add_reader(self._fd, self._read)
        loop.call_soon(self._read)

    async def drain(self) -> None:
        """This frontend takes no new sessions; returns once its own calls and completions are
        answered (the core and other frontends go on)."""
        self._draining = True
        self._check_idle()
        await self._idle.wait()

    async def stop(self) -> None:
        if self._fd >= 0:
            asyncio.get_running_loop().remove_reader(self._fd)
            self._fd = -1
        # What was sent last (the final metric events) may still be queued: give it a moment,
        # unless the core is known to be gone.
        linger_ms = 0 if self._lost else STOP_LINGER_MS
        self.core_lost()
        if self._sock is not None:
            self._sock.close(linger=linger_ms)
            self._sock = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    def core_lost(self) -> None:
        """The core is gone: every open call and completion fails with UNAVAILABLE, and so does
        every later one."""
        self._lost = True
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        self._deadlines.clear()
        pending, self._pending = self._pending, {}
        for fut, _ in pending.values():
            if not fut.done():
                fut.set_exception(Unavailable(CORE_GONE))
        streams, self._streams = self._streams, {}
        for stream in streams.values():
            stream.queue.put_nowait(m.Err(0, Unavailable.code, CORE_GONE))
        self._check_idle()

    @property
    def connected(self) -> bool:
        return self._sock is not None and not self._lost

    # ---- queries ----------------------------------------------------------------------------
    def models(self, owner: str) -> Awaitable[list[ModelInfo]]:
        return self._call(lambda i: m.Models(i, owner), list[ModelInfo])

    def get_session(self, owner: str, session_id: str) -> Awaitable[SessionInfo]:
        return self._call(lambda i: m.GetSession(i, owner, session_id), SessionInfo)

    def health(self, owner: str) -> Awaitable[EngineHealth]:
        return self._call(lambda i: m.Health(i, owner), EngineHealth)

    def stats(self, owner: str) -> Awaitable[EngineStats]:
        return self._call(lambda i: m.Stats(i, owner), EngineStats)

    def tokens(self, force: bool) -> Awaitable[bytes]:
        """The tokens file as the core last read it with success (see ``multiproc.tokens``)."""
        return self._call(lambda i: m.Tokens(i, force), bytes)

    def inspect_gates(self, query: GateQuery) -> Awaitable[GateReport]:
        """InspectGates, run by the core (which holds the weights)."""
        return self._call(lambda i: m.InspectGates(i, query), GateReport)

    # ---- admission (held by the core: engine/admission.py) -----------------------------------
    def set_limits(self, owner: str, limits: Limits) -> None:
        if not self._lost and self._sock is not None:
            self._send(m.SetLimits(0, owner, limits))

    def open_stream(self, owner: str) -> Awaitable[int]:
        return self._call(lambda i: m.OpenStream(i, owner), int)

    def close_stream(self, owner: str, lease: int) -> None:
        if not self._lost and self._sock is not None:
            self._send(m.CloseStream(0, owner, lease))

    def bind_sequence(self, owner: str, model: str, seq: str, session_id: str) -> Awaitable[str | None]:
        return self._call(lambda i: m.BindSequence(i, owner, model, seq, session_id), str | None)

    def find_sequence(self, owner: str, model: str, seq: str) -> Awaitable[SessionInfo]:
        return self._call(lambda i: m.FindSequence(i, owner, model, seq), SessionInfo)

    def forget_sequence(self, owner: str, model: str, seq: str, session_id: str) -> None:
        if not self._lost and self._sock is not None:
            self._send(m.ForgetSequence(0, owner, model, seq, session_id))

    # ---- session operations -----------------------------------------------------------------
    def open_session(
        self, owner: str, model: str | None = None, memory: bool = True, sequence: str = ""
    ) -> Awaitable[SessionInfo]:
        if self._draining:
            return _failed(Unavailable("the server is shutting down; connect to another replica"))
        return self._call(lambda i: m.Open(i, owner, model, memory), SessionInfo)

    def append(
        self, owner: str, session_id: str, offset: int, text: str, options: AppendOptions = DEFAULT_OPTIONS
    ) -> Awaitable[Prediction]:
        return self._call(lambda i: m.Append(i, owner, session_id, offset, text, options), Prediction)

    def rewind(self, owner: str, session_id: str, chars: int) -> Awaitable[SessionInfo]:
        return self._call(lambda i: m.Rewind(i, owner, session_id, chars), SessionInfo)

    def reset(self, owner: str, session_id: str) -> Awaitable[SessionInfo]:
        return self._call(lambda i: m.Reset(i, owner, session_id), SessionInfo)

    def snapshot(self, owner: str, session_id: str) -> Awaitable[bytes]:
        return self._call(lambda i: m.Snapshot(i, owner, session_id), bytes)

    def resume(
        self, owner: str, blob: bytes, replay: str = "", options: AppendOptions = DEFAULT_OPTIONS
    ) -> Awaitable[tuple[SessionInfo, Prediction | None]]:
        if self._draining:
            return _failed(Unavailable("the server is shutting down; connect to another replica"))
        return self._call(lambda i: m.Resume(i, owner, blob, replay, options), tuple[SessionInfo, Prediction | None])

    def complete(self, owner: str, session_id: str, request: CompletionRequest) -> _Completion:
        call_id = next(self._ids)
        stream = _Completion(self, call_id)
        if self._lost:
            stream.queue.put_nowait(m.Err(call_id, Unavailable.code, CORE_GONE))
            return stream
        self._streams[call_id] = stream
        self._send(m.Complete(call_id, owner, session_id, request))
        return stream

    def suggest(self, owner: str, session_id: str, request: SuggestRequest) -> Awaitable[list[Suggestion]]:
        return self._call(lambda i: m.Suggest(i, owner, session_id, request), list[Suggestion])

    def close_session(self, owner: str, session_id: str) -> Awaitable[None]:
        return self._call(lambda i: m.Close(i, owner, session_id), None)

    # ---- the wire ---------------------------------------------------------------------------
    # ---- handoff (cellserve.handoff.coordinator.HandoffEngine) -----------------------------
    def export_sessions(self, idle_s: float | None, move: bool = False) -> Awaitable[list[HandoffRecord]]:
        return self._call(lambda i: m.Export(i, idle_s, move), list[HandoffRecord])

    def adopt(self, owner: str, record: HandoffRecord) -> Awaitable[SessionInfo]:
        return self._call(lambda i: m.Adopt(i, owner, record), SessionInfo)

    def _call(self, make: Callable[[int], m.Op], result_type: Any) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self._lost or self._sock is None:
            fut.set_exception(Unavailable(CORE_GONE))
            return fut
        call_id = next(self._ids)
        self._pending[call_id] = (fut, _decoder(result_type))
        loop = asyncio.get_running_loop()
        self._deadlines.append((loop.time() + self._deadline_s, call_id))
        if self._deadline_timer is None:
            self._deadline_timer = loop.call_at(self._deadlines[0][0], self._expire_calls)
        self._idle.clear()
        self._send(make(call_id))
        return fut

    def _expire_calls(self) -> None:
        """Fails the calls past their deadline; re-arms itself at the next one still open."""
        self._deadline_timer = None
        loop = asyncio.get_running_loop()
        now, deadlines = loop.time(), self._deadlines
        while deadlines and (deadlines[0][0] <= now or deadlines[0][1] not in self._pending):
            _, call_id = deadlines.popleft()
            entry = self._pending.pop(call_id, None)
            if entry is not None and not entry[0].done():
                entry[0].set_exception(Unavailable(f"the engine did not answer within {self._deadline_s:g} s; retry"))
        if deadlines:
            self._deadline_timer = loop.call_at(deadlines[0][0], self._expire_calls)
        self._check_idle()

    def _send(self, op: m.Op) -> None:
        self._unsent.append(op)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        ops, self._unsent = self._unsent, []
        if self._sock is None or self._lost or not ops:
            return
        try:
            self._sock.send(m.encode(self.recorder.message(ops)), zmq.NOBLOCK)
        except zmq.ZMQError as error:
            self._refuse(ops, error)
        self._after_send()

    def _after_send(self) -> None:
        """A send may take the socket's pending-input signal (ZMQ_FD is edge-like: it fires
        once per change, and any socket call may consume it), so look at ZMQ_EVENTS now."""
        if self._sock is not None and cast(int, self._sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
            asyncio.get_running_loop().call_soon(self._read)

    def _refuse(self, ops: list[m.Op], error: BaseException) -> None:
        """A batch the socket would not take (its queue to the core is full, or it failed):
        every call in it that someone waits for fails now, RESOURCE_EXHAUSTED with a retry
        hint; the rest (cancellations) goes out with the next batch."""
        if isinstance(error, zmq.Again):
            refusal: Exception = CapacityExceeded(CORE_BUSY, retry_after_s=BUSY_RETRY_S)
            err = m.Err(0, CapacityExceeded.code, CORE_BUSY, retry_after_s=BUSY_RETRY_S)
        else:
            log.error("sending to the engine core failed", exc_info=error)
            refusal, err = Unavailable(CORE_GONE), m.Err(0, Unavailable.code, CORE_GONE)
        kept: list[m.Op] = []
        for op in ops:
            entry = self._pending.pop(op.id, None)
            stream = self._streams.pop(op.id, None) if entry is None else None
            if entry is not None:
                if not entry[0].done():
                    entry[0].set_exception(refusal)
            elif stream is not None:
                stream.queue.put_nowait(err)
            else:
                kept.append(op)
        if kept:
            self._unsent = kept + self._unsent
            if not self._flush_scheduled:
                self._flush_scheduled = True
                asyncio.get_running_loop().call_later(BUSY_RETRY_S, self._flush)
        self._check_idle()

    def flush_metrics(self) -> None:
        """Sends the metric events gathered so far even when no call is waiting to go."""
        if self._sock is None or self._lost or self._unsent:
            return
        message = self.recorder.message([])
        if message.requests or message.keystrokes or message.malformed:
            try:
                self._sock.send(m.encode(message), zmq.NOBLOCK)
            except zmq.ZMQError:  # the queue to the core is full: they go with the next message
                self.recorder.restore(message)
            self._after_send()

    def _read(self) -> None:
        """Everything the core sent so far (the loop calls this when ZMQ_FD is readable): read
        until the socket has nothing, which also re-arms ZMQ_FD."""
        while (sock := self._sock) is not None:
            try:
                data = sock.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                message = m.to_frontend_decoder.decode(data.buffer)
            except msgspec.DecodeError:
                self._bad.warning()
                continue
            for reply in message.replies:
                self._deliver(reply)

    def _deliver(self, reply: m.Reply) -> None:
        if isinstance(reply, (m.Ok, m.Err)):
            entry = self._pending.pop(reply.id, None)
            deadlines = self._deadlines
            while deadlines and deadlines[0][1] not in self._pending:  # answered: in order, mostly
                deadlines.popleft()
            if entry is None:
                stream = self._streams.get(reply.id)
                if stream is not None and isinstance(reply, m.Err):
                    stream.queue.put_nowait(reply)
                return
            fut, decoder = entry
            if not fut.done():  # the caller may have been cancelled: the answer is dropped
                if isinstance(reply, m.Err):
                    fut.set_exception(m.error_of(reply))
                else:
                    try:
                        fut.set_result(decoder.decode(reply.value))
                    except msgspec.DecodeError:
                        self._bad.warning()
                        fut.set_exception(m.CoreFailure("the engine core sent a malformed answer"))
            self._check_idle()
        else:
            stream = self._streams.get(reply.id)
            if stream is not None:
                stream.queue.put_nowait(reply)

    def _check_idle(self) -> None:
        if not self._pending and not self._streams:
            self._idle.set()


def _failed(e: BaseException) -> asyncio.Future[Any]:
    fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    fut.set_exception(e)
    return fut
