"""The one import point of the generated KServe v2 modules (``proto/inference``, generated into
cellserve_client like the rest)."""

from __future__ import annotations

from cellserve_client._proto.inference import grpc_service_pb2 as kpb
from cellserve_client._proto.inference import grpc_service_pb2_grpc as krpc
from cellserve_client._proto.inference import model_config_pb2 as mc

KSERVE_SERVICE_NAME: str = kpb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name

__all__ = ["KSERVE_SERVICE_NAME", "kpb", "krpc", "mc"]
