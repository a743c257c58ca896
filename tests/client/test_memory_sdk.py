"""The session memory through real servers and the SDK: predictions, the switches and
failover, in both server shapes; every prediction equals the offline reference (the model
mixed with a memory over the session's text, ``memory/reference.py``)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from cellserve.nn.checkpoint import LoadedModel
from cellserve_client import Client, FailoverPolicy, Prediction
from memory_reference import MEMORY_MODEL as MODEL
from memory_reference import offline
from servers import ServerProcess, start_server

from .conftest import KEY_ENV

TEXT = "def area(self):\n    return self.width * self.height\n\ndef perimeter(self):\n    return self.wi"
SHAPES = {"one-process": "0", "two-frontends": "2"}


def check(lm: LoadedModel, pred: Prediction, lp_at: torch.Tensor) -> None:
    for ch, p in pred.top:
        assert math.isclose(p, lp_at[lm.vocab.id(ch)].exp().item(), abs_tol=1e-5), (ch, p)
    assert [p for _, p in pred.top] == sorted((p for _, p in pred.top), reverse=True)


@pytest.fixture(params=list(SHAPES))
def server(request: pytest.FixtureRequest, memory_model_dir: Path) -> Iterator[ServerProcess]:
    s = start_server(memory_model_dir, "--frontends", SHAPES[request.param], env=KEY_ENV)
    try:
        yield s
    finally:
        s.terminate()


def test_predictions_and_switches(server: ServerProcess, memory_model_dir: Path) -> None:
    lm, mixed = offline(memory_model_dir, TEXT)
    _, plain = offline(memory_model_dir, TEXT, mixed=False)
    with Client(server.target) as c:
        with c.open(MODEL) as s:
            for a in range(0, len(TEXT), 9):  # pieces of 9: positions inside and at the ends
                pred = s.append(TEXT[a : a + 9], top_k=5, logprobs=True)
                check(lm, pred, mixed[pred.position - 1])
                for j, got in enumerate(pred.logprobs):
                    if a + j:
                        assert math.isclose(got, mixed[a + j - 1][lm.vocab.id(TEXT[a + j])].item(), abs_tol=1e-4)
            done = s.complete(max_chars=6).collect()
            plain_done = s.complete(max_chars=6, memory=False).collect()
            assert done[0].text != plain_done[0].text
            check(lm, s.append("d", top_k=5, memory=False), offline(memory_model_dir, TEXT + "d", mixed=False)[1][-1])
        with c.open(MODEL, memory=False) as s:
            check(lm, s.append(TEXT, top_k=5), plain[-1])


def test_failover_carries_the_memory(memory_model_dir: Path) -> None:
    """The SDK's failover (snapshot blob with the memory inside, then replay) is bit-exact."""
    a = start_server(memory_model_dir, env=KEY_ENV)
    b = start_server(memory_model_dir, "--frontends", "2", env=KEY_ENV)
    try:
        policy = FailoverPolicy(snapshot_every_chars=16, snapshot_every_s=None, backoff_initial_s=0.01)
        got = []
        with Client([a.target, b.target], failover=policy) as c, c.open(MODEL) as s:
            for i, ch in enumerate(TEXT):
                if i == 60:
                    a.kill()
                got.append(s.append(ch, top_k=5, logprobs=True))
            assert s.failovers == 1
        with Client(b.target) as c, c.open(MODEL) as s:
            want = [s.append(ch, top_k=5, logprobs=True) for ch in TEXT]
        assert got == want
        lm, mixed = offline(memory_model_dir, TEXT)
        check(lm, got[-1], mixed[-1])
    finally:
        a.kill()
        b.terminate()
