"""The gRPC API layer: translates protobuf to Engine calls and back; nothing else.

Modules:
    pb        the generated protobuf/gRPC modules (from cellserve_client), imported once
    convert   engine dataclasses <-> protobuf messages
    validate  request fields -> engine arguments, or InvalidInput naming field and limit
    status    the one mapping of exceptions to gRPC status codes, and its interceptor (which also
              tags each call's logs with a request id and reports its outcome)
    recorder  the interface through which requests and keystroke timings reach the metrics
    owner     session owner from the optional ``authorization`` metadata (hashed)
    servicer  the unary calls (thin translators) and admission of streams
    stream    one bidirectional Session stream: pipelined, ordered, in-band errors
    health    grpc.health.v1 liveness/readiness
    server    assembles the grpc.aio server (service, health, reflection) and drains it
"""

from __future__ import annotations

from .server import ApiServer

__all__ = ["ApiServer"]
