"""The CellserveService servicer: thin translators between protobuf and the ``EngineClient``.

Each method validates its request (``validate``), calls one engine operation and converts the
result (``convert``). Errors are raised, never turned into statuses here: the interceptor in
``status`` does that for every method. The bidirectional ``Session`` stream lives in
``stream``; this class starts it and tracks it for draining (the call wrapper in ``calls``
admits it: the concurrent-stream cap).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, TypeAlias, TypeVar

from grpc import aio

from ..config import Settings
from ..engine.client import EngineClient
from ..errors import CellserveError, InvalidInput, Unavailable
from ..logs import user_text
from . import convert, validate
from .owner import owner_of
from .pb import rpc, svc, types
from .recorder import NULL_RECORDER, Recorder, ResponseTimer
from .status import status_of
from .stream import SessionStream

log = logging.getLogger("cellserve.api")
T = TypeVar("T")
Context: TypeAlias = aio.ServicerContext[Any, Any]
FRONTEND_MD = "cellserve-frontend"


class Gates(Protocol):
    """Answers InspectGates: ``api.gates.GateInspector`` in the process that loaded the models,
    or a frontend's forwarder to the engine core (frontends import no torch)."""

    async def inspect(self, request: svc.InspectGatesRequest) -> svc.InspectGatesResponse: ...


CUT_OFF_GRACE_S = 5.0  # a cut-off stream's status gets this long to go out; then the call is cancelled
_cutting: set[asyncio.Task[None]] = set()  # cut-offs in progress (tasks need a reference)


def _aborter(context: Context, call: asyncio.Task[Any] | None) -> Callable[[CellserveError], None]:
    """Ends a Session stream from outside its writer (which is stuck in a write the client does
    not take): the status is sent with ``abort``; if that cannot go out within the grace, the
    call task is cancelled so that its slot, quota lease and memory come back all the same."""

    def cut_off(exc: CellserveError) -> None:
        st = status_of(exc, "/cellserve.v1.CellserveService/Session")

        async def end() -> None:
            try:
                async with asyncio.timeout(CUT_OFF_GRACE_S):
                    await context.abort(st.code, st.message, st.trailing_metadata())
            except (Exception, asyncio.CancelledError):  # noqa: BLE001 (abort raises by design)
                pass
            if call is not None and not call.done():
                call.cancel()

        task = asyncio.get_running_loop().create_task(end())
        _cutting.add(task)
        task.add_done_callback(_cutting.discard)

    return cut_off


