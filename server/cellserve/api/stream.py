"""One bidirectional ``Session`` stream: a reader that submits each request to the engine as it
arrives, and a writer that sends the responses in request order.

The engine (``EngineClient``) applies a session's operations in the order they were submitted,
whatever their kind, so the stream needs no barriers of its own: the reader validates a request
and submits it at once (an error answers it in-band), keeping the awaitable of its outcome in a
deque; the writer awaits those outcomes one after the other, one future per request and
nothing else per request (no queue, semaphore or done-callback: the reader wakes a waiting
writer, the writer wakes a waiting reader, each through a future made only when one waits).
Appends typed faster than the round trip are all queued in the engine at once (and coalesced
there). At most ``MAX_IN_FLIGHT`` requests per stream are unanswered at a time (then the
reader waits, and HTTP/2 flow control pushes back on the client).

Open and attach are awaited by the reader itself: later requests need the session id.
A completion's chunks are written as they come; a later Append (or Rewind, Reset, Close)
submitted meanwhile cancels it in the engine, which ends its chunks, so the writer moves on.

When the stream ends or is cancelled, completions not fully written are cancelled; operations
already submitted still apply (exactly once) and are reported with their real outcome, or as
CANCELLED when it is not known yet. The session itself lives on (attach again, or it expires).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from ..config import Settings
from ..engine.client import CompletionStream, EngineClient
from ..engine.types import SessionInfo, Suggestion
from ..errors import CellserveError, InvalidInput, PreconditionFailed, Unavailable
from ..logs import user_text
from . import convert, validate
from .in_order import InOrder
from .malformed import RejectedRequest
from .pb import svc, types
from .recorder import NULL_RECORDER, Recorder, ResponseTimer, code_name, prediction_sent
from .status import status_of
from .stream_guard import ClientNotReading, UnreadBound
from .wire import AppendRequest, prediction_response

log = logging.getLogger("cellserve.api")

MAX_IN_FLIGHT = 64  # unanswered requests per stream; bounds the memory one client can pin
UNREAD_GRACE_S = 1.0  # past stream_max_unread, gRPC must take a response within this or the stream ends
ModelMessage = Callable[[str], Awaitable[types.ModelInfo]]

_METHODS: dict[str | None, str] = {}  # op -> "Session.<op>": built once per op, not per request


def _method(op: str | None) -> str:
    name = _METHODS.get(op)
    if name is None:  # op: a oneof name of the proto (or None), never client text
        name = _METHODS[op] = f"Session.{op or 'unset'}"
    return name


class _Reply:
    """One request until the writer has answered it: exactly one of ``error`` (refused before
    reaching the engine), ``outcome`` (the engine's awaitable; ``build(request_id, result)``
    turns its result into the response: a module function, no closure per request) or
    ``chunks`` (a completion) is set."""

    __slots__ = (
        "append_chars",
        "build",
        "chunks",
        "error",
        "method",
        "outcome",
        "received",
        "recorded",
        "request_id",
    )

    def __init__(self, request_id: int, op: str | None) -> None:
        self.request_id = request_id
        self.method = _method(op)
        self.received = time.perf_counter()
        self.append_chars = 0  # an append's characters (its keystroke kind), set when validated
        self.error: BaseException | None = None
        self.outcome: Awaitable[Any] | None = None
        self.build: Callable[[int, Any], svc.SessionResponse | bytes] | None = None
        self.chunks: CompletionStream | None = None
        self.recorded = False

    @property
    def ready(self) -> bool:
        """Its answer is known (a completion's chunks are not counted)."""
        outcome = self.outcome
        return self.error is not None or (isinstance(outcome, asyncio.Future) and outcome.done())


class SessionStream:
    def __init__(
        self,
        engine: EngineClient,
        settings: Settings,
        owner: str,
        model_msg: ModelMessage,
        recorder: Recorder = NULL_RECORDER,
        cut_off: Callable[[CellserveError], None] = lambda exc: None,
    ) -> None:
        self._engine = engine
        self._settings = settings
        self._owner = owner
        self._model_msg = model_msg
        self._recorder = recorder
        self._session_id: str | None = None
        self._model = ""  # the bound session's model: the keystroke-latency label
        self._unanswered: InOrder[_Reply] = InOrder(MAX_IN_FLIGHT)  # the head is being written
        self._reader: asyncio.Task[None] | None = None
        self._stop = False
        self._awaiting_input = False
        self.stopped_by_drain = False
        # The "client is not reading" cutoff (stream_guard): answers ready but not yet taken by
        # gRPC, counted by a timer armed only while more than the bound are unanswered; past
        # the bound, with no write finished for UNREAD_GRACE_S, ``cut_off`` ends the stream
        # (the servicer aborts the call); the session is kept.
        self._unread = UnreadBound(settings.stream_max_unread)
        self._cut_off = cut_off
        self._writing = False  # inside a yield: gRPC has not taken the response yet
        self._writes = 0  # responses taken by gRPC so far
        self._unread_timer: asyncio.TimerHandle | None = None
        self.cut: CellserveError | None = None

    def stop_reading(self) -> None:
        """Drain: read nothing more; what was read is still answered."""
        self._stop = self.stopped_by_drain = True
        if self._reader is not None and self._awaiting_input:
            self._reader.cancel()

    # --- the writer ------------------------------------------------------------------------

    async def run(
        self, requests: AsyncIterator[svc.SessionRequest], live: set[SessionStream] | None = None
    ) -> AsyncIterator[svc.SessionResponse | bytes]:
        """The stream's responses (an Append's answer serialized already: ``wire``), for
        ``requests`` as the Session method's deserializer reads them (a plain Append as a
        ``wire.AppendRequest``). It is in ``live`` (the server's open streams, stopped on drain)
        while it runs. Stopped by drain, it ends with UNAVAILABLE once it has answered what it
        read."""
        self._reader = asyncio.create_task(self._read(requests))
        unanswered = self._unanswered
        if live is not None:
            live.add(self)
        try:
            while (reply := await unanswered.head()) is not None:
                if reply.chunks is not None:
                    async for response in self._relay(reply, reply.chunks):
                        self._writing = True
                        yield response
                        self._written()
                else:  # every keystroke: the answer awaited here, not in a coroutine of its own
                    if reply.error is None:
                        assert reply.outcome is not None  # not a completion, not refused
                        try:
                            result = await reply.outcome
                        except asyncio.CancelledError:
                            raise
                        except Exception as exc:  # noqa: BLE001 (answered in-band; status_of logs the unexpected)
                            reply.error = exc
                    if reply.error is None:
                        assert reply.build is not None
                        self._record(reply, "OK")
                        response = reply.build(reply.request_id, result)
                    else:
                        response = self._error(reply, reply.error)
                    self._writing = True
                    yield response
                    self._written()
                    # Resumed once grpc has written the response: the client-visible latency,
                    # including any wait behind earlier requests' responses on this stream.
                    if reply.append_chars and reply.error is None:
                        prediction_sent(self._recorder, self._model, reply.received, reply.append_chars)
                unanswered.pop()
            await self._reader  # re-raises a reader failure (not a clean end of input)
        finally:
            if live is not None:
                live.discard(self)
            if self._unread_timer is not None:
                self._unread_timer.cancel()
            await self._abandon()
        if self.stopped_by_drain:
            raise Unavailable("the server is shutting down; attach or resume the session elsewhere")

    def _written(self) -> None:
        self._writing = False
        self._writes += 1

    def _arm_unread_timer(self) -> None:
        loop = asyncio.get_running_loop()
        self._unread_timer = loop.call_later(UNREAD_GRACE_S, self._unread_deadline, self._writes)

    def _unread_deadline(self, writes_then: int) -> None:
        self._unread_timer = None
        if self.cut is not None:
            return
        # ready but not taken (the head's included while gRPC holds its response)
        self._unread.unread = sum(1 for r in self._unanswered if r.ready)
        if self._unread.unread > self._unread.bound and self._writing and self._writes == writes_then:
            self.cut = ClientNotReading(self._unread.bound)  # gRPC took nothing in the grace
            self._stop = True
            self._cut_off(self.cut)
        elif len(self._unanswered) > self._unread.bound:  # slow, but reading: look again later
            self._arm_unread_timer()

    async def _relay(self, reply: _Reply, chunks: CompletionStream) -> AsyncIterator[svc.SessionResponse]:
        timer = ResponseTimer(self._recorder, self._model, reply.received)
        reply.chunks = None  # written here from now on; closed by the finally below
        try:
            async for chunk in chunks:
                yield svc.SessionResponse(request_id=reply.request_id, completion_chunk=convert.completion_chunk(chunk))
                timer.chunk_sent(chunk.alternative, len(chunk.text))  # resumed once grpc has written it
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 (answered in-band; status_of logs the unexpected)
            yield self._error(reply, exc)
        else:
            self._record(reply, "OK")
        finally:
            await chunks.aclose()  # a cancelled stream stops the completion now, not at collection

    def _error(self, reply: _Reply, exc: BaseException) -> svc.SessionResponse:
        st = status_of(exc, "/cellserve.v1.CellserveService/Session")
        err = svc.SessionResponse.Error(code=st.code.value[0], message=st.message, retry_after_ms=st.retry_after_ms)
        if st.expected_offset is not None:
            err.expected_offset = st.expected_offset
        self._record(reply, code_name(st.code))
        return svc.SessionResponse(request_id=reply.request_id, error=err)

    def _record(self, reply: _Reply, code: str) -> None:
        if not reply.recorded:
            reply.recorded = True
            self._recorder.request(reply.method, code)

    async def _abandon(self) -> None:
        """The stream ended: report what was submitted but never written, stop the reader and
        cancel completions nobody will read."""
        reader = self._reader
        if reader is not None and not reader.done():
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        while self._unanswered:
            reply = self._unanswered.pop()
            if reply.recorded:
                continue
            outcome = reply.outcome
            if reply.chunks is not None:
                await reply.chunks.aclose()
                self._record(reply, "CANCELLED")
            elif reply.error is not None:
                self._error(reply, reply.error)
            elif isinstance(outcome, asyncio.Future) and outcome.done() and not outcome.cancelled():
                exc = outcome.exception()
                if exc is not None:
                    self._error(reply, exc)
                else:
                    self._record(reply, "OK")
            else:
                self._record(reply, "CANCELLED")

    # --- the reader ------------------------------------------------------------------------

    async def _read(self, requests: AsyncIterator[svc.SessionRequest]) -> None:
        it = aiter(requests)
        try:
            while not self._stop:
                self._awaiting_input = True
                try:
                    request = await anext(it)
                except StopAsyncIteration:
                    break
                finally:
                    self._awaiting_input = False
                if self._unanswered.full():
                    await self._unanswered.room()
                op = "append" if type(request) is AppendRequest else request.WhichOneof("op")
                reply = _Reply(request.request_id, op)
                try:
                    if isinstance(request, RejectedRequest):  # undecodable, or over the tenant's quota
                        raise request.error
                    if op in ("open", "attach"):
                        await self._bind(request, reply)
                    else:
                        self._submit(op, request, reply)
                except Exception as exc:  # noqa: BLE001 (validation errors; status_of logs anything unexpected)
                    reply.error = exc
                self._unanswered.put(reply)
                if len(self._unanswered) > self._unread.bound and self._unread_timer is None and self.cut is None:
                    self._arm_unread_timer()
        except asyncio.CancelledError:
            if not self._stop:
                raise
        finally:
            self._unanswered.close()

    async def _bind(self, request: svc.SessionRequest, reply: _Reply) -> None:
        if self._session_id is not None:
            raise PreconditionFailed("this stream already has a session; open another stream for another session")
        if request.HasField("open"):
            info = await self._engine.open_session(
                self._owner, validate.model_name(request.open.model), memory=not request.open.no_memory
            )
        else:
            info = await self._engine.get_session(self._owner, validate.session_id(request.attach.session_id))
        self._session_id = info.session_id
        self._model = info.model
        opened = svc.SessionResponse.Opened(session=convert.session_info(info), model=await self._model_msg(info.model))
        reply.outcome = _done(opened)
        reply.build = _opened_response

    def _submit(self, op: str | None, request: svc.SessionRequest, reply: _Reply) -> None:
        """Validates synchronously and submits the operation to the engine."""
        if op is None:
            raise InvalidInput("request has no operation: set one of open, attach, append, complete, ...")
        if self._session_id is None:
            raise InvalidInput("no session on this stream yet: the first request must be open or attach")
        engine, owner, sid = self._engine, self._owner, self._session_id
        if op == "append":
            if type(request) is AppendRequest:  # every keystroke: read in C (api/wire.py)
                offset = request.offset
                text = validate.text_within_limit(request.text, "append.input", self._settings)
                options = validate.options_of(
                    request.top_k,
                    request.want_logprobs,
                    request.want_gates,
                    request.only_last,
                    not request.no_memory,
                    self._settings,
                )
            else:
                msg = request.append
                offset = msg.offset
                text = validate.input_text(msg.input if msg.HasField("input") else None, "append.input", self._settings)
                options = validate.append_options(msg, self._settings, only_last=msg.only_last)
            reply.append_chars = len(text)
            if log.isEnabledFor(logging.DEBUG):  # user_text is not free
                log.debug("stream append %d at %d: %s", reply.request_id, offset, user_text(text, self._settings))
            reply.outcome = engine.append(owner, sid, offset, text, options)
            reply.build = prediction_response
        elif op == "complete":
            req = validate.completion_request(request.complete, self._settings)
            # The tenant's completion quota is counted by the core (CapacityExceeded answers in-band).
            reply.chunks = engine.complete(owner, sid, req)
        elif op == "suggest":
            reply.outcome = engine.suggest(owner, sid, validate.suggest_request(request.suggest))
            reply.build = _suggestions_response
        elif op == "rewind":
            reply.outcome = engine.rewind(owner, sid, request.rewind.chars)
            reply.build = _rewound_response
        elif op == "reset":
            reply.outcome = engine.reset(owner, sid)
            reply.build = _reset_response
        elif op == "snapshot":
            reply.outcome = engine.snapshot(owner, sid)
            reply.build = _snapshot_response
        elif op == "close":
            reply.outcome = engine.close_session(owner, sid)
            reply.build = _closed_response
        else:  # a new op in the proto this server does not know yet
            raise InvalidInput(f"operation {op!r} is not supported by this server")


# ---- each operation's response from its outcome (``_Reply.build``; an Append's: wire.py) ---------
def _opened_response(request_id: int, opened: svc.SessionResponse.Opened) -> svc.SessionResponse:
    return svc.SessionResponse(request_id=request_id, opened=opened)


def _suggestions_response(request_id: int, items: list[Suggestion]) -> svc.SessionResponse:
    suggestions = svc.SessionResponse.Suggestions(suggestions=convert.suggestions(items))
    return svc.SessionResponse(request_id=request_id, suggestions=suggestions)


def _rewound_response(request_id: int, info: SessionInfo) -> svc.SessionResponse:
    return svc.SessionResponse(request_id=request_id, rewound=svc.SessionResponse.Rewound(position=info.position))


def _reset_response(request_id: int, info: SessionInfo) -> svc.SessionResponse:
    return svc.SessionResponse(request_id=request_id, reset=svc.SessionResponse.Reset(position=info.position))


def _snapshot_response(request_id: int, blob: bytes) -> svc.SessionResponse:
    return svc.SessionResponse(request_id=request_id, snapshot=svc.SessionResponse.Snapshot(blob=blob))


def _closed_response(request_id: int, _: None) -> svc.SessionResponse:
    return svc.SessionResponse(request_id=request_id, closed=svc.SessionResponse.Closed())


def _done(value: Any) -> asyncio.Future[Any]:
    fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    fut.set_result(value)
    return fut
