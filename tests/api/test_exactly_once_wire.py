"""Exactly-once over the wire: a duplicate is answered from cache, a gap or a stale piece is
ABORTED with the expected offset, and nothing is applied twice."""

from __future__ import annotations

from pathlib import Path

import grpc
from cellserve_client._proto.cellserve.v1 import service_pb2 as svc
from cellserve_client._proto.cellserve.v1 import service_pb2_grpc as rpc
from cellserve_client._proto.cellserve.v1 import types_pb2 as types

from .conftest import open_session, rpc_error, trailing
from .helpers import Offline, SyncStream, error_of


def _append(stub: rpc.CellserveServiceStub, sid: str, offset: int, text: str) -> types.Prediction:
    req = svc.AppendRequest(session_id=sid, offset=offset, input=types.Input(text=text), top_k=6)
    return stub.Append(req, timeout=30).prediction


def test_unary_duplicate_gap_and_reorder(stub: rpc.CellserveServiceStub, model_dir: Path) -> None:
    sid = open_session(stub)
    first = _append(stub, sid, 0, "hello")
    again = _append(stub, sid, 0, "hello")  # a retry of the last applied piece
    assert again.replayed and not first.replayed
    assert again.position == 5 and again.top_characters == first.top_characters

    for offset, text in ((9, "x"), (0, "help!"), (2, "llo")):  # gap, same offset other text, stale
        err = rpc_error(_append, stub, sid, offset, text)
        assert err.code() == grpc.StatusCode.ABORTED, (offset, text)
        assert "expected offset 5" in err.details() and trailing(err)["expected-offset"] == "5"

    p = _append(stub, sid, 5, " world")
    assert p.position == 11 and not p.replayed
    oracle = Offline(model_dir, "tiny-lstm")
    oracle.check_prediction(p, oracle.log_probs("hello world")[-1], 6)  # "hello" applied once


def test_stream_duplicate_and_gap_in_band(stub: rpc.CellserveServiceStub) -> None:
    s = SyncStream(stub)
    try:
        s.open()
        first = s.append(0, "ab", top_k=6).prediction
        dup = s.append(0, "ab", top_k=6).prediction
        assert dup.replayed and dup.position == 2 and dup.top_characters == first.top_characters
        r = s.append(4, "zz")
        code, msg = error_of(r)
        assert code == grpc.StatusCode.ABORTED and r.error.expected_offset == 2 and "expected offset 2" in msg
        assert s.append(2, "c").prediction.position == 3
    finally:
        s.cancel()