class CellserveServicer(rpc.CellserveServiceServicer):  # type: ignore[misc]
    def __init__(
        self,
        engine: EngineClient,
        settings: Settings,
        recorder: Recorder = NULL_RECORDER,
        gates: Gates | None = None,
        frontend: str = "",
    ) -> None:
        self._engine = engine
        # Multi-process serving: which frontend answered (initial metadata of OpenSession and
        # GetSession), so operators and tests can tell where a connection landed.
        self._frontend_md = ((FRONTEND_MD, frontend),) if frontend else ()
        self._settings = settings
        self._recorder = recorder
        self._streams: set[SessionStream] = set()
        self._model_msgs: dict[str, types.ModelInfo] = {}
        # The gates read the weights only, never the engine's sessions: the process that loaded
        # the models answers them (a frontend forwards to the core); without one, UNAVAILABLE.
        self._gates = gates

    # --- helpers ---------------------------------------------------------------------------

    async def model_msg(self, name: str) -> types.ModelInfo:
        """The ModelInfo message of a loaded model (built once: the model set never changes)."""
        if not self._model_msgs:
            self._model_msgs = {m.name: convert.model_info(m) for m in await self._engine.models("")}
        return self._model_msgs[name]

    def begin_drain(self) -> None:
        """Streams stop reading, answer what they have read, then end with UNAVAILABLE."""
        for stream in list(self._streams):
            stream.stop_reading()

    # --- the session stream ----------------------------------------------------------------

    def Session(
        self, requests: AsyncIterator[svc.SessionRequest], context: Context
    ) -> AsyncIterator[svc.SessionResponse]:
        # Not a generator of its own: the call wrapper (api.calls), which admitted the stream
        # (its lease), iterates the stream's writer directly.
        stream = SessionStream(
            self._engine,
            self._settings,
            owner_of(context),
            self.model_msg,
            self._recorder,
            cut_off=_aborter(context, asyncio.current_task()),
        )
        return stream.run(requests, live=self._streams)

    # --- unary calls -----------------------------------------------------------------------

    async def OpenSession(self, request: svc.OpenSessionRequest, context: Context) -> svc.OpenSessionResponse:
        if self._frontend_md:
            await context.send_initial_metadata(self._frontend_md)
        info = await self._engine.open_session(
            owner_of(context), validate.model_name(request.model), memory=not request.no_memory
        )
        return svc.OpenSessionResponse(session=convert.session_info(info), model=await self.model_msg(info.model))

    async def GetSession(self, request: svc.GetSessionRequest, context: Context) -> svc.GetSessionResponse:
        if self._frontend_md:
            await context.send_initial_metadata(self._frontend_md)
        info = await self._engine.get_session(owner_of(context), validate.session_id(request.session_id))
        return svc.GetSessionResponse(session=convert.session_info(info))

    async def Append(self, request: svc.AppendRequest, context: Context) -> svc.AppendResponse:
        sid = validate.session_id(request.session_id)
        text = validate.input_text(request.input if request.HasField("input") else None, "input", self._settings)
        options = validate.append_options(request, self._settings)
        owner = owner_of(context)
        received = time.perf_counter()
        # the latency label, asked for together with the append (both reach the engine in one
        # pass): no round trip of its own before the keystroke is even submitted
        label = _settled(self._engine.get_session(owner, sid))
        log.debug("append at %d: %s", request.offset, user_text(text, self._settings))
        pred = await self._engine.append(owner, sid, request.offset, text, options)
        response = svc.AppendResponse()
        convert.fill_prediction(response.prediction, pred)
        ResponseTimer(self._recorder, (await label).model, received).prediction_sent(
            len(text)
        )  # serialization not counted
        return response

    async def Complete(self, request: svc.CompleteRequest, context: Context) -> AsyncIterator[svc.CompleteResponse]:
        sid = validate.session_id(request.session_id)
        req = validate.completion_request(request, self._settings)
        owner = owner_of(context)
        label = _settled(self._engine.get_session(owner, sid))  # with the completion, as in Append
        chunks = self._engine.complete(owner, sid, req)
        try:
            timer = ResponseTimer(self._recorder, (await label).model)
            async for chunk in chunks:
                yield svc.CompleteResponse(chunk=convert.completion_chunk(chunk))
                timer.chunk_sent(chunk.alternative, len(chunk.text))  # resumed once grpc has written it
        finally:
            await chunks.aclose()  # a cancelled call stops the completion now, not at collection

    async def Suggest(self, request: svc.SuggestRequest, context: Context) -> svc.SuggestResponse:
        sid = validate.session_id(request.session_id)
        items = await self._engine.suggest(owner_of(context), sid, validate.suggest_request(request))
        return svc.SuggestResponse(suggestions=convert.suggestions(items))

    async def Rewind(self, request: svc.RewindRequest, context: Context) -> svc.RewindResponse:
        sid = validate.session_id(request.session_id)
        info = await self._engine.rewind(owner_of(context), sid, request.chars)
        return svc.RewindResponse(session=convert.session_info(info))

    async def Reset(self, request: svc.ResetRequest, context: Context) -> svc.ResetResponse:
        info = await self._engine.reset(owner_of(context), validate.session_id(request.session_id))
        return svc.ResetResponse(session=convert.session_info(info))

    async def Snapshot(self, request: svc.SnapshotRequest, context: Context) -> svc.SnapshotResponse:
        blob = await self._engine.snapshot(owner_of(context), validate.session_id(request.session_id))
        return svc.SnapshotResponse(blob=blob)

    async def Resume(self, request: svc.ResumeRequest, context: Context) -> svc.ResumeResponse:
        if not request.blob:
            raise InvalidInput("blob is required")
        replay = validate.input_text(
            request.replay if request.HasField("replay") else None, "replay", self._settings, allow_empty=True
        )
        options = validate.append_options(request, self._settings)
        info, pred = await self._engine.resume(owner_of(context), request.blob, replay, options)
        response = svc.ResumeResponse(session=convert.session_info(info), model=await self.model_msg(info.model))
        if pred is not None:
            convert.fill_prediction(response.prediction, pred)
        return response

    async def CloseSession(self, request: svc.CloseSessionRequest, context: Context) -> svc.CloseSessionResponse:
        await self._engine.close_session(owner_of(context), validate.session_id(request.session_id))
        return svc.CloseSessionResponse()

    async def ListModels(self, request: svc.ListModelsRequest, context: Context) -> svc.ListModelsResponse:
        return svc.ListModelsResponse(
            models=[convert.model_info(m) for m in await self._engine.models(owner_of(context))]
        )

    async def InspectGates(self, request: svc.InspectGatesRequest, context: Context) -> svc.InspectGatesResponse:
        if self._gates is None:
            raise Unavailable("gate inspection is not served by this server process")
        return await self._gates.inspect(request)


def _settled(answer: Awaitable[T]) -> asyncio.Future[T]:
    """``answer`` as a future whose error counts as seen even when the call that asked for it
    failed first and never awaits it (no "exception was never retrieved" at collection)."""
    fut = asyncio.ensure_future(answer)
    fut.add_done_callback(lambda f: f.cancelled() or f.exception())
    return fut
