"""Speculative keystrokes over the wire, in both server shapes: a typist at a human pace on a
server with speculation (int8, a model with session memory) gets exactly the answers, state
and snapshots of a server without it, and the hits show in the metrics."""

from __future__ import annotations

import random
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from cellserve.engine import snapshot as snap
from cellserve.nn import precision as prec
from cellserve_client import Client
from prometheus_client.parser import text_string_to_metric_families

from .conftest import SHAPES, ServerProcess, start_server

pytestmark = pytest.mark.skipif(
    "int8" not in prec.available(torch.device("cpu")), reason="this torch has no quantized CPU engine"
)
KEY = "speculation-wire-test-key"
TEXT = "import os\n\ndef main(argv):\n    return os.path.join(argv[0], argv[1])\n"
PAUSE_S = 0.04  # between keystrokes: the engine is idle, so it guesses


@pytest.fixture(scope="module", params=list(SHAPES), ids=list(SHAPES))
def servers(memory_model_dir: Path, request: pytest.FixtureRequest) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    shape = SHAPES[request.param]
    env = {"CELLSERVE_SNAPSHOT_KEY": KEY}
    on = start_server(memory_model_dir, "--precision", "int8", *shape, env=env)
    try:
        off = start_server(memory_model_dir, "--precision", "int8", *shape, "--set", "speculation=false", env=env)
        try:
            yield on, off
        finally:
            off.terminate()
    finally:
        on.terminate()


def hits(server: ServerProcess) -> float:
    """The server's speculation hits as /metrics shows them."""
    with urllib.request.urlopen(f"http://{server.metrics_target}/metrics", timeout=10) as response:
        body = response.read().decode()
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            if s.name == "cellserve_speculation_keystrokes_total" and s.labels.get("result") == "hit":
                return float(s.value)
    raise AssertionError("no speculation hit counter exported")


def test_a_typist_gets_the_same_bits_with_and_without_speculation(servers: tuple[ServerProcess, ServerProcess]) -> None:
    on, off = servers
    rng = random.Random(7)
    with Client(on.target) as c_on, Client(off.target) as c_off, c_on.open() as s_on, c_off.open() as s_off:
        sessions = (s_on, s_off)
        at = 0
        last = None
        for step in range(70):
            r = rng.random()
            if r < 0.08 and step > 3:  # a backspace or two between keystrokes
                n = rng.randint(1, 2)
                assert s_on.rewind(n) == s_off.rewind(n)
                continue
            if r < 0.5 and last is not None and last.top:  # a likely character: usually a hit
                ch = rng.choice(last.top[:4])[0]
            else:  # the text's next one: a hit or a miss
                ch, at = TEXT[at % len(TEXT)], at + 1
            got = [s.append(ch, top_k=5, logprobs=True) for s in sessions]
            assert got[0] == got[1]
            last = got[0]
            time.sleep(PAUSE_S)
        a, b = (snap.decode(s.snapshot(), KEY.encode()) for s in sessions)
        assert (a.position, a.tensors, a.memory) == (b.position, b.tensors, b.memory)
    deadline = time.monotonic() + 10
    while hits(on) < 10 and time.monotonic() < deadline:  # the counters reach /metrics on a poll
        time.sleep(0.2)
    assert hits(on) >= 10
    assert hits(off) == 0
