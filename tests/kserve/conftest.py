"""KServe v2 tests: tritonclient (sync and grpc.aio) against real servers.

tritonclient[grpc] declares protobuf<7 while cellserve's generated code needs protobuf 7, so
it is installed without its dependencies (see .ci/run); its generated code runs on protobuf 7.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from cellserve_client._proto.cellserve.v1 import service_pb2 as svc
from cellserve_client._proto.cellserve.v1 import service_pb2_grpc as rpc
from cellserve_client._proto.cellserve.v1 import types_pb2 as types
from servers import ServerProcess, start_server

tg = pytest.importorskip(
    "tritonclient.grpc", reason="tritonclient is not installed: pip install --no-deps 'tritonclient[grpc]' (.ci/run)"
)

MODEL = "tiny-lstm"


# As tests/api: every KServe test runs against one process and against an engine core with two
# frontends (the surface goes through the ZMQ engine client, statistics included).
SHAPES: dict[str, tuple[str, ...]] = {
    "one-process": ("--frontends", "0"),
    "two-frontends": ("--frontends", "2"),
    "two-cores": ("--frontends", "2", "--cores", "2"),  # sessions partitioned between two cores
}


def serving(model_dir: Path, shape: str) -> Iterator[ServerProcess]:
    """A server of ``model_dir`` in one of SHAPES, stopped when the fixture ends."""
    s = start_server(model_dir, *SHAPES[shape])
    try:
        yield s
    finally:
        s.terminate()


@pytest.fixture(scope="session", params=list(SHAPES), ids=list(SHAPES))
def kserver(model_dir: Path, request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    yield from serving(model_dir, request.param)


@pytest.fixture
def triton(kserver: ServerProcess) -> Iterator[tg.InferenceServerClient]:
    client = tg.InferenceServerClient(kserver.target)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def native(kserver: ServerProcess) -> Iterator[rpc.CellserveServiceStub]:
    with grpc.insecure_channel(kserver.target) as ch:
        yield rpc.CellserveServiceStub(ch)


def text_input(text: str | bytes) -> tg.InferInput:
    tensor = tg.InferInput("TEXT", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([text], dtype=object))
    return tensor


def offset_input(offset: int) -> tg.InferInput:
    tensor = tg.InferInput("OFFSET", [1], "UINT64")
    tensor.set_data_from_numpy(np.array([offset], dtype=np.uint64))
    return tensor


def top(result: object) -> list[tuple[str, float]]:
    """(character, probability) pairs of a result's TOP_CHARS/TOP_PROBS."""
    chars = [c.decode("utf-8") for c in result.as_numpy("TOP_CHARS")]  # type: ignore[attr-defined]
    probs = [float(p) for p in result.as_numpy("TOP_PROBS")]  # type: ignore[attr-defined]
    return list(zip(chars, probs, strict=True))


def position(result: object) -> int:
    return int(result.as_numpy("POSITION")[0])  # type: ignore[attr-defined]


def native_predictions(
    stub: rpc.CellserveServiceStub, pieces: list[str], top_k: int = 5
) -> list[list[tuple[str, float]]]:
    """The native API's top-k after each piece, in a fresh session of MODEL."""
    sid = stub.OpenSession(svc.OpenSessionRequest(model=MODEL), timeout=10).session.session_id
    out, offset = [], 0
    try:
        for piece in pieces:
            r = stub.Append(
                svc.AppendRequest(session_id=sid, offset=offset, input=types.Input(text=piece), top_k=top_k), timeout=30
            )
            out.append([(e.character, e.probability) for e in r.prediction.top_characters.entries])
            offset += len(piece)
    finally:
        stub.CloseSession(svc.CloseSessionRequest(session_id=sid), timeout=10)
    return out


def assert_same(got: list[tuple[str, float]], want: list[tuple[str, float]]) -> None:
    """Same characters, probabilities equal to fp32 rounding (the two ran in different batches)."""
    assert [c for c, _ in got] == [c for c, _ in want], (got, want)
    for (_, p), (_, q) in zip(got, want, strict=True):
        assert abs(p - q) <= 1e-6, (got, want)
