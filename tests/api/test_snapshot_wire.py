"""Snapshot on one server process, resume on a second one sharing the key (from the
environment): bit-exact. Tampered blobs, blobs signed with another key and blobs of other
weights are rejected."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cellserve_client._proto.cellserve.v1 import service_pb2 as svc
from cellserve_client._proto.cellserve.v1 import service_pb2_grpc as rpc
from cellserve_client._proto.cellserve.v1 import types_pb2 as types
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .conftest import SNAPSHOT_KEY, ServerProcess, open_session, rpc_error, start_server

REJECTED = grpc.StatusCode.INVALID_ARGUMENT  # the blob does not verify: the request carries bad bytes


@pytest.fixture(scope="module")
def replica(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[rpc.CellserveServiceStub]:
    """A second server with the same key; same tiny-lstm weights, *other* tiny-gru weights."""
    d = tmp_path_factory.mktemp("replica-models")
    shutil.copytree(model_dir / "tiny-lstm", d / "tiny-lstm")
    shutil.copytree(model_dir / "tiny-gru", d / "tiny-gru")
    weights = d / "tiny-gru" / "weights.safetensors"
    with safe_open(str(weights), "pt") as f:
        metadata = f.metadata()
    tensors = load_file(str(weights))
    tensors["head.bias"] = tensors["head.bias"] + 0.5  # other weights, same shapes and name
    save_file(tensors, str(weights), metadata=metadata)
    s: ServerProcess = start_server(d, env={"CELLSERVE_SNAPSHOT_KEY": SNAPSHOT_KEY})
    try:
        with grpc.insecure_channel(s.target) as ch:
            yield rpc.CellserveServiceStub(ch)
    finally:
        s.terminate()


def _append(stub: rpc.CellserveServiceStub, sid: str, offset: int, text: str) -> types.Prediction:
    req = svc.AppendRequest(session_id=sid, offset=offset, input=types.Input(text=text), top_k=10, want_logprobs=True)
    return stub.Append(req, timeout=30).prediction


def test_resume_on_another_process_is_bit_exact(
    stub: rpc.CellserveServiceStub, replica: rpc.CellserveServiceStub
) -> None:
    sid = open_session(stub)
    head = "class Foo(object):\n    dëf "
    _append(stub, sid, 0, head)
    blob = stub.Snapshot(svc.SnapshotRequest(session_id=sid), timeout=10).blob
    tail = "__init__(self, x): 😀"
    here = _append(stub, sid, len(head), tail)

    resumed = replica.Resume(
        svc.ResumeRequest(blob=blob, replay=types.Input(text=tail), top_k=10, want_logprobs=True), timeout=30
    )
    assert resumed.session.position == len(head + tail) and resumed.model.name == "tiny-lstm"
    there = resumed.prediction
    assert there.position == here.position
    assert list(there.top_characters.entries) == list(here.top_characters.entries)  # bit-exact floats
    assert list(there.logprobs) == list(here.logprobs)
    # and it goes on from there
    nxt = replica.Append(
        svc.AppendRequest(session_id=resumed.session.session_id, offset=there.position, input=types.Input(text="!")),
        timeout=10,
    )
    assert nxt.prediction.position == there.position + 1


def test_resume_without_replay(stub: rpc.CellserveServiceStub, replica: rpc.CellserveServiceStub) -> None:
    sid = open_session(stub)
    _append(stub, sid, 0, "abc")
    blob = stub.Snapshot(svc.SnapshotRequest(session_id=sid), timeout=10).blob
    resumed = replica.Resume(svc.ResumeRequest(blob=blob), timeout=10)
    assert resumed.session.position == 3 and not resumed.HasField("prediction")


def test_tampered_blob_rejected(stub: rpc.CellserveServiceStub, replica: rpc.CellserveServiceStub) -> None:
    sid = open_session(stub)
    _append(stub, sid, 0, "abc")
    blob = bytearray(stub.Snapshot(svc.SnapshotRequest(session_id=sid), timeout=10).blob)
    for i in (len(blob) // 2, len(blob) - 1, 0):
        tampered = bytearray(blob)
        tampered[i] ^= 0x01
        err = rpc_error(replica.Resume, svc.ResumeRequest(blob=bytes(tampered)), timeout=10)
        assert err.code() == REJECTED, i
    err = rpc_error(replica.Resume, svc.ResumeRequest(blob=b"not a snapshot"), timeout=10)
    assert err.code() == REJECTED


def test_blob_of_other_weights_is_failed_precondition(
    stub: rpc.CellserveServiceStub, replica: rpc.CellserveServiceStub
) -> None:
    sid = open_session(stub, "tiny-gru")  # the replica's tiny-gru has other weights
    _append(stub, sid, 0, "abc")
    blob = stub.Snapshot(svc.SnapshotRequest(session_id=sid), timeout=10).blob
    err = rpc_error(replica.Resume, svc.ResumeRequest(blob=blob), timeout=10)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_blob_signed_with_another_key_rejected(model_dir: Path, stub: rpc.CellserveServiceStub) -> None:
    other = start_server(model_dir, env={"CELLSERVE_SNAPSHOT_KEY": "a-different-key"})
    try:
        with grpc.insecure_channel(other.target) as ch:
            other_stub = rpc.CellserveServiceStub(ch)
            sid = open_session(other_stub)
            _append(other_stub, sid, 0, "abc")
            blob = other_stub.Snapshot(svc.SnapshotRequest(session_id=sid), timeout=10).blob
    finally:
        assert other.terminate() == 0
    err = rpc_error(stub.Resume, svc.ResumeRequest(blob=blob), timeout=10)
    assert err.code() == REJECTED
