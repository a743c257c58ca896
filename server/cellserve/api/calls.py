"""Every call's cross-cutting work, in one wrapper around its handler.

``CallInterceptor`` is the server's only interceptor. It wraps each method's handler once (the
wrapped handler is kept per method: a call finds it with a dict lookup) in one wrapper: a
coroutine for the kinds with one response, an async generator for the streaming kinds. Per call, once, before the handler runs:

1. the request id (``x-request-id`` when sane, else a random one) tags the call's logs;
2. with authentication on, the caller (``auth.Authenticator``): UNAUTHENTICATED before anything
   else runs; the tenant's quotas go to the engine core ahead of the call's own operations
   (``EngineClient.set_limits``, which counts them for every API and frontend);
3. the owner of the call's sessions (``owner``), which the servicers read with ``owner_of``;
4. a bidirectional stream takes its stream lease (``admission``), given back when it ends.

Then the handler runs; an exception becomes the status ``status.status_of`` chooses (with its
trailing metadata), and the call's method and code go to the recorder. Per message of a
stream, the response passes through this wrapper's one generator, and each request through
``stream_guard.guarded`` (idle timeout, token revocation) when either applies: nothing else
is stacked per message.

Which methods: our services (cellserve.v1, KServe) get all of it, and their undecodable
requests become ``RejectedRequest`` (``malformed``: unary calls answer INVALID_ARGUMENT here, a
stream in-band). grpc's health service gets none of it (probes carry no credentials); any
other service (reflection) only authentication, in grpc's own style otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, TypeAlias

import grpc
from grpc import aio

from ..engine.client import EngineClient
from ..logs import REQUEST_ID_MD, new_request_id, set_request_id
from . import wire
from .admission import StreamAdmission
from .auth import HEALTH_PREFIX, Authenticator, Principal, StreamToken, admit
from .malformed import MalformedCounter, RejectedRequest, guard
from .owner import AUTH_METADATA, owner_from, set_owner
from .pb import SERVICE_NAME
from .recorder import NULL_RECORDER, Recorder, code_name
from .status import status_of
from .stream_guard import guarded

log = logging.getLogger("cellserve.api")

SESSION_METHOD = f"/{SERVICE_NAME}/Session"  # its requests are read by wire.session_request

Context: TypeAlias = aio.ServicerContext[Any, Any]
UNAUTHENTICATED = "UNAUTHENTICATED"
CANCELLED = "CANCELLED"


class _Method:
    """What the wrapper knows of one method, decided when its handler is first wrapped."""

    __slots__ = ("counts_refusal", "name", "ours", "path", "stream")

    def __init__(self, path: str, ours: bool, counts_refusal: bool, stream: bool) -> None:
        self.path = path
        self.name = path.rsplit("/", 1)[-1]  # "Append": the metric label, without the service
        self.ours = ours  # status mapping, request id, owner, recorder
        self.counts_refusal = counts_refusal  # an UNAUTHENTICATED refusal is recorded
        self.stream = stream  # a bidirectional stream of ours: lease, idle and token guard


class _Call:
    """One call's outcome: the code it ends with, recorded once when it ends."""

    __slots__ = ("code", "method", "recorder", "started")

    def __init__(self, method: _Method, recorder: Recorder) -> None:
        self.method = method
        self.recorder = recorder
        self.code = "OK"
        self.started = time.perf_counter()

    async def fail(self, exc: Exception, context: Context) -> NoReturn:
        """Ends the call with the status of ``exc`` (grpc's own abort, or any exception of a
        service not ours, passes through untouched)."""
        if isinstance(exc, aio.AbortError) or not self.method.ours:
            code = context.code()
            self.code = code_name(code) if isinstance(code, grpc.StatusCode) else "UNKNOWN"
            raise exc
        st = status_of(exc, self.method.path)
        self.code = code_name(st.code)
        await context.abort(st.code, st.message, st.trailing_metadata())
        raise AssertionError("unreachable: abort raises")

    def end(self) -> None:
        if not self.method.ours:
            return
        self.recorder.request(self.method.name, self.code)
        if log.isEnabledFor(logging.DEBUG):
            ms = (time.perf_counter() - self.started) * 1000
            log.debug("%s %s in %.2f ms", self.method.name, self.code, ms)


