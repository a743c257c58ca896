"""Ranked suggestions over the wire: the SDK's suggest (sync and async, stream and unary
transports) equals the offline beam search for LSTM and GRU, word and line scope; the session is
unchanged; bad requests are INVALID_ARGUMENT with a message naming the field."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cellserve.nn.checkpoint import load_model
from cellserve.nn.decode import Until, beam_search
from cellserve_client import AsyncClient, Client, InvalidInput, Suggestion
from cellserve_client._proto.cellserve.v1 import service_pb2 as svc
from cellserve_client._proto.cellserve.v1 import service_pb2_grpc as rpc
from servers import ServerProcess

PROMPT = "def main(x):\n    ret"


@pytest.fixture
def client(server: ServerProcess, transport: str) -> Iterator[Client]:
    c = Client(server.target, transport=transport, timeout=60)
    yield c
    c.close()


def offline(model_dir: Path, model: str, context: str, n: int, scope: Until, max_chars: int) -> list[Suggestion]:
    lm = load_model(model_dir / model, "cpu")
    want = beam_search(lm.model.eval(), lm.vocab, context, n=n, until=scope, max_chars=max_chars)
    return [Suggestion(s.text, s.logprob) for s in want]


def assert_same(got: list[Suggestion], want: list[Suggestion]) -> None:
    assert got and [s.text for s in got] == [s.text for s in want]
    for g, w in zip(got, want, strict=True):
        assert isinstance(g, Suggestion) and math.isclose(g.logprob, w.logprob, rel_tol=1e-4, abs_tol=1e-4)


@pytest.mark.parametrize("model", ["tiny-lstm", "tiny-gru"])
@pytest.mark.parametrize("scope", ["word", "line"])
def test_suggest_equals_offline_beam_search(client: Client, model_dir: Path, model: str, scope: Until) -> None:
    with client.open(model) as s:
        s.append(PROMPT)
        got = s.suggest(n=4, scope=scope, max_chars=12)
        assert_same(got, offline(model_dir, model, PROMPT, 4, scope, 12))
        # the session is unchanged: the next prediction equals one without the suggest
        after = s.append("u", top_k=5)
    with client.open(model) as ref:
        ref.append(PROMPT)
        plain = ref.append("u", top_k=5)
    assert after.position == plain.position == len(PROMPT) + 1
    assert [c for c, _ in after.top] == [c for c, _ in plain.top]
    for (_, p), (_, q) in zip(after.top, plain.top, strict=True):
        assert p == pytest.approx(q, abs=1e-6)


def test_async_suggest_pipelined_after_append(server: ServerProcess, model_dir: Path, transport: str) -> None:
    async def body() -> None:
        async with AsyncClient(server.target, transport=transport, timeout=60) as c:  # type: ignore[arg-type]
            s = await c.open("tiny-gru")
            fresh, _, after = await asyncio.gather(s.suggest(n=2), s.append("import o"), s.suggest(n=2))
            assert_same(fresh, offline(model_dir, "tiny-gru", "", 2, "word", 32))
            assert_same(after, offline(model_dir, "tiny-gru", "import o", 2, "word", 32))
            await s.close()

    asyncio.run(body())


def test_suggest_errors(client: Client) -> None:
    with client.open() as s:
        for kw, msg in [
            ({"n": 0}, "n is 0"),
            ({"n": 17}, "n is 17"),
            ({"max_chars": 0}, "max_chars is 0"),
            ({"max_chars": 129}, "max_chars is 129"),
            ({"scope": "paragraph"}, "scope is 'paragraph'"),
        ]:
            with pytest.raises(InvalidInput, match=msg):
                s.suggest(**kw)  # type: ignore[arg-type]
        assert s.append("a").position == 1  # the session goes on


def test_suggest_raw_grpc_codes(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.target) as ch:
        stub = rpc.CellserveServiceStub(ch)
        with pytest.raises(grpc.RpcError) as e:
            stub.Suggest(svc.SuggestRequest(session_id="0" * 32), timeout=30)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        sid = stub.OpenSession(svc.OpenSessionRequest(), timeout=30).session.session_id
        with pytest.raises(grpc.RpcError) as e:
            stub.Suggest(svc.SuggestRequest(session_id=sid, scope=9), timeout=30)  # type: ignore[arg-type]
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "scope is 9" in (e.value.details() or "")
        resp = stub.Suggest(svc.SuggestRequest(session_id=sid, n=2, scope=svc.SUGGEST_SCOPE_LINE), timeout=30)
        assert 1 <= len(resp.suggestions) <= 2
