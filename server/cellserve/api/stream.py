"""One bidirectional ``Session`` stream: read requests, run them against the Engine, write the
responses in request order.

Pipelining: the reader never waits for the engine. An append (the per-keystroke request) is
queued in the engine by the reader itself (``Engine.submit_append``) and the writer awaits its
future: no task or queue per keystroke, which is most of this layer's cost per request. So
appends typed faster than the round trip are all queued in the engine at once (and coalesced
there); at most ``MAX_IN_FLIGHT`` requests per stream are unanswered at a time (then the reader
waits, and HTTP/2 flow control pushes back on the client).

Ordering: the writer sends each request's responses completely before the next request's, so
responses come in request order. Appends are started in request order without waiting for each
other, while every other operation (rewind, reset, snapshot, close, complete) is a barrier: it
starts after every earlier append has been answered, and later requests start after it (for a
completion: after it has forked the session's state). Barriers, and whatever is read while one
is pending, go through one submitter task per stream, each request as a task of its own.

A failed request is answered with an in-band Error (mapped by ``status.status_of``) and the
stream goes on. When the stream ends or is cancelled, its running tasks (and so its running
completions) are cancelled; the session itself lives on (attach again, or it expires).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..config import Settings
from ..engine.types import AppendOptions, CompletionChunk, Prediction
from ..errors import InvalidInput, PreconditionFailed
from ..logs import user_text
from . import convert, validate
from .auth import completion_lease
from .malformed import RejectedRequest
from .pb import svc, types
from .quota import Lease
from .recorder import APPEND_MULTI, APPEND_SINGLE, NULL_RECORDER, Recorder, ResponseTimer, code_name
from .status import status_of

if TYPE_CHECKING:
    from ..engine.engine import Engine

log = logging.getLogger("cellserve.api")

MAX_IN_FLIGHT = 64  # unanswered requests per stream; bounds the memory one client can pin
Job = Callable[["_Reply"], Awaitable[None]]


_METHODS: dict[str | None, str] = {}  # op -> "Session.<op>": built once per op, not per request


def _method(op: str | None) -> str:
    name = _METHODS.get(op)
    if name is None:  # op: a oneof name of the proto (or None), never client text
        name = _METHODS[op] = f"Session.{op or 'unset'}"
    return name


class _Reply:
    """The responses to one request, until the writer reaches this request: either the engine
    future of an append started directly (``prediction``), or a queue that the request's task
    fills. It reports the request's outcome once (``Session.<op>`` and OK or the error's code)."""

    __slots__ = (
        "_code", "_queue", "_recorder", "append_chars", "handed_off", "method", "prediction", "received",
        "recorded", "request_id",
    )  # fmt: skip

    def __init__(self, request_id: int, op: str | None, recorder: Recorder) -> None:
        self.request_id = request_id
        self.method = _method(op)
        self.received = time.perf_counter()
        self.append_chars = 0  # an append's characters (its keystroke kind), set when validated
        self.handed_off = False  # True: a task of its own finishes it (completions)
        self.prediction: asyncio.Future[Prediction] | None = None  # a directly started append
        self.recorded = False
        self._recorder = recorder
        self._code = "OK"
        self._queue: asyncio.Queue[svc.SessionResponse | None] | None = None

    @property
    def queue(self) -> asyncio.Queue[svc.SessionResponse | None]:
        if self._queue is None:  # only requests answered from a task need one
            self._queue = asyncio.Queue()
        return self._queue

    def send(self, **result: Any) -> None:
        self.queue.put_nowait(svc.SessionResponse(request_id=self.request_id, **result))

    def error(self, exc: BaseException) -> svc.SessionResponse:
        st = status_of(exc, "/cellserve.v1.CellserveService/Session")
        err = svc.SessionResponse.Error(code=st.code.value[0], message=st.message, retry_after_ms=st.retry_after_ms)
        if st.expected_offset is not None:
            err.expected_offset = st.expected_offset
        self._code = code_name(st.code)
        return svc.SessionResponse(request_id=self.request_id, error=err)

    def fail(self, exc: BaseException) -> None:
        self.queue.put_nowait(self.error(exc))

    def record(self) -> None:
        self.recorded = True
        self._recorder.request(self.method, self._code)

    def finish(self) -> None:
        self.record()
        self.queue.put_nowait(None)

    def cancelled(self) -> None:
        """The stream ended before this request was answered."""
        self.recorded = True
        self._recorder.request(self.method, "CANCELLED")

    async def responses(self) -> AsyncIterator[svc.SessionResponse]:
        queue = self.queue
        while (item := await queue.get()) is not None:
            yield item


class SessionStream:
    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        owner: str,
        model_msg: Callable[[str], types.ModelInfo],
        recorder: Recorder = NULL_RECORDER,
    ) -> None:
        self._engine = engine
        self._settings = settings
        self._owner = owner
        self._model_msg = model_msg
        self._recorder = recorder
        self._session_id: str | None = None
        self._model = ""  # the bound session's model: the keystroke-latency label
        self._outbox: asyncio.Queue[_Reply | None] = asyncio.Queue()
        self._window = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._tasks: set[asyncio.Task[None]] = set()
        self._jobs: asyncio.Queue[tuple[Job, _Reply, bool] | None] = asyncio.Queue()  # for the submitter
        self._backlog = 0  # jobs given to the submitter and not yet started (barriers: not done)
        self._appends: list[asyncio.Future[Prediction]] = []  # started appends a barrier waits for
        self._reader: asyncio.Task[None] | None = None
        self._stop = False
        self._awaiting_input = False
        self.stopped_by_drain = False

    def stop_reading(self) -> None:
        """Drain: read nothing more; what was read is still answered."""
        self._stop = self.stopped_by_drain = True
        if self._reader is not None and self._awaiting_input:
            self._reader.cancel()

    async def run(self, requests: AsyncIterator[svc.SessionRequest]) -> AsyncIterator[svc.SessionResponse]:
        self._reader = asyncio.create_task(self._read(requests))
        self._track(asyncio.create_task(self._submit()))
        reply: _Reply | None = None
        try:
            while (reply := await self._outbox.get()) is not None:
                if reply.prediction is not None:
                    yield await self._answer(reply, reply.prediction)
                    # Resumed once grpc has written the response: the client-visible latency,
                    # including any wait behind earlier requests' responses on this stream.
                    if reply._code == "OK":
                        self._recorder.keystroke(
                            self._model,
                            APPEND_SINGLE if reply.append_chars == 1 else APPEND_MULTI,
                            time.perf_counter() - reply.received,
                        )
                else:
                    timer = ResponseTimer(self._recorder, self._model, reply.received)
                    async for response in reply.responses():
                        yield response
                        self._timed(timer, reply, response)
                self._window.release()
            await self._reader  # re-raises a reader failure (not a clean end of input)
        finally:
            # Appends started directly that were never answered: the engine still applies them
            # (exactly once), but their outcome is reported here, as a task's would have been.
            while reply is not None:
                fut = reply.prediction
                if fut is not None and not reply.recorded:
                    if fut.done() and not fut.cancelled():
                        if fut.exception() is not None:
                            reply.error(fut.exception())  # type: ignore[arg-type]
                        reply.record()
                    else:
                        reply.cancelled()
                reply = self._outbox.get_nowait() if not self._outbox.empty() else None
            pending = [t for t in (self._reader, *self._tasks) if not t.done()]
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    @staticmethod
    async def _answer(reply: _Reply, fut: asyncio.Future[Prediction]) -> svc.SessionResponse:
        """The response to a directly started append, once its engine future is done."""
        if not fut.done():
            try:
                await asyncio.shield(fut)  # shield: the future is the engine's, never cancel it
            except Exception:  # noqa: BLE001 (read from the future below)
                pass
        exc = fut.exception()
        response = (
            reply.error(exc)
            if exc is not None
            else svc.SessionResponse(request_id=reply.request_id, prediction=convert.prediction(fut.result()))
        )
        reply.record()
        return response

    @staticmethod
    def _timed(timer: ResponseTimer, reply: _Reply, response: svc.SessionResponse) -> None:
        kind = response.WhichOneof("result")
        if kind == "prediction":
            timer.prediction_sent(reply.append_chars)
        elif kind == "completion_chunk":
            timer.chunk_sent(response.completion_chunk.alternative, len(response.completion_chunk.text))

    # --- reading ---------------------------------------------------------------------------

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
                await self._window.acquire()
                op = request.WhichOneof("op")
                reply = _Reply(request.request_id, op, self._recorder)
                self._outbox.put_nowait(reply)
                self._dispatch(op, request, reply)
        except asyncio.CancelledError:
            if not self._stop:
                raise
        finally:
            self._jobs.put_nowait(None)
            self._outbox.put_nowait(None)

    def _dispatch(self, op: str | None, request: svc.SessionRequest, reply: _Reply) -> None:
        """Validates synchronously (errors answer at once) and starts the engine call."""
        try:
            if isinstance(request, RejectedRequest):  # undecodable, or over the tenant's quota
                raise request.error
            if op is None:
                raise InvalidInput("request has no operation: set one of open, attach, append, complete, ...")
            if op in ("open", "attach"):
                self._bind(request, reply)
                return
            sid = self._bound()
            if op == "append":
                if self._backlog:  # behind a barrier: started in order by the submitter
                    self._start(self._append_job(sid, request.append, reply), reply, barrier=False)
                else:
                    self._append_now(sid, request.append, reply)
            elif op == "complete":
                self._start(self._complete_job(sid, request.complete), reply, barrier=True)
            else:
                self._start(self._other_job(sid, op, request), reply, barrier=True)
        except Exception as exc:  # noqa: BLE001 (validation errors; status_of logs anything unexpected)
            reply.fail(exc)
            reply.finish()

    def _bind(self, request: svc.SessionRequest, reply: _Reply) -> None:
        if self._session_id is not None:
            raise PreconditionFailed("this stream already has a session; open another stream for another session")
        if request.HasField("open"):
            info = self._engine.open_session(validate.model_name(request.open.model), owner=self._owner)
        else:
            info = self._engine.get_session(validate.session_id(request.attach.session_id), owner=self._owner)
        self._session_id = info.session_id
        self._model = info.model
        reply.send(
            opened=svc.SessionResponse.Opened(session=convert.session_info(info), model=self._model_msg(info.model))
        )
        reply.finish()

    def _bound(self) -> str:
        if self._session_id is None:
            raise InvalidInput("no session on this stream yet: the first request must be open or attach")
        return self._session_id

    def _start(self, job: Job, reply: _Reply, *, barrier: bool) -> None:
        self._backlog += 1
        self._jobs.put_nowait((job, reply, barrier))

    def _track(self, task: asyncio.Task[None]) -> asyncio.Task[None]:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _submit(self) -> None:
        """Starts the engine calls in request order (see the module docstring)."""
        appends: list[asyncio.Task[None]] = []
        while (item := await self._jobs.get()) is not None:
            job, reply, barrier = item
            if not barrier:  # the task takes the backlog count off once the engine queued it
                appends.append(self._track(asyncio.create_task(self._run(job, reply))))
                continue
            waiting = [*appends, *(f for f in self._appends if not f.done())]
            if waiting:
                await asyncio.wait(waiting)
            appends.clear()
            self._appends.clear()
            await self._run(job, reply)
            self._backlog -= 1

    @staticmethod
    async def _run(job: Job, reply: _Reply) -> None:
        try:
            await job(reply)
        except asyncio.CancelledError:
            reply.cancelled()
            raise
        except Exception as exc:  # noqa: BLE001 (answered in-band; status_of logs the unexpected)
            reply.fail(exc)
            reply.finish()
        else:
            if not reply.handed_off:
                reply.finish()

    # --- the operations --------------------------------------------------------------------

    def _append_now(self, sid: str, msg: svc.SessionRequest.Append, reply: _Reply) -> None:
        text, options = self._append_args(msg, reply)
        fut = self._engine.submit_append(sid, msg.offset, text, options, owner=self._owner)
        reply.prediction = fut
        appends = self._appends
        if len(appends) >= MAX_IN_FLIGHT:  # the window bounds the unfinished ones: prune the rest
            appends[:] = [f for f in appends if not f.done()]
        appends.append(fut)

    def _append_args(self, msg: svc.SessionRequest.Append, reply: _Reply) -> tuple[str, AppendOptions]:
        text = validate.input_text(msg.input if msg.HasField("input") else None, "append.input", self._settings)
        options = validate.append_options(msg, self._settings, only_last=msg.only_last)
        reply.append_chars = len(text)
        if log.isEnabledFor(logging.DEBUG):  # user_text is not free
            log.debug("stream append %d at %d: %s", reply.request_id, msg.offset, user_text(text, self._settings))
        return text, options

    def _append_job(self, sid: str, msg: svc.SessionRequest.Append, reply: _Reply) -> Job:
        text, options = self._append_args(msg, reply)

        async def job(reply: _Reply) -> None:
            try:
                fut = self._engine.submit_append(sid, msg.offset, text, options, owner=self._owner)
            finally:
                # Queued in the engine (or refused): the reader may start later appends itself
                # once the backlog is empty, and they land after this one.
                self._backlog -= 1
            pred = await asyncio.shield(fut)
            reply.send(prediction=convert.prediction(pred))

        return job

    def _complete_job(self, sid: str, msg: svc.SessionRequest.Complete) -> Job:
        req = validate.completion_request(msg, self._settings)

        async def job(reply: _Reply) -> None:
            lease = completion_lease(req.n)  # the tenant's quota; released when the chunks end
            try:
                stream = self._engine.complete(sid, req, owner=self._owner)
            except BaseException:
                lease.release()
                raise
            chunks = _released_at_end(stream, lease)
            reply.handed_off = True
            # The chunks go out from a task of their own so that later requests (an Append
            # cancels the completion) are not held up until the completion ends.
            self._track(asyncio.create_task(self._relay_chunks(chunks, reply)))
            # No wait here: Engine.complete queues the fork in the session's ordered queue
            # before it returns, so later appends cannot overtake it.

        return job

    @staticmethod
    async def _relay_chunks(chunks: AsyncIterator[CompletionChunk], reply: _Reply) -> None:
        try:
            async for chunk in chunks:
                reply.send(completion_chunk=convert.completion_chunk(chunk))
        except asyncio.CancelledError:
            reply.cancelled()
            raise
        except Exception as exc:  # noqa: BLE001 (answered in-band; status_of logs the unexpected)
            reply.fail(exc)
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()  # a cancelled stream stops the completion now, not at collection
        reply.finish()

    def _other_job(self, sid: str, op: str, request: svc.SessionRequest) -> Job:
        engine, owner = self._engine, self._owner

        async def job(reply: _Reply) -> None:
            if op == "rewind":
                info = await engine.rewind(sid, request.rewind.chars, owner=owner)
                reply.send(rewound=svc.SessionResponse.Rewound(position=info.position))
            elif op == "reset":
                info = await engine.reset(sid, owner=owner)
                reply.send(reset=svc.SessionResponse.Reset(position=info.position))
            elif op == "snapshot":
                blob = await engine.snapshot(sid, owner=owner)
                reply.send(snapshot=svc.SessionResponse.Snapshot(blob=blob))
            elif op == "close":
                await engine.close_session(sid, owner=owner)
                reply.send(closed=svc.SessionResponse.Closed())
            else:  # a new op in the proto this server does not know yet
                raise InvalidInput(f"operation {op!r} is not supported by this server")

        return job


async def _released_at_end(chunks: AsyncIterator[CompletionChunk], lease: Lease) -> AsyncIterator[CompletionChunk]:
    try:
        async for chunk in chunks:
            yield chunk
    finally:
        lease.release()
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
