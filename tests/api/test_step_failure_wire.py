"""Failure is an output, over the wire, in both server shapes: an iteration that breaks in any
phase (the runner's prepare, forward, pick, unpack or commit, or the core staging the answers)
answers its callers INTERNAL with the generic message, changes no session, and the server
goes on serving: the same piece sent again is applied once and matches the offline model.

The faults are injected by ``tests/faults/sitecustomize.py`` into every process of the server.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cellserve.api.status import INTERNAL_MESSAGE
from cellserve_client._proto.cellserve.v1 import service_pb2 as svc
from cellserve_client._proto.cellserve.v1 import service_pb2_grpc as rpc
from faults.sitecustomize import TRIGGERS

from .conftest import SHAPES, ServerProcess, open_session, rpc_error, start_server
from .helpers import Offline
from .test_unary import append

FAULTS = str(Path(__file__).resolve().parents[1] / "faults")


@pytest.fixture(scope="module", params=list(SHAPES), ids=list(SHAPES))
def faulty_server(model_dir: Path, request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    path = os.pathsep.join(p for p in (FAULTS, os.environ.get("PYTHONPATH", "")) if p)
    s = start_server(model_dir, *SHAPES[request.param], env={"CELLSERVE_TEST_FAULTS": "1", "PYTHONPATH": path})
    try:
        yield s
    finally:
        s.terminate()


def test_every_failing_phase_is_answered_and_changes_nothing(faulty_server: ServerProcess, model_dir: Path) -> None:
    oracle = Offline(model_dir, "tiny-lstm")
    with grpc.insecure_channel(faulty_server.target) as ch:
        stub = rpc.CellserveServiceStub(ch)
        for phase, n in TRIGGERS.items():
            sid = open_session(stub, timeout=30)
            append(stub, sid, 0, "hello ")
            piece = ("abcdefghij" * 5)[:n]
            err = rpc_error(append, stub, sid, 6, piece)
            assert err.code() == grpc.StatusCode.INTERNAL, phase  # type: ignore[attr-defined]
            assert err.details() == INTERNAL_MESSAGE  # type: ignore[attr-defined]
            got = stub.GetSession(svc.GetSessionRequest(session_id=sid), timeout=10).session
            assert got.position == 6, phase  # nothing of the failed iteration landed
            p = append(stub, sid, 6, piece, top_k=4)  # the same piece again: applied once
            assert p.position == 6 + n and not p.replayed
            oracle.check_prediction(p, oracle.log_probs("hello " + piece)[-1], 4)
            p = append(stub, sid, 6 + n, "!", top_k=4)
            oracle.check_prediction(p, oracle.log_probs("hello " + piece + "!")[-1], 4)
        assert faulty_server.proc.poll() is None  # the server stayed up
