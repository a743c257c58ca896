"""The unary calls over the wire, and the status code of each failure."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from cellserve_client._proto.cellserve.v1 import service_pb2 as svc
from cellserve_client._proto.cellserve.v1 import service_pb2_grpc as rpc
from cellserve_client._proto.cellserve.v1 import types_pb2 as types

from .conftest import open_session, rpc_error, trailing
from .helpers import Offline

Stub = rpc.CellserveServiceStub


def append(stub: Stub, sid: str, offset: int, text: str, **kw: object) -> types.Prediction:
    req = svc.AppendRequest(session_id=sid, offset=offset, input=types.Input(text=text), **kw)  # type: ignore[arg-type]
    return stub.Append(req, timeout=30).prediction


def test_list_models(stub: Stub, model_dir: Path) -> None:
    models = {m.name: m for m in stub.ListModels(svc.ListModelsRequest(), timeout=10).models}
    assert set(models) == {"tiny-lstm", "tiny-gru"}
    lstm, gru = models["tiny-lstm"], models["tiny-gru"]
    assert lstm.is_default and not gru.is_default
    assert (lstm.cell, gru.cell) == (types.CELL_LSTM, types.CELL_GRU)
    assert (lstm.layers, lstm.hidden) == (2, 32)
    assert list(lstm.vocabulary.characters) == Offline(model_dir, "tiny-lstm").vocab.chars
    assert len(lstm.weights_sha256) == 64 and lstm.weights_sha256 != gru.weights_sha256
    assert lstm.validation_bits_per_char == pytest.approx(2.5)


def test_session_lifecycle(stub: Stub, model_dir: Path) -> None:
    opened = stub.OpenSession(svc.OpenSessionRequest(), timeout=10)
    sid = opened.session.session_id
    assert len(sid) == 32 and int(sid, 16) >= 0
    assert opened.model.name == "tiny-lstm" and opened.session.position == 0
    assert opened.session.created_at.seconds > 0

    oracle = Offline(model_dir, "tiny-lstm")
    p = append(stub, sid, 0, "def main():", top_k=4)
    assert p.position == 11
    oracle.check_prediction(p, oracle.log_probs("def main():")[-1], 4)
    p = append(stub, sid, 11, "\n    ré", want_logprobs=True, want_gates=True)
    assert p.position == 18 and len(p.logprobs) == 7 and len(p.gates) == 7
    assert [g.name for g in p.gates[0].gates] == ["f", "i", "g", "o", "c"]
    assert all(len(g.layers) == 2 for g in p.gates[0].gates)
    assert len(p.top_characters.entries) == 5  # the default top_k
    assert not append(stub, sid, 18, "x", top_k=0).HasField("top_characters")

    assert stub.GetSession(svc.GetSessionRequest(session_id=sid), timeout=10).session.position == 19
    assert stub.Rewind(svc.RewindRequest(session_id=sid, chars=8), timeout=10).session.position == 11
    p = append(stub, sid, 11, "\n", top_k=4)  # after the rewind the state is that of "def main():"
    oracle.check_prediction(p, oracle.log_probs("def main():\n")[-1], 4)
    assert stub.Reset(svc.ResetRequest(session_id=sid), timeout=10).session.position == 0
    p = append(stub, sid, 0, "x", top_k=4)
    oracle.check_prediction(p, oracle.log_probs("x")[-1], 4)

    stub.CloseSession(svc.CloseSessionRequest(session_id=sid), timeout=10)
    err = rpc_error(stub.GetSession, svc.GetSessionRequest(session_id=sid), timeout=10)
    assert err.code() == grpc.StatusCode.NOT_FOUND


def test_gru_session(stub: Stub, model_dir: Path) -> None:
    sid = open_session(stub, "tiny-gru")
    p = append(stub, sid, 0, "import os", top_k=3, want_gates=True)
    oracle = Offline(model_dir, "tiny-gru")
    oracle.check_prediction(p, oracle.log_probs("import os")[-1], 3)
    assert [g.name for g in p.gates[-1].gates] == ["r", "z", "n"]


def test_complete_greedy_equals_offline_and_leaves_session(stub: Stub, model_dir: Path) -> None:
    sid = open_session(stub)
    append(stub, sid, 0, "for i in ")
    chunks = list(stub.Complete(svc.CompleteRequest(session_id=sid, max_chars=12, n=2), timeout=30))
    texts = {0: "", 1: ""}
    for c in chunks:
        texts[c.chunk.alternative] += c.chunk.text
    done = [c.chunk for c in chunks if c.chunk.done]
    assert sorted(d.alternative for d in done) == [0, 1]
    assert all(d.finish_reason == types.FINISH_REASON_LENGTH for d in done)
    greedy = Offline(model_dir, "tiny-lstm").greedy("for i in ", 12)
    assert texts[0] == texts[1] == greedy
    assert stub.GetSession(svc.GetSessionRequest(session_id=sid), timeout=10).session.position == 9


def test_complete_sampling_repeats_with_seed(stub: Stub) -> None:
    sid = open_session(stub)
    append(stub, sid, 0, "x = ")
    req = svc.CompleteRequest(session_id=sid, max_chars=20, temperature=1.0, top_p=0.9, seed=7)

    def text() -> str:
        return "".join(c.chunk.text for c in stub.Complete(req, timeout=30))

    assert text() == text()


def test_owner_isolation(stub: Stub) -> None:
    sid = open_session(stub, metadata=[("authorization", "Bearer alice")])
    for md in ([("authorization", "Bearer bob")], None):
        err = rpc_error(stub.GetSession, svc.GetSessionRequest(session_id=sid), metadata=md, timeout=10)
        assert err.code() == grpc.StatusCode.NOT_FOUND
    ok = stub.GetSession(svc.GetSessionRequest(session_id=sid), metadata=[("authorization", "Bearer alice")])
    assert ok.session.session_id == sid


def test_not_found(stub: Stub) -> None:
    err = rpc_error(stub.GetSession, svc.GetSessionRequest(session_id="0" * 32), timeout=10)
    assert err.code() == grpc.StatusCode.NOT_FOUND
    err = rpc_error(stub.OpenSession, svc.OpenSessionRequest(model="no-such-model"), timeout=10)
    assert err.code() == grpc.StatusCode.NOT_FOUND


def _in(text: str) -> types.Input:
    return types.Input(text=text)


@pytest.mark.parametrize(
    ("method", "fields", "needle"),
    [
        ("Append", {"session_id": "", "input": _in("a")}, "session_id is required"),
        ("Append", {"top_k": 65, "input": _in("a")}, "top_k is 65"),
        ("Append", {}, "input is required"),
        ("Append", {"input": _in("")}, "input.text is empty"),
        ("Append", {"input": _in("a" * 4097)}, "4097 characters"),
        ("Complete", {"max_chars": 257}, "max_chars is 257"),
        ("Complete", {"n": 9}, "n is 9"),
        ("Complete", {"temperature": -1}, "temperature"),
        ("Complete", {"top_p": 0}, "top_p"),
        ("Resume", {}, "blob is required"),
    ],
)
def test_invalid_argument(stub: Stub, method: str, fields: dict[str, object], needle: str) -> None:
    request_type = {"Append": svc.AppendRequest, "Complete": svc.CompleteRequest, "Resume": svc.ResumeRequest}[method]
    if method != "Resume":
        fields = {"session_id": open_session(stub), **fields}
    request = request_type(**fields)
    if method == "Complete":
        err = rpc_error(lambda r: list(stub.Complete(r, timeout=10)), request)
    else:
        err = rpc_error(getattr(stub, method), request, timeout=10)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in err.details()


def test_aborted_carries_expected_offset(stub: Stub) -> None:
    sid = open_session(stub)
    append(stub, sid, 0, "abc")
    err = rpc_error(append, stub, sid, 5, "x")
    assert err.code() == grpc.StatusCode.ABORTED
    assert "expected offset 3" in err.details() and trailing(err)["expected-offset"] == "3"


def test_failed_precondition_rewind_beyond_window(stub: Stub) -> None:
    sid = open_session(stub)
    append(stub, sid, 0, "a" * 600)  # default rewind_window: 256
    err = rpc_error(stub.Rewind, svc.RewindRequest(session_id=sid, chars=590), timeout=10)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
