"""Suggest over the wire in both server shapes (one process; frontends + engine core over ZMQ):
the ranked suggestions equal the offline beam search, and the session is left as it was."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from cellserve.nn.checkpoint import load_model
from cellserve.nn.decode import beam_search
from cellserve_client._proto.cellserve.v1 import service_pb2 as svc
from cellserve_client._proto.cellserve.v1 import service_pb2_grpc as rpc
from cellserve_client._proto.cellserve.v1 import types_pb2 as types


@pytest.mark.parametrize("scope", [svc.SUGGEST_SCOPE_WORD, svc.SUGGEST_SCOPE_LINE])
def test_suggest_equals_offline_beam_search(stub: rpc.CellserveServiceStub, model_dir: Path, scope: int) -> None:
    text = "def main(x):\n    ret"
    sid = stub.OpenSession(svc.OpenSessionRequest(model="tiny-lstm"), timeout=60).session.session_id
    stub.Append(svc.AppendRequest(session_id=sid, offset=0, input=types.Input(text=text)), timeout=60)
    got = stub.Suggest(svc.SuggestRequest(session_id=sid, n=3, scope=scope), timeout=60).suggestions  # type: ignore[arg-type]
    lm = load_model(model_dir / "tiny-lstm")
    until = "word" if scope == svc.SUGGEST_SCOPE_WORD else "line"
    want = beam_search(lm.model.eval(), lm.vocab, text, n=3, until=until, max_chars=32)
    assert [g.text for g in got] == [w.text for w in want]
    for g, w in zip(got, want, strict=True):
        assert math.isclose(g.logprob, w.logprob, rel_tol=1e-4, abs_tol=1e-4)
    # the session did not move: the next append is still accepted at the same offset
    after = stub.Append(svc.AppendRequest(session_id=sid, offset=len(text), input=types.Input(text="u")), timeout=60)
    assert after.prediction.position == len(text) + 1
