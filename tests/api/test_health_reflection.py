"""grpc.health.v1 (liveness "" and the readiness service) and server reflection."""

from __future__ import annotations

import grpc
from cellserve.config import Settings
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase


def test_health_serving(channel: grpc.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", Settings().readiness_service):
        r = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert r.status == health_pb2.HealthCheckResponse.SERVING, service
    try:
        stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10)
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.NOT_FOUND
    else:
        raise AssertionError("unknown health service answered")


def test_reflection_lists_and_describes_the_service(channel: grpc.Channel) -> None:
    db = ProtoReflectionDescriptorDatabase(channel)
    services = set(db.get_services())
    assert {"cellserve.v1.CellserveService", "grpc.health.v1.Health"} <= services
    fd = db.FindFileContainingSymbol("cellserve.v1.CellserveService")
    assert fd.name == "cellserve/v1/service.proto" and "cellserve/v1/types.proto" in fd.dependency
    methods = {m.name for m in fd.service[0].method}
    assert {"Session", "OpenSession", "Append", "Complete", "Rewind", "Snapshot", "Resume", "CloseSession"} <= methods
