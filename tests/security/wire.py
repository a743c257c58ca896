"""Raw-wire helpers of the security tests: stubs with a token, raw bytes on a method."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import grpc
from cellserve_client._proto.cellserve.v1 import service_pb2 as svc
from cellserve_client._proto.cellserve.v1 import service_pb2_grpc as rpc

SERVICE = "/cellserve.v1.CellserveService/"
DEADLINE_S = 60.0


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def stub(channel: grpc.Channel) -> rpc.CellserveServiceStub:
    return rpc.CellserveServiceStub(channel)


def rpc_error(fn: Any, *args: Any, **kw: Any) -> grpc.RpcError:
    try:
        fn(*args, **kw)
    except grpc.RpcError as e:
        return e
    raise AssertionError("expected an RpcError")


def trailing(err: grpc.RpcError) -> dict[str, str]:
    return {k: v for k, v in (err.trailing_metadata() or ())}  # type: ignore[attr-defined]


def raw_unary(channel: grpc.Channel, method: str, payload: bytes, metadata: Sequence[tuple[str, str]]) -> Any:
    call = channel.unary_unary(SERVICE + method, request_serializer=None, response_deserializer=None)
    return call(payload, metadata=metadata, timeout=DEADLINE_S)


def raw_stream(
    channel: grpc.Channel, requests: Iterator[bytes], metadata: Sequence[tuple[str, str]]
) -> Iterator[svc.SessionResponse]:
    call = channel.stream_stream(
        SERVICE + "Session", request_serializer=None, response_deserializer=svc.SessionResponse.FromString
    )
    return call(requests, metadata=metadata, timeout=DEADLINE_S)  # type: ignore[no-any-return]


def invalid_utf8(message: Any, marker: str = "ZZZZ") -> bytes:
    """``message`` serialized with the text ``marker`` swapped for bytes that are not UTF-8."""
    raw: bytes = message.SerializeToString()
    assert marker.encode() in raw
    return raw.replace(marker.encode(), b"\xff\xfe\xc3\x28"[: len(marker)])


def no_library_names(message: str) -> bool:
    """A status message a user can act on: no class names, module paths or tracebacks."""
    return not any(s in message for s in ("<class", "google.protobuf", "DecodeError", "Traceback", ".py", "Exception"))


def fresh_channel(target: str) -> grpc.Channel:
    """A channel with a connection of its own (gRPC shares one per target otherwise), so that
    with several frontends (SO_REUSEPORT) fresh channels land on either."""
    return grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
