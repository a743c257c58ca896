"""The one import point of the generated protobuf/gRPC modules (they live in cellserve_client).

Everything in ``cellserve.api`` imports messages from here, so moving the generated code is a
one-line change.
"""

from __future__ import annotations

from cellserve_client._proto.cellserve.v1 import service_pb2 as svc
from cellserve_client._proto.cellserve.v1 import service_pb2_grpc as rpc
from cellserve_client._proto.cellserve.v1 import types_pb2 as types

SERVICE_NAME: str = svc.DESCRIPTOR.services_by_name["CellserveService"].full_name

__all__ = ["SERVICE_NAME", "rpc", "svc", "types"]
