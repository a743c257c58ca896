"""proto/inference is wire-compatible with the public KServe v2 / Triton protocol: every message,
field and RPC declared there has the name, number, type and streaming of tritonclient's own
generated descriptors; server reflection lists and describes the service."""

from __future__ import annotations

import grpc
import pytest
from cellserve_client._proto.inference import grpc_service_pb2, model_config_pb2
from google.protobuf.descriptor import Descriptor
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from servers import ServerProcess

from .conftest import tg

theirs_service = pytest.importorskip("tritonclient.grpc.service_pb2")
theirs_config = pytest.importorskip("tritonclient.grpc.model_config_pb2")


def _messages(d: Descriptor) -> list[Descriptor]:
    return [d, *(m for n in d.nested_types for m in _messages(n))]


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [(grpc_service_pb2, theirs_service), (model_config_pb2, theirs_config)],
    ids=["service", "config"],
)
def test_every_field_matches_the_spec(ours: object, theirs: object) -> None:
    pool = theirs.DESCRIPTOR.pool  # type: ignore[attr-defined]
    checked = 0
    for top in ours.DESCRIPTOR.message_types_by_name.values():  # type: ignore[attr-defined]
        for msg in _messages(top):
            spec = pool.FindMessageTypeByName(msg.full_name)
            for f in msg.fields:
                g = spec.fields_by_name[f.name]
                assert (f.number, f.type, f.is_repeated) == (g.number, g.type, g.is_repeated), f.full_name
                if f.message_type is not None:
                    assert f.message_type.full_name == g.message_type.full_name, f.full_name
                if f.enum_type is not None:
                    assert f.enum_type.full_name == g.enum_type.full_name, f.full_name
                    spec_values = {v.name: v.number for v in g.enum_type.values}
                    assert {v.name: v.number for v in f.enum_type.values}.items() <= spec_values.items()
                if f.containing_oneof is not None:
                    assert g.containing_oneof is not None and f.containing_oneof.name == g.containing_oneof.name
                checked += 1
    assert checked >= 15  # not vacuous: the config file declares 20 fields, the service far more


def test_every_rpc_matches_the_spec() -> None:
    ours = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    spec = theirs_service.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert ours.full_name == spec.full_name == "inference.GRPCInferenceService"
    for m in ours.methods:
        s = spec.methods_by_name[m.name]
        assert m.input_type.full_name == s.input_type.full_name, m.name
        assert m.output_type.full_name == s.output_type.full_name, m.name
        assert (m.client_streaming, m.server_streaming) == (s.client_streaming, s.server_streaming), m.name


def test_reflection_lists_and_describes_the_service(kserver: ServerProcess) -> None:
    with grpc.insecure_channel(kserver.target) as ch:
        db = ProtoReflectionDescriptorDatabase(ch)
        assert {"inference.GRPCInferenceService", "cellserve.v1.CellserveService"} <= set(db.get_services())
        fd = db.FindFileContainingSymbol("inference.GRPCInferenceService")
        assert fd.name == "inference/grpc_service.proto" and "inference/model_config.proto" in fd.dependency
        methods = {m.name for m in fd.service[0].method}
        assert {"ServerLive", "ModelInfer", "ModelStreamInfer", "ModelConfig", "RepositoryIndex"} <= methods
        assert db.FindFileContainingSymbol("cellserve.v1.CellserveService").name == "cellserve/v1/service.proto"


def test_both_generated_codes_live_in_one_process() -> None:
    """cellserve's inference modules use a private descriptor pool, so tritonclient's (in the
    default pool, same message names) import beside them."""
    assert tg.service_pb2.ServerLiveRequest.DESCRIPTOR.full_name == "inference.ServerLiveRequest"
    assert grpc_service_pb2.ServerLiveRequest.DESCRIPTOR.full_name == "inference.ServerLiveRequest"
    assert grpc_service_pb2.ServerLiveRequest is not tg.service_pb2.ServerLiveRequest
