"""One gRPC channel to one target and typed calls on it.

The generated ``*_pb2_grpc`` stub is untyped, so the multicallables are built here from the
typed message classes. Every call goes through ``_call``, which turns ``grpc.RpcError`` into
the SDK's exceptions (``_errors``) so nothing above this module sees gRPC errors.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, TypeVar

import grpc
from grpc import aio

from . import _errors
from ._proto.cellserve.v1 import service_pb2 as svc

SERVICE = "/cellserve.v1.CellserveService/"
Metadata = tuple[tuple[str, str], ...]

# Dead connections are noticed by keepalive pings, not only when a call happens to fail.
_DEFAULT_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 0),
    # Reconnect fast after a server restart: the failover loop owns the backoff.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
)

Req = TypeVar("Req")
Resp = TypeVar("Resp")


class Channel:
    """An aio channel to ``target`` and the service's methods on it."""

    def __init__(
        self,
        target: str,
        *,
        credentials: grpc.ChannelCredentials | None,
        options: Sequence[tuple[str, Any]],
    ) -> None:
        self.target = target
        opts = [*_DEFAULT_OPTIONS, *options]
        self._channel: aio.Channel = (
            aio.secure_channel(target, credentials, options=opts)
            if credentials is not None
            else aio.insecure_channel(target, options=opts)
        )
        ch = self._channel

        def uu(name: str, req: type[Any], resp: type[Any]) -> Any:
            return ch.unary_unary(
                SERVICE + name, request_serializer=req.SerializeToString, response_deserializer=resp.FromString
            )

        self._open = uu("OpenSession", svc.OpenSessionRequest, svc.OpenSessionResponse)
        self._get = uu("GetSession", svc.GetSessionRequest, svc.GetSessionResponse)
        self._append = uu("Append", svc.AppendRequest, svc.AppendResponse)
        self._rewind = uu("Rewind", svc.RewindRequest, svc.RewindResponse)
        self._reset = uu("Reset", svc.ResetRequest, svc.ResetResponse)
        self._snapshot = uu("Snapshot", svc.SnapshotRequest, svc.SnapshotResponse)
        self._resume = uu("Resume", svc.ResumeRequest, svc.ResumeResponse)
        self._close = uu("CloseSession", svc.CloseSessionRequest, svc.CloseSessionResponse)
        self._models = uu("ListModels", svc.ListModelsRequest, svc.ListModelsResponse)
        self._inspect = uu("InspectGates", svc.InspectGatesRequest, svc.InspectGatesResponse)
        self._complete = ch.unary_stream(
            SERVICE + "Complete",
            request_serializer=svc.CompleteRequest.SerializeToString,
            response_deserializer=svc.CompleteResponse.FromString,
        )
        self._session = ch.stream_stream(
            SERVICE + "Session",
            request_serializer=svc.SessionRequest.SerializeToString,
            response_deserializer=svc.SessionResponse.FromString,
        )

    async def close(self) -> None:
        await self._channel.close()

    @staticmethod
    async def _call(
        method: Callable[..., Any],
        request: Any,
        metadata: Metadata,
        timeout: float | None,
        not_found: type[_errors.NotFound] = _errors.SessionNotFound,
    ) -> Any:
        try:
            return await method(request, metadata=metadata, timeout=timeout)
        except grpc.RpcError as err:
            raise _errors.from_rpc_error(err, not_found=not_found) from None

    async def open_session(
        self, req: svc.OpenSessionRequest, md: Metadata, timeout: float | None
    ) -> svc.OpenSessionResponse:
        resp: svc.OpenSessionResponse = await self._call(self._open, req, md, timeout, _errors.ModelNotFound)
        return resp

    async def get_session(
        self, req: svc.GetSessionRequest, md: Metadata, timeout: float | None
    ) -> svc.GetSessionResponse:
        resp: svc.GetSessionResponse = await self._call(self._get, req, md, timeout)
        return resp

    async def append(self, req: svc.AppendRequest, md: Metadata, timeout: float | None) -> svc.AppendResponse:
        resp: svc.AppendResponse = await self._call(self._append, req, md, timeout)
        return resp

    async def rewind(self, req: svc.RewindRequest, md: Metadata, timeout: float | None) -> svc.RewindResponse:
        resp: svc.RewindResponse = await self._call(self._rewind, req, md, timeout)
        return resp

    async def reset(self, req: svc.ResetRequest, md: Metadata, timeout: float | None) -> svc.ResetResponse:
        resp: svc.ResetResponse = await self._call(self._reset, req, md, timeout)
        return resp

    async def snapshot(self, req: svc.SnapshotRequest, md: Metadata, timeout: float | None) -> svc.SnapshotResponse:
        resp: svc.SnapshotResponse = await self._call(self._snapshot, req, md, timeout)
        return resp

    async def resume(self, req: svc.ResumeRequest, md: Metadata, timeout: float | None) -> svc.ResumeResponse:
        # NOT_FOUND on Resume: this server does not serve the blob's model.
        resp: svc.ResumeResponse = await self._call(self._resume, req, md, timeout, _errors.ModelNotFound)
        return resp

    async def close_session(self, req: svc.CloseSessionRequest, md: Metadata, timeout: float | None) -> None:
        await self._call(self._close, req, md, timeout)

    async def list_models(self, md: Metadata, timeout: float | None) -> svc.ListModelsResponse:
        resp: svc.ListModelsResponse = await self._call(self._models, svc.ListModelsRequest(), md, timeout)
        return resp

    async def inspect_gates(
        self, req: svc.InspectGatesRequest, md: Metadata, timeout: float | None
    ) -> svc.InspectGatesResponse:
        resp: svc.InspectGatesResponse = await self._call(self._inspect, req, md, timeout, _errors.ModelNotFound)
        return resp

    async def complete(self, req: svc.CompleteRequest, md: Metadata) -> AsyncIterator[svc.CompleteResponse]:
        """The chunks of a unary Complete call; no deadline (a completion may run long)."""
        call = self._complete(req, metadata=md)
        try:
            async for resp in call:
                yield resp
        except grpc.RpcError as err:
            raise _errors.from_rpc_error(err) from None
        finally:
            call.cancel()

    def session_stream(self, md: Metadata) -> Any:
        """A new bidirectional Session call, driven with ``write``/``read``/``done_writing``."""
        return self._session(metadata=md)
