"""Both ways of sending input data: typed ``contents`` (what hand-written clients often use) and
``raw_input_contents`` (tritonclient's default) give the same answer; mixing or miscounting
them is refused with a message naming the tensor."""

from __future__ import annotations

import itertools
import struct
from collections.abc import Iterator

import grpc
import pytest
from cellserve_client._proto.inference import grpc_service_pb2 as kpb
from cellserve_client._proto.inference import grpc_service_pb2_grpc as krpc
from servers import ServerProcess

from .conftest import MODEL

_ids = itertools.count(5000)
Tensor = kpb.ModelInferRequest.InferInputTensor


@pytest.fixture
def stub(kserver: ServerProcess) -> Iterator[krpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(kserver.target) as ch:
        yield krpc.GRPCInferenceServiceStub(ch)


def request(seq: int, **kw: object) -> kpb.ModelInferRequest:
    r = kpb.ModelInferRequest(model_name=MODEL, **kw)  # type: ignore[arg-type]
    r.parameters["sequence_id"].uint64_param = seq
    r.parameters["sequence_start"].bool_param = True
    r.parameters["sequence_end"].bool_param = True
    return r


def raw_bytes(text: bytes) -> bytes:
    return struct.pack("<I", len(text)) + text


def outputs(r: kpb.ModelInferResponse) -> dict[str, bytes]:
    return {o.name: raw for o, raw in zip(r.outputs, r.raw_output_contents, strict=True)}


def test_typed_and_raw_contents_agree(stub: krpc.GRPCInferenceServiceStub) -> None:
    typed = stub.ModelInfer(
        request(
            next(_ids),
            inputs=[
                Tensor(
                    name="TEXT", datatype="BYTES", shape=[1], contents=kpb.InferTensorContents(bytes_contents=[b"hi"])
                ),
                Tensor(
                    name="OFFSET", datatype="UINT64", shape=[1], contents=kpb.InferTensorContents(uint64_contents=[0])
                ),
            ],
        ),
        timeout=10,
    )
    raw = stub.ModelInfer(
        request(
            next(_ids),
            inputs=[
                Tensor(name="TEXT", datatype="BYTES", shape=[1]),
                Tensor(name="OFFSET", datatype="UINT64", shape=[1]),
            ],
            raw_input_contents=[raw_bytes(b"hi"), struct.pack("<Q", 0)],
        ),
        timeout=10,
    )
    assert outputs(typed) == outputs(raw)
    assert struct.unpack("<Q", outputs(raw)["POSITION"]) == (2,)
    assert [o.datatype for o in raw.outputs] == ["BYTES", "FP32", "UINT64"]


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (
            {
                "inputs": [Tensor(name="TEXT", datatype="BYTES", shape=[1])],
                "raw_input_contents": [b"\x05\x00\x00\x00hi"],
            },
            "input TEXT raw contents must be one element",
        ),
        (
            {
                "inputs": [
                    Tensor(name="TEXT", datatype="BYTES", shape=[1]),
                    Tensor(name="OFFSET", datatype="UINT64", shape=[1]),
                ],
                "raw_input_contents": [raw_bytes(b"hi")],
            },
            "raw_input_contents has 1 entries for 2 inputs",
        ),
        (
            {
                "inputs": [
                    Tensor(
                        name="TEXT",
                        datatype="BYTES",
                        shape=[1],
                        contents=kpb.InferTensorContents(bytes_contents=[b"a"]),
                    )
                ],
                "raw_input_contents": [raw_bytes(b"hi")],
            },
            "input TEXT has both contents and raw_input_contents",
        ),
        (
            {
                "inputs": [
                    Tensor(
                        name="TEXT",
                        datatype="BYTES",
                        shape=[1],
                        contents=kpb.InferTensorContents(bytes_contents=[b"a", b"b"]),
                    )
                ]
            },
            "input TEXT must hold one element in contents.bytes_contents, not 2",
        ),
        (
            {
                "inputs": [
                    Tensor(name="TEXT", datatype="BYTES", shape=[1]),
                    Tensor(name="OFFSET", datatype="UINT64", shape=[1]),
                ],
                "raw_input_contents": [raw_bytes(b"hi"), b"\x00\x00\x00\x00"],
            },
            "input OFFSET raw contents must be 8 bytes",
        ),
    ],
    ids=["raw-length", "raw-count", "both", "two-elements", "offset-size"],
)
def test_malformed_contents_are_refused(
    stub: krpc.GRPCInferenceServiceStub, kw: dict[str, object], message: str
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request(next(_ids), **kw), timeout=10)
    err = info.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and message in err.details(), err.details()  # type: ignore[attr-defined]