class CallInterceptor(aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(
        self,
        engine: EngineClient,
        admission: StreamAdmission,
        auth: Authenticator | None = None,
        recorder: Recorder = NULL_RECORDER,
        malformed: MalformedCounter | None = None,
        stream_idle_timeout_s: float | None = None,
        services: tuple[str, ...] = (SERVICE_NAME,),
    ) -> None:
        """``auth``: None when authentication is off; ``services``: ours (the first one's
        UNAUTHENTICATED refusals are recorded)."""
        self._engine = engine
        self._admission = admission
        self._auth = auth
        self._recorder = recorder
        self._malformed = malformed or MalformedCounter(60.0)
        self._idle_s = stream_idle_timeout_s
        self._prefixes = tuple(f"/{name}/" for name in services)
        self._refusals_counted = self._prefixes[:1]
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}  # by method: one entry per served method

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method: str = details.method
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            handler = await continuation(details)
            if handler is None:  # unknown method (UNIMPLEMENTED): not kept, clients choose the names
                return None
            wrapped = self._wrapped[method] = self._wrap(method, handler)
        return wrapped

    def _wrap(self, path: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        ours = path.startswith(self._prefixes)
        if path.startswith(HEALTH_PREFIX) or (not ours and self._auth is None):
            return handler
        m = _Method(path, ours, path.startswith(self._refusals_counted), ours and handler.stream_stream is not None)
        # Undecodable bytes become a RejectedRequest (INVALID_ARGUMENT), never a raise in grpc.
        # A Session stream's plain Appends are read in C (api/wire.py), every other message by protobuf.
        read = wire.session_request if path == SESSION_METHOD else handler.request_deserializer
        deserializer = guard(read, m.name, self._malformed) if ours else None
        kw = {
            "request_deserializer": deserializer or handler.request_deserializer,
            # this server's own responses may come serialized already (api/wire.py)
            "response_serializer": wire.serializer(handler.response_serializer)
            if ours
            else handler.response_serializer,
        }
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(self._one(handler.unary_unary, m), **kw)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(self._streaming(handler.unary_stream, m), **kw)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(self._one(handler.stream_unary, m), **kw)
        return grpc.stream_stream_rpc_method_handler(self._streaming(handler.stream_stream, m), **kw)

    # --- per call --------------------------------------------------------------------------

    async def _begin(self, m: _Method, context: Context) -> tuple[str, Principal | None]:
        """The call's request id, caller and owner (the once-per-call work before the
        handler); aborts with UNAUTHENTICATED when the caller proves no tenant."""
        authorization = request_id = None
        for key, value in context.invocation_metadata() or ():
            if key == AUTH_METADATA:
                authorization = value if authorization is None else authorization
            elif key == REQUEST_ID_MD:
                request_id = value if request_id is None else request_id
        if m.ours:
            set_request_id(new_request_id(request_id if isinstance(request_id, str) else None))
        who: Principal | None = None
        if self._auth is not None:
            if self._auth.due():
                await self._auth.refresh()
            found = self._auth.authenticate(authorization, context)
            if isinstance(found, str):
                if m.counts_refusal:
                    self._recorder.request(m.name, UNAUTHENTICATED)
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, found)
                raise AssertionError("unreachable: abort raises")
            who = found
            admit(who)
            # Before the call's own operations (submitted in order): the core counts with these.
            self._engine.set_limits(who.tenant, who.limits)
        owner = owner_from(who, authorization) if m.ours else ""
        if m.ours:
            set_owner(owner)
        return owner, who

    # --- the wrappers: one for the kinds with one response, one for the streaming kinds ----

    def _one(self, behavior: Callable[..., Awaitable[Any]], m: _Method) -> Callable[..., Awaitable[Any]]:
        """Unary-unary and stream-unary (none in this API; wrapped all the same, so a new one
        cannot skip the rest)."""

        async def one_response(request: Any, context: Context) -> Any:
            await self._begin(m, context)
            call = _Call(m, self._recorder)
            try:
                if isinstance(request, RejectedRequest):  # never a stream-unary's request iterator
                    raise request.error
                return await behavior(request, context)
            except asyncio.CancelledError:
                call.code = CANCELLED
                raise
            except Exception as exc:
                await call.fail(exc, context)
            finally:
                call.end()

        return one_response

    def _streaming(self, behavior: Callable[..., AsyncIterator[Any]], m: _Method) -> Callable[..., AsyncIterator[Any]]:
        """Unary-stream (Complete) and stream-stream (Session, ModelStreamInfer, reflection):
        the one generator layer each response passes through."""

        async def responses(request: Any, context: Context) -> AsyncIterator[Any]:
            owner, who = await self._begin(m, context)
            call = _Call(m, self._recorder)
            lease: int | None = None
            try:
                if isinstance(request, RejectedRequest):  # unary-stream; a stream's: in-band
                    raise request.error
                if m.stream:
                    # Made before any await: the token is checked against the table it was found in.
                    token = StreamToken(self._auth, who) if self._auth is not None and who is not None else None
                    lease = await self._admission.lease(owner)
                    if self._idle_s is not None or token is not None:
                        request = guarded(request, self._idle_s, token)
                async for response in behavior(request, context):
                    yield response
            except (asyncio.CancelledError, GeneratorExit):
                call.code = CANCELLED
                raise
            except Exception as exc:
                await call.fail(exc, context)
            finally:
                if lease is not None:
                    self._admission.release(owner, lease)
                call.end()

        return responses
