"""The metadata limit is hard: a header over ``max_metadata_bytes`` is refused every time.

gRPC's soft limit (``grpc.max_metadata_size``) alone refuses a header between it and the hard
limit (by default twice the soft one) only at random; the server sets both."""

from __future__ import annotations

import grpc
from cellserve_client._proto.cellserve.v1 import service_pb2 as svc
from servers import ServerProcess

from .conftest import Tokens
from .wire import bearer, stub

TRIES = 5


def test_a_17_kib_header_is_always_refused(auth_server: ServerProcess, tokens: Tokens) -> None:
    big = [("x-padding", "a" * 17 * 1024)]
    codes = []
    for _ in range(TRIES):  # a fresh connection each time: the soft limit's coin is per call
        with grpc.insecure_channel(auth_server.target) as ch:
            try:
                stub(ch).ListModels(svc.ListModelsRequest(), metadata=bearer(tokens.tokens["alice"]) + big, timeout=30)
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as e:
                codes.append(e.code())
    assert grpc.StatusCode.OK not in codes, codes
    with grpc.insecure_channel(auth_server.target) as ch:  # a header within the limit still passes
        stub(ch).ListModels(svc.ListModelsRequest(), metadata=bearer(tokens.tokens["alice"]), timeout=30)
