"""KServe TOP_PROBS of a model that ships a mixer: the mixed distribution (the model with the
session memory over the sequence's text), equal to the offline reference, in both shapes."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from memory_reference import MEMORY_MODEL, offline
from servers import ServerProcess

from .conftest import SHAPES, position, serving, text_input, tg, top

PIECES = ["import os\nimport sys\n", "def main():\n    os.", "path.join(sys.", "argv[0], os.pa"]
_ids = itertools.count(5000)


@pytest.fixture(scope="module", params=list(SHAPES), ids=list(SHAPES))
def mem_server(memory_model_dir: Path, request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    yield from serving(memory_model_dir, request.param)


def test_top_probs_are_the_mixed_distribution(mem_server: ServerProcess, memory_model_dir: Path) -> None:
    text = "".join(PIECES)
    lm, mixed = offline(memory_model_dir, text)
    _, plain = offline(memory_model_dir, text, mixed=False)
    client = tg.InferenceServerClient(mem_server.target)
    try:
        seq, offset, moved = next(_ids), 0, 0.0
        for i, piece in enumerate(PIECES):
            r = client.infer(
                MEMORY_MODEL,
                [text_input(piece)],
                sequence_id=seq,
                sequence_start=i == 0,
                sequence_end=i == len(PIECES) - 1,
            )
            offset += len(piece)
            assert position(r) == offset
            for ch, p in top(r):
                assert abs(p - mixed[offset - 1][lm.vocab.id(ch)].exp().item()) <= 1e-5, (ch, p)
            moved = max(moved, (mixed[offset - 1].exp() - plain[offset - 1].exp()).abs().max().item())
        assert moved > 0.05  # the memory really changed what KServe serves
    finally:
        client.close()
