"""Every public method of the blocking API, against a real server, over both transports."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
from cellserve_client import (
    Cell,
    Client,
    ClosedError,
    Completion,
    CompletionChunk,
    FailoverPolicy,
    FinishReason,
    ModelInfo,
    Prediction,
    SessionInfo,
)
from servers import ServerProcess


@pytest.fixture
def client(server: ServerProcess, transport: str) -> Iterator[Client]:
    c = Client(server.target, transport=transport, timeout=60)
    yield c
    c.close()


def test_models(client: Client) -> None:
    models = client.models()
    assert {m.name for m in models} >= {"tiny-lstm"}
    lstm = next(m for m in models if m.name == "tiny-lstm")
    assert isinstance(lstm, ModelInfo) and lstm.cell is Cell.LSTM and lstm.is_default
    assert (lstm.layers, lstm.hidden) == (2, 32) and len(lstm.weights_sha256) == 64
    assert lstm.vocabulary[0] == "" and "a" in lstm.vocabulary
    assert lstm.validation_bits_per_char == pytest.approx(2.5)


def test_append_predicts_and_advances(client: Client) -> None:
    with client.open() as s:
        assert s.model.name == "tiny-lstm" and s.position == 0
        p = s.append("hello wor", logprobs=True, top_k=7)
        assert isinstance(p, Prediction) and p.position == 9 == s.position
        assert len(p.top) == 7 and len(p.logprobs) == 9
        probs = [prob for _, prob in p.top]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
        assert all(isinstance(c, str) and len(c) == 1 for c, _ in p.top)
        assert p.best == p.top[0][0] and s.last_prediction == p
        assert all(lp <= 0 and math.isfinite(lp) for lp in p.logprobs)
        q = s.append("l", top_k=0, gates=True)
        assert q.position == 10 and q.top == () and q.best is None
        assert [g.name for g in q.gates[0]] == ["f", "i", "g", "o", "c"] and len(q.gates[0][0].layers) == 2
        info = s.info()
        assert isinstance(info, SessionInfo) and info.position == 10 and info.session_id == s.session_id
        assert info.created_at is not None and info.model == "tiny-lstm"


def test_same_text_same_prediction_in_pieces_or_whole(client: Client) -> None:
    with client.open() as a, client.open() as b:
        whole = a.append("abcdefgh", logprobs=True)
        b.append("abcd", logprobs=True)
        rest = b.append("efgh", logprobs=True)
        assert rest.position == whole.position
        assert [c for c, _ in rest.top] == [c for c, _ in whole.top]


def test_long_text_is_sent_in_pieces(server: ServerProcess, transport: str) -> None:
    policy = FailoverPolicy(max_append_chars=4)
    with Client(server.target, transport=transport, failover=policy) as c, c.open() as s:
        p = s.append("0123456789", logprobs=True)
        assert p.position == 10 and len(p.logprobs) == 10 and len(p.top) == 5


def test_complete_streams_chunks_then_completions(client: Client) -> None:
    with client.open() as s:
        s.append("The ")
        stream = s.complete(max_chars=12, n=2, temperature=1.0, seed=7)
        chunks = list(stream)
        assert all(isinstance(c, CompletionChunk) for c in chunks)
        assert {c.alternative for c in chunks} == {0, 1}
        done = stream.completions
        assert [c.alternative for c in done] == [0, 1]
        for comp in done:
            assert isinstance(comp, Completion) and comp.finish_reason is FinishReason.LENGTH
            assert comp.text == "".join(c.text for c in chunks if c.alternative == comp.alternative)
            assert len(comp.text) == 12
        # same seed, same state: the same samples; the session itself did not move
        again = s.complete(max_chars=12, n=2, temperature=1.0, seed=7).collect()
        assert again == done and s.position == 4
        greedy = s.complete(max_chars=5).collect()
        assert len(greedy) == 1 and greedy[0].text == s.complete(max_chars=5).collect()[0].text


def test_complete_stop_string(client: Client) -> None:
    with client.open() as s:
        s.append("ab")
        full = s.complete(max_chars=20).collect()[0].text
        stop = full[3]
        cut = s.complete(max_chars=20, stop=[stop]).collect()[0]
        assert cut.finish_reason is FinishReason.STOP and cut.text == full[: full.index(stop) + 1]


def test_rewind_restores_the_earlier_prediction(client: Client) -> None:
    with client.open() as s:
        before = s.append("hello")
        s.append("xyz")
        assert s.rewind(3) == 5 and s.position == 5
        after = s.append("q")
        with client.open() as ref:
            ref.append("hello")
            want = ref.append("q")
        assert after.position == want.position == 6
        assert [c for c, _ in after.top] == [c for c, _ in want.top]
        assert [p for _, p in after.top] == pytest.approx([p for _, p in want.top], rel=1e-5)
        assert before.position == 5


def test_reset_goes_back_to_the_start(client: Client) -> None:
    with client.open() as s, client.open() as ref:
        first = s.append("abc")
        s.append("defg")
        assert s.reset() == 0 and s.position == 0
        assert s.append("abc") == first
        assert ref.append("abc") == first


def test_snapshot_and_resume_with_replay(client: Client) -> None:
    with client.open() as s:
        s.append("class Foo")
        blob = s.snapshot()
        assert isinstance(blob, bytes) and blob
        want = s.append("(object):", logprobs=True)
    with client.resume(blob, replay="(object):", logprobs=True) as r:
        assert r.position == want.position and r.last_prediction == want
        assert r.session_id and r.model.name == "tiny-lstm"
        assert r.append("x").position == want.position + 1
    with client.resume(blob) as r2:
        assert r2.position == 9 and r2.last_prediction is None


def test_gru_model_and_close(client: Client) -> None:
    s = client.open("tiny-gru")
    assert s.model.cell is Cell.GRU
    s.append("hi")
    s.close()
    s.close()  # idempotent
    assert s.closed
    with pytest.raises(ClosedError):
        s.append("x")
    client.close()
    with pytest.raises(ClosedError):
        client.models()


def test_routing_key_is_a_client_chosen_random_id(client: Client) -> None:
    with client.open() as a, client.open() as b:
        assert len(a.routing_key) == 32 and a.routing_key != b.routing_key
        assert a.routing_key != a.session_id  # not the server's id: chosen before OpenSession


def test_transports_give_identical_predictions(server: ServerProcess) -> None:
    text = "transports must agree, keystroke by keystroke"
    results = {}
    for transport in ("stream", "unary"):
        with Client(server.target, transport=transport) as c, c.open() as s:
            results[transport] = [s.append(ch, logprobs=True) for ch in text]
            results[transport].append(s.complete(max_chars=10, temperature=0.8, seed=3).collect())
    assert results["stream"] == results["unary"]
