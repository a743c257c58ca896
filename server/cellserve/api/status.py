"""The one place where errors become gRPC statuses.

``status_of(exc)`` maps any exception to a ``Status``; both the interceptor (unary and
server-streaming calls, and stream-level failures) and the session stream's in-band errors use
it. Domain errors (``cellserve.errors``) carry messages written for clients. Anything else is a
bug: the client gets INTERNAL with a generic message and the server logs one line with the
exception, so no path, library message or internal name ever reaches a client.

The interceptor is also where a call's final status is known, so it sets the call's request id
for logging (``cellserve.logs``) and reports ``(method, code)`` to the ``Recorder``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from grpc import aio

from ..errors import CLIENT_ERRORS, CapacityExceeded, OffsetConflict
from ..logs import REQUEST_ID_MD, new_request_id, set_request_id
from .malformed import MalformedCounter, RejectedRequest, guard
from .pb import SERVICE_NAME
from .recorder import NULL_RECORDER, Recorder, code_name
from .stream_guard import idle_guarded

log = logging.getLogger("cellserve.api")

RETRY_AFTER_MD = "retry-after-ms"
EXPECTED_OFFSET_MD = "expected-offset"
INTERNAL_MESSAGE = "internal error; the server logged the details"


@dataclass(frozen=True)
class Status:
    code: grpc.StatusCode
    message: str
    expected_offset: int | None = None
    retry_after_ms: int = 0

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        md: list[tuple[str, str]] = []
        if self.retry_after_ms:
            md.append((RETRY_AFTER_MD, str(self.retry_after_ms)))
        if self.expected_offset is not None:
            md.append((EXPECTED_OFFSET_MD, str(self.expected_offset)))
        return tuple(md)


def status_of(exc: BaseException, where: str = "") -> Status:
    """The status a client sees for ``exc``; logs unexpected exceptions (once, here)."""
    if isinstance(exc, CLIENT_ERRORS):  # each carries its code (cellserve.errors)
        code = grpc.StatusCode[type(exc).code]
        if isinstance(exc, CapacityExceeded):
            ms = max(1, round(exc.retry_after_s * 1000))
            return Status(code, f"{exc} (retry after {ms} ms)", retry_after_ms=ms)
        if isinstance(exc, OffsetConflict):
            return Status(code, str(exc), expected_offset=exc.expected)
        return Status(code, str(exc))
    log.error("unexpected error in %s", where or "a call", exc_info=exc)
    return Status(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)


def _passthrough(exc: BaseException) -> bool:
    # grpc's own abort (already a status) and cancellation must propagate untouched.
    return isinstance(exc, aio.AbortError)


class ErrorMappingInterceptor(aio.ServerInterceptor):  # type: ignore[misc]
    """Wraps every handler of the server so an exception becomes the status ``status_of``
    chooses. Handlers raise domain errors; they never build statuses themselves. Being where
    the final status is decided, it also tags the call's logs with a request id and reports
    the call's method and code to the recorder."""

    def __init__(
        self,
        recorder: Recorder = NULL_RECORDER,
        malformed: MalformedCounter | None = None,
        stream_idle_timeout_s: float | None = None,
        services: tuple[str, ...] = (SERVICE_NAME,),
    ) -> None:
        self._recorder = recorder
        self._malformed = malformed or MalformedCounter(60.0)
        self._idle_s = stream_idle_timeout_s
        self._prefixes = tuple(f"/{name}/" for name in services)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method: str = details.method
        # Only our own services: health and reflection are grpc's code, written in the
        # context.write() style that an async-generator wrapper must not mix with.
        if handler is None or not method.startswith(self._prefixes):
            return handler
        # Undecodable bytes become a RejectedRequest (INVALID_ARGUMENT), never a raise in grpc.
        deserializer = guard(handler.request_deserializer, method.rsplit("/", 1)[-1], self._malformed)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(handler.unary_unary, _Call(method, self._recorder)),
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_streaming(handler.unary_stream, _Call(method, self._recorder)),
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            behavior = handler.stream_stream
            if self._idle_s is not None:  # a silent stream ends (StreamIdle) and frees its slot
                behavior = _idle_limited(behavior, self._idle_s)
            return grpc.stream_stream_rpc_method_handler(
                _wrap_streaming(behavior, _Call(method, self._recorder)),
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # stream-unary: none in this API


class _Call:
    """The bookkeeping around one method's calls: request id, outcome, duration."""

    __slots__ = ("method", "name", "recorder")

    def __init__(self, method: str, recorder: Recorder) -> None:
        self.method = method
        self.name = method.rsplit("/", 1)[-1]  # "Append": the label, without the service
        self.recorder = recorder

    def begin(self, context: aio.ServicerContext[Any, Any]) -> float:
        supplied = next((v for k, v in (context.invocation_metadata() or ()) if k == REQUEST_ID_MD), None)
        set_request_id(new_request_id(supplied if isinstance(supplied, str) else None))
        return time.perf_counter()

    def end(self, code: str, started: float) -> None:
        self.recorder.request(self.name, code)
        log.debug("%s %s in %.2f ms", self.name, code, (time.perf_counter() - started) * 1000)


def _code_of_abort(context: aio.ServicerContext[Any, Any]) -> str:
    code = context.code()
    return code_name(code) if isinstance(code, grpc.StatusCode) else "UNKNOWN"


def _failure(exc: Exception, context: aio.ServicerContext[Any, Any], method: str) -> tuple[str, Status | None]:
    """The code to record for a handler's exception, and the status to abort with (None: the
    exception is gRPC's own abort and passes through)."""
    if _passthrough(exc):
        return _code_of_abort(context), None
    st = status_of(exc, method)
    return code_name(st.code), st


def _idle_limited(behavior: Callable[..., AsyncIterator[Any]], timeout_s: float) -> Callable[..., AsyncIterator[Any]]:
    def limited(requests: AsyncIterator[Any], context: aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        return behavior(idle_guarded(requests, timeout_s), context)

    return limited


def _wrap_unary(behavior: Callable[..., Awaitable[Any]], call: _Call) -> Callable[..., Awaitable[Any]]:
    async def wrapped(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        started, code = call.begin(context), "OK"
        try:
            if isinstance(request, RejectedRequest):
                raise request.error
            return await behavior(request, context)
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        except Exception as exc:
            code, st = _failure(exc, context, call.method)
            if st is None:
                raise
            await context.abort(st.code, st.message, st.trailing_metadata())
        finally:
            call.end(code, started)

    return wrapped


def _wrap_streaming(behavior: Callable[..., AsyncIterator[Any]], call: _Call) -> Callable[..., AsyncIterator[Any]]:
    async def wrapped(request: Any, context: aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        started, code = call.begin(context), "OK"
        try:
            if isinstance(request, RejectedRequest):  # unary-stream (Complete); a stream's: in-band
                raise request.error
            async for response in behavior(request, context):
                yield response
        except (asyncio.CancelledError, GeneratorExit):
            code = "CANCELLED"
            raise
        except Exception as exc:
            code, st = _failure(exc, context, call.method)
            if st is None:
                raise
            await context.abort(st.code, st.message, st.trailing_metadata())
        finally:
            call.end(code, started)

    return wrapped
