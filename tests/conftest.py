"""Shared fixtures: small random-weight model folders, so tests never need the shipped models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from cellserve.nn.charlm import CharLM
from cellserve.nn.checkpoint import save_model
from cellserve.nn.spec import ModelSpec, Provenance, Quality

# A vocabulary with ASCII printables, newline and a few non-ASCII letters, so tests can append
# text both inside and outside the vocabulary (emoji and CJK map to the unknown entry 0).
TEST_VOCAB = [""] + sorted(set("\n\t" + "".join(chr(c) for c in range(32, 127)) + "éüß"))


def write_random_model(
    folder: Path,
    name: str,
    cell: str,
    *,
    layers: int = 2,
    hidden: int = 32,
    embedding: int = 16,
    seed: int = 0,
    bits_per_char: float = 3.0,
) -> Path:
    torch.manual_seed(seed)
    model = CharLM(cell, len(TEST_VOCAB), embedding, hidden, layers)  # type: ignore[arg-type]
    with torch.no_grad():  # larger weights than the default init, so states and gates move visibly
        for p in model.parameters():
            p.mul_(3.0)
    spec = ModelSpec(
        name=name,
        cell=cell,
        layers=layers,
        hidden=hidden,
        embedding=embedding,  # type: ignore[arg-type]
        vocabulary=TEST_VOCAB,
        provenance=Provenance(
            corpus="random weights (tests)",
            train_chars=0,
            validation_chars=0,
            steps=0,
            wall_seconds=0.0,
            seed=seed,
            device="cpu",
            git_commit="unknown",
        ),
        quality=Quality(validation_bits_per_char=bits_per_char),
    )
    save_model(folder / name, spec, model)
    return folder / name


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository with a random 2-layer LSTM ('tiny-lstm', the default: lowest
    bits/char) and GRU ('tiny-gru')."""
    d = tmp_path_factory.mktemp("models")
    write_random_model(d, "tiny-lstm", "lstm", seed=1, bits_per_char=2.5)
    write_random_model(d, "tiny-gru", "gru", seed=2, bits_per_char=3.0)
    return d
