"""API test fixtures: the shared server (see ``servers.py``), a channel and a stub."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cellserve_client._proto.cellserve.v1 import service_pb2 as svc
from cellserve_client._proto.cellserve.v1 import service_pb2_grpc as rpc
from servers import SNAPSHOT_KEY, ServerProcess, start_server

__all__ = ["SNAPSHOT_KEY", "ServerProcess", "start_server"]


# Every test on the shared server runs against both shapes of it: one process, and an engine
# core behind two frontend processes (whose port spreads connections between them).
SHAPES: dict[str, tuple[str, ...]] = {
    "one-process": ("--frontends", "0"),
    "two-frontends": ("--frontends", "2"),
    "two-cores": ("--frontends", "2", "--cores", "2"),  # sessions partitioned between two cores
}


@pytest.fixture(scope="session", params=list(SHAPES), ids=list(SHAPES))
def server(model_dir: Path, request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    """The shared server: default settings, both tiny models, a snapshot key from the
    environment (so a second process can resume its snapshots)."""
    s = start_server(model_dir, *SHAPES[request.param], env={"CELLSERVE_SNAPSHOT_KEY": SNAPSHOT_KEY})
    try:
        yield s
    finally:
        s.terminate()


@pytest.fixture(scope="session")
def channel(server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.target) as ch:
        grpc.channel_ready_future(ch).result(timeout=30)
        yield ch


@pytest.fixture
def stub(channel: grpc.Channel) -> rpc.CellserveServiceStub:
    return rpc.CellserveServiceStub(channel)


def open_session(stub: rpc.CellserveServiceStub, model: str = "", **kw: object) -> str:
    return stub.OpenSession(svc.OpenSessionRequest(model=model), **kw).session.session_id  # type: ignore[arg-type]


def rpc_error(fn: object, *args: object, **kw: object) -> grpc.RpcError:
    """Calls ``fn`` and returns the RpcError it raised (fails the test if it did not)."""
    try:
        fn(*args, **kw)  # type: ignore[operator]
    except grpc.RpcError as e:
        return e
    pytest.fail("expected an RpcError")


def trailing(err: grpc.RpcError) -> dict[str, str]:
    return {k: v for k, v in (err.trailing_metadata() or ())}  # type: ignore[attr-defined]
