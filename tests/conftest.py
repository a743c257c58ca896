"""Shared fixtures: small random-weight model folders, so tests never need the shipped models."""

from __future__ import annotations

from pathlib import Path

import pytest
from cellserve.nn.random_model import save_random_model
from skip_summary import pytest_terminal_summary  # noqa: F401  (a pytest hook: names each skipped group)

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
    # 3x the default init, so states and gates move visibly
    return save_random_model(
        folder,
        name,
        cell,
        TEST_VOCAB,
        layers=layers,
        hidden=hidden,
        embedding=embedding,
        seed=seed,
        weight_scale=3.0,
        bits_per_char=bits_per_char,
    )


def write_random_mixer(folder: Path, seed: int = 5) -> None:
    """A session-memory mixer beside a model (``folder``: the model's folder) with random gate
    weights, so the memory's experts really move the served distribution."""
    import torch
    from cellserve.memory.mixer import Mixer

    torch.manual_seed(seed)
    mixer = Mixer()
    with torch.no_grad():
        mixer.out.weight.normal_(0.0, 0.5)
        mixer.out.bias.zero_()
    mixer.save(folder)


@pytest.fixture(scope="session")
def memory_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository with one random LSTM ('tiny-mem') that ships a mixer."""
    d = tmp_path_factory.mktemp("memmodels")
    write_random_model(d, "tiny-mem", "lstm", seed=3, bits_per_char=2.5)
    write_random_mixer(d / "tiny-mem")
    return d


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository with a random 2-layer LSTM ('tiny-lstm', the default: lowest
    bits/char) and GRU ('tiny-gru')."""
    d = tmp_path_factory.mktemp("models")
    write_random_model(d, "tiny-lstm", "lstm", seed=1, bits_per_char=2.5)
    write_random_model(d, "tiny-gru", "gru", seed=2, bits_per_char=3.0)
    return d
