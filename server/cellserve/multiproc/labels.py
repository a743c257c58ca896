"""The closed sets of metric label values a frontend may report to the engine core.

The core counts the frontends' request and keystroke events in its one registry; anything
outside these sets is a malformed message. Read from the generated protobuf descriptors and the
gRPC specification's code names, so the core imports neither grpc nor the API layer.
"""

from __future__ import annotations

KEYSTROKE_KINDS = frozenset(("append_single", "append_multi", "completion_first_chunk", "completion_char"))
# the canonical gRPC status code names (grpc.StatusCode's member names)
GRPC_CODES = frozenset(
    (
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    )
)


def known_labels() -> tuple[frozenset[str], frozenset[str]]:
    """The method and code label values: the service's methods and ``Session.<op>`` for every
    op of the stream (see ``api.stream``), and gRPC's code names."""
    from cellserve_client._proto.cellserve.v1 import service_pb2 as svc

    service = svc.DESCRIPTOR.services_by_name["CellserveService"]
    ops = [f.name for f in svc.SessionRequest.DESCRIPTOR.oneofs_by_name["op"].fields] + ["unset"]
    methods = frozenset([m.name for m in service.methods] + [f"Session.{op}" for op in ops])
    return methods, GRPC_CODES


def malformed_labels() -> frozenset[str]:
    """The method label values of undecodable requests: every method of the two services."""
    from cellserve_client._proto.cellserve.v1 import service_pb2 as svc
    from cellserve_client._proto.inference import grpc_service_pb2 as kpb

    services = (
        svc.DESCRIPTOR.services_by_name["CellserveService"],
        kpb.DESCRIPTOR.services_by_name["GRPCInferenceService"],
    )
    return frozenset(method.name for service in services for method in service.methods)
