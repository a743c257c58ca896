"""The bidirectional Session stream over the wire: every operation, request-id echo, response
order, pipelining, and in-band errors after which the stream goes on."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from cellserve_client._proto.cellserve.v1 import service_pb2 as svc
from cellserve_client._proto.cellserve.v1 import service_pb2_grpc as rpc
from cellserve_client._proto.cellserve.v1 import types_pb2 as types

from .helpers import Offline, SyncStream, error_of

Req = svc.SessionRequest


@pytest.fixture
def stream(stub: rpc.CellserveServiceStub) -> SyncStream:
    s = SyncStream(stub)
    yield s
    s.cancel()


def test_every_operation(stream: SyncStream, stub: rpc.CellserveServiceStub, model_dir: Path) -> None:
    opened = stream.open("tiny-gru")
    sid = opened.session.session_id
    assert opened.model.name == "tiny-gru" and "é" in opened.model.vocabulary.characters

    r = stream.append(0, "hello wörld", top_k=3)
    assert r.prediction.position == 11
    oracle = Offline(model_dir, "tiny-gru")
    oracle.check_prediction(r.prediction, oracle.log_probs("hello wörld")[-1], 3)

    rid = stream.send(complete=Req.Complete(max_chars=6, n=2))
    chunks = []
    while not (chunks and all(any(c.done and c.alternative == a for c in chunks) for a in (0, 1))):
        response = stream.recv()
        assert response.request_id == rid and response.WhichOneof("result") == "completion_chunk", response
        chunks.append(response.completion_chunk)
    assert all(len("".join(c.text for c in chunks if c.alternative == a)) == 6 for a in (0, 1))
    assert stub.GetSession(svc.GetSessionRequest(session_id=sid)).session.position == 11  # unchanged

    assert stream.ask(rewind=Req.Rewind(chars=6)).rewound.position == 5
    snap = stream.ask(snapshot=Req.Snapshot()).snapshot.blob
    assert len(snap) > 0
    assert stream.ask(reset=Req.Reset()).reset.position == 0
    assert stream.append(0, "ab").prediction.position == 2
    assert stream.ask(close=Req.Close()).WhichOneof("result") == "closed"
    code, _ = error_of(stream.append(2, "c"))  # the session is gone; the stream is not
    assert code == grpc.StatusCode.NOT_FOUND
    code, _ = error_of(stream.append(2, "c"))
    assert code == grpc.StatusCode.NOT_FOUND


def test_in_band_errors_keep_the_stream_going(stream: SyncStream) -> None:
    code, msg = error_of(stream.append(0, "a"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "open or attach" in msg
    code, _ = error_of(stream.ask(open=Req.Open(model="nope")))
    assert code == grpc.StatusCode.NOT_FOUND
    stream.open()
    assert stream.append(0, "abc").prediction.position == 3

    r = stream.append(7, "x")
    code, msg = error_of(r)
    assert code == grpc.StatusCode.ABORTED and "expected offset 3" in msg and r.error.expected_offset == 3
    code, msg = error_of(stream.append(3, "x", top_k=1000))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "top_k is 1000" in msg
    code, msg = error_of(stream.ask(complete=Req.Complete(n=100)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "n is 100" in msg
    code, _ = error_of(stream.ask())  # no operation at all
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, _ = error_of(stream.ask(open=Req.Open()))  # one session per stream
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    code, _ = error_of(stream.ask(rewind=Req.Rewind(chars=1000)))  # more than the position
    assert code == grpc.StatusCode.INVALID_ARGUMENT

    assert stream.append(3, "d").prediction.position == 4  # and it still works


def test_pipelined_appends_answer_in_order(stream: SyncStream) -> None:
    stream.open()
    text = "The quick brown fox jumps over the lazy dog. " * 3
    ids = [stream.send(append=Req.Append(offset=i, input=types.Input(text=ch))) for i, ch in enumerate(text)]
    for i, rid in enumerate(ids):
        r = stream.recv()
        assert r.request_id == rid and r.prediction.position == i + 1, r


def test_only_last_answers_every_request(stream: SyncStream) -> None:
    stream.open()
    # A long piece first: while it runs, the keystrokes behind it queue up and are coalesced.
    text = "z" * 4000 + "abcdefghijklmnopqrstuvwxyz" * 4
    pieces = [text[:4000], *text[4000:]]
    ids, offset = [], 0
    for piece in pieces:
        ids.append(stream.send(append=Req.Append(offset=offset, input=types.Input(text=piece), only_last=True)))
        offset += len(piece)
    responses = [stream.recv() for _ in ids]
    assert [r.request_id for r in responses] == ids  # every request is answered exactly once
    assert [r.prediction.position for r in responses] == [4000 + i for i in range(len(pieces))]
    last = responses[-1].prediction
    assert not last.superseded and len(last.top_characters.entries) == 5
    for r in responses:  # a superseded answer carries only the position
        assert r.prediction.superseded != r.prediction.HasField("top_characters")
    assert any(r.prediction.superseded for r in responses)  # coalescing did happen


def test_attach_from_another_stream(stub: rpc.CellserveServiceStub) -> None:
    a, b, c = SyncStream(stub), SyncStream(stub), SyncStream(stub, metadata=[("authorization", "someone else")])
    try:
        sid = a.open().session.session_id
        assert a.append(0, "abc").prediction.position == 3
        attached = b.ask(attach=Req.Attach(session_id=sid)).opened
        assert attached.session.session_id == sid and attached.session.position == 3
        assert b.append(3, "d").prediction.position == 4
        code, _ = error_of(c.ask(attach=Req.Attach(session_id=sid)))  # another owner: invisible
        assert code == grpc.StatusCode.NOT_FOUND
        code, _ = error_of(c.ask(attach=Req.Attach(session_id="f" * 32)))
        assert code == grpc.StatusCode.NOT_FOUND
    finally:
        for s in (a, b, c):
            s.cancel()


def test_half_close_ends_the_stream_cleanly(stub: rpc.CellserveServiceStub) -> None:
    s = SyncStream(stub)
    s.open()
    rid = s.send(append=Req.Append(offset=0, input=types.Input(text="xyz")))
    s.close()  # half-close with a request still unanswered: it is answered, then the stream ends
    r = s.recv()
    assert r.request_id == rid and r.prediction.position == 3
    with pytest.raises(StopIteration):
        s.recv()
    assert s.call.code() == grpc.StatusCode.OK
