"""The gRPC API layer: translates protobuf to Engine calls and back; nothing else.

Modules:
    pb        the generated protobuf/gRPC modules (from cellserve_client), imported once
    convert   engine dataclasses <-> protobuf messages
    validate  request fields -> engine arguments, or InvalidInput naming field and limit
    calls     the one interceptor: per call, request id, authentication, owner, stream lease,
              status mapping and the recorded outcome, in one wrapper per handler kind
    status    the one mapping of exceptions to gRPC status codes
    auth      who is calling (tokens file, client certificates) and a stream's token check
    admission stream leases (the engine core counts them), refused while draining
    recorder  the interface through which requests and keystroke timings reach the metrics
    owner     session owner: the tenant, or the optional ``authorization`` metadata (hashed)
    servicer  the unary calls (thin translators) and the start of Session streams
    stream    one bidirectional Session stream: pipelined, ordered, in-band errors
    wire      a keystroke's answer serialized in C (_wire.c), protobuf's bytes without its messages
    health    grpc.health.v1 liveness/readiness
    server    assembles the grpc.aio server (service, health, reflection) and drains it
"""

from __future__ import annotations

from .server import ApiServer

__all__ = ["ApiServer"]
