"""Oracle over the wire: 32 concurrent streams with random interleavings and piece lengths
(1..300 characters, non-ASCII and out-of-vocabulary included); every prediction's top-k equals
the offline full-sequence forward of that session's text to 1e-5 (fp32)."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import grpc
import pytest
from cellserve_client._proto.cellserve.v1 import service_pb2 as svc
from cellserve_client._proto.cellserve.v1 import service_pb2_grpc as rpc
from cellserve_client._proto.cellserve.v1 import types_pb2 as types

from .conftest import ServerProcess
from .helpers import Offline

SESSIONS = 32
PIECES = 6
TOP_K = 8
ALPHABET = "abcdefghij klmnopqrstuvwxyz ABCXYZ 0123456789 .,;:()[]{}\n\té ü ß 中文 😀 ∑"


def random_piece(rng: random.Random) -> str:
    n = rng.choice([1, 1, 1, 2, 3, rng.randint(1, 300), rng.randint(200, 300)])
    return "".join(rng.choice(ALPHABET) for _ in range(n))


async def drive_session(
    stub: rpc.CellserveServiceStub, model: str, pieces: list[str], rng: random.Random
) -> tuple[str, list[svc.SessionResponse]]:
    """Opens a stream, appends the pieces in random pipelined bursts; returns the responses."""
    requests: asyncio.Queue[svc.SessionRequest | None] = asyncio.Queue()

    async def request_iter():  # type: ignore[no-untyped-def]
        while (r := await requests.get()) is not None:
            yield r

    call = stub.Session(request_iter(), timeout=240)
    await requests.put(svc.SessionRequest(request_id=1, open=svc.SessionRequest.Open(model=model)))
    opened = await call.read()
    assert opened.WhichOneof("result") == "opened", opened
    responses: list[svc.SessionResponse] = []
    offset, i = 0, 0
    while i < len(pieces):
        burst = rng.randint(1, 3)  # pipelined: several appends before reading their answers
        for piece in pieces[i : i + burst]:
            want_logprobs = rng.random() < 0.3
            await requests.put(
                svc.SessionRequest(
                    request_id=2 + i,
                    append=svc.SessionRequest.Append(
                        offset=offset, input=types.Input(text=piece), top_k=TOP_K, want_logprobs=want_logprobs
                    ),
                )
            )
            offset += len(piece)
            i += 1
        while len(responses) < i:
            responses.append(await call.read())
        await asyncio.sleep(rng.random() * 0.005)  # shuffle the interleaving across sessions
    await requests.put(None)
    assert await call.read() == grpc.aio.EOF
    return opened.opened.session.session_id, responses


async def run_all(target: str, model: str, seed: int) -> list[tuple[list[str], list[svc.SessionResponse]]]:
    rng = random.Random(seed)
    plans = [[random_piece(rng) for _ in range(PIECES)] for _ in range(SESSIONS)]
    async with grpc.aio.insecure_channel(target) as channel:
        stub = rpc.CellserveServiceStub(channel)
        results = await asyncio.gather(
            *(drive_session(stub, model, p, random.Random(seed * 1000 + j)) for j, p in enumerate(plans))
        )
    return [(plan, responses) for plan, (_, responses) in zip(plans, results, strict=True)]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tiny-lstm", "tiny-gru"])
def test_every_prediction_equals_offline_forward(server: ServerProcess, model_dir: Path, model: str) -> None:
    oracle = Offline(model_dir, model)
    checked = 0
    for plan, responses in asyncio.run(run_all(server.target, model, seed=len(model))):
        text = "".join(plan)
        log_probs = oracle.log_probs(text)  # one forward per session; rows at piece ends
        end = 0
        for j, (piece, r) in enumerate(zip(plan, responses, strict=True)):
            assert r.request_id == 2 + j and r.WhichOneof("result") == "prediction", r
            start, end = end, end + len(piece)
            p = r.prediction
            assert p.position == end and not p.replayed
            oracle.check_prediction(p, log_probs[end - 1], TOP_K)
            if p.logprobs:  # log p(text[t] | text[:t]) for each appended character after the first
                ids = oracle.vocab.encode(text)
                for t in range(max(start, 1), end):
                    assert abs(p.logprobs[t - start] - log_probs[t - 1, ids[t]].item()) <= 1e-4
            checked += 1
    assert checked == SESSIONS * PIECES
