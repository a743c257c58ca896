"""Failures become the SDK's exceptions, the same type over both transports (unary statuses
and in-band stream errors go through one table)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cellserve_client import (
    CapacityExceeded,
    CellserveError,
    Client,
    FailoverFailed,
    FailoverPolicy,
    InternalError,
    InvalidInput,
    ModelNotFound,
    NotFound,
    OffsetConflict,
    PermissionDenied,
    PreconditionFailed,
    SessionNotFound,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)
from cellserve_client._errors import from_code
from servers import ServerProcess, start_server

from .conftest import KEY_ENV

NO_FAILOVER = FailoverPolicy(enabled=False)


@pytest.fixture
def client(server: ServerProcess, transport: str) -> Iterator[Client]:
    with Client(server.target, transport=transport, failover=NO_FAILOVER) as c:
        yield c


def test_invalid_input(client: Client) -> None:
    with client.open() as s:
        with pytest.raises(InvalidInput) as e:
            s.append("x", top_k=100_000)
        assert e.value.code == "INVALID_ARGUMENT"
        with pytest.raises(InvalidInput):
            s.rewind(5)  # beyond the position
        # the session is still usable, and in step
        assert s.append("ok").position == 2


def test_model_not_found(client: Client) -> None:
    with pytest.raises(ModelNotFound) as e:
        client.open("no-such-model")
    assert isinstance(e.value, NotFound) and not isinstance(e.value, SessionNotFound)


def test_rewind_beyond_the_window(server: ServerProcess, transport: str) -> None:
    with Client(server.target, transport=transport) as c, c.open() as s:
        for _ in range(5):
            s.append("x" * 100)
        with pytest.raises(PreconditionFailed):
            s.rewind(400)  # window 256
        assert s.append("y").position == 501


def test_session_not_found_without_failover(server: ServerProcess, transport: str) -> None:
    """A foreign credential cannot see the session: NOT_FOUND (and with failover off, raised)."""
    with Client(server.target, token="alice", transport=transport, failover=NO_FAILOVER) as alice:
        s = alice.open()
        s.append("a")
        with grpc.insecure_channel(server.target) as ch:
            from cellserve_client._proto.cellserve.v1 import service_pb2 as svc

            close = ch.unary_unary(
                "/cellserve.v1.CellserveService/CloseSession",
                request_serializer=svc.CloseSessionRequest.SerializeToString,
                response_deserializer=svc.CloseSessionResponse.FromString,
            )
            md = (("authorization", "Bearer alice"),)
            close(svc.CloseSessionRequest(session_id=s.session_id), metadata=md, timeout=10)
        with pytest.raises(SessionNotFound):
            s.append("b")


def test_capacity_exceeded_carries_the_retry_hint(model_dir: Path, transport: str) -> None:
    srv: ServerProcess = start_server(model_dir, env={**KEY_ENV, "CELLSERVE_MAX_SESSIONS": "1"})
    try:
        with Client(srv.target, transport=transport, failover=NO_FAILOVER) as c:
            c.open()
            with pytest.raises(CapacityExceeded) as e:
                c.open()
            assert e.value.retry_after > 0 and e.value.code == "RESOURCE_EXHAUSTED"
    finally:
        srv.terminate()


def test_unreachable_server() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once closed
    with Client(f"127.0.0.1:{port}", failover=NO_FAILOVER, timeout=10) as c:
        with pytest.raises(Unavailable):
            c.models()
        with pytest.raises(Unavailable):
            c.open()
    policy = FailoverPolicy(max_attempts=2, backoff_initial_s=0.01)
    with Client(f"127.0.0.1:{port}", failover=policy, timeout=10) as c, pytest.raises(FailoverFailed):
        c.open()


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidInput),
        (grpc.StatusCode.NOT_FOUND, SessionNotFound),
        (grpc.StatusCode.ABORTED, OffsetConflict),
        (grpc.StatusCode.FAILED_PRECONDITION, PreconditionFailed),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, CapacityExceeded),
        (grpc.StatusCode.UNAVAILABLE, Unavailable),
        (grpc.StatusCode.UNAUTHENTICATED, Unauthenticated),
        (grpc.StatusCode.PERMISSION_DENIED, PermissionDenied),
        (grpc.StatusCode.UNIMPLEMENTED, Unimplemented),
        (grpc.StatusCode.INTERNAL, InternalError),
        (grpc.StatusCode.DATA_LOSS, InternalError),
    ],
)
def test_status_table(code: grpc.StatusCode, cls: type[CellserveError]) -> None:
    """The in-band stream error carries the code's number; both forms map alike."""
    for form in (code, code.value[0]):
        exc = from_code(form, "m", expected_offset=7, retry_after_ms=1500)
        assert type(exc) is cls and exc.code == code.name and str(exc) == "m"
    if cls is OffsetConflict:
        conflict = from_code(code, "m", expected_offset=7)
        assert isinstance(conflict, OffsetConflict) and conflict.expected_offset == 7
    if cls is CapacityExceeded:
        capacity = from_code(code, "m", retry_after_ms=1500)
        assert isinstance(capacity, CapacityExceeded) and capacity.retry_after == 1.5


class _TransportError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[()]:
        return ()


def test_transport_internal_is_a_broken_connection() -> None:
    """gRPC core reports some torn-down connections as INTERNAL; only the server's own INTERNAL
    (its one fixed message) is a server bug."""
    from cellserve.api.status import INTERNAL_MESSAGE
    from cellserve_client._errors import SERVER_INTERNAL_MESSAGE, from_rpc_error

    assert SERVER_INTERNAL_MESSAGE == INTERNAL_MESSAGE
    core = from_rpc_error(_TransportError(grpc.StatusCode.INTERNAL, "Internal error from Core"))
    assert isinstance(core, Unavailable)
    server = from_rpc_error(_TransportError(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE))
    assert isinstance(server, InternalError) and not isinstance(server, Unavailable)
