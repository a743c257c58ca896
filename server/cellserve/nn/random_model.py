"""Random-weight model folders: for tests and benchmarks, where speed and shapes matter but the
weights do not. Never used for a shipped model."""

from __future__ import annotations

from pathlib import Path

import torch

from .charlm import CharLM
from .checkpoint import save_model
from .spec import ModelSpec, Provenance, Quality


def save_random_model(
    folder: Path,
    name: str,
    cell: str,
    vocabulary: list[str],
    *,
    layers: int,
    hidden: int,
    embedding: int,
    seed: int = 0,
    weight_scale: float = 1.0,
    purpose: str = "tests",
    bits_per_char: float = 8.0,
) -> Path:
    """Writes ``folder/name`` with PyTorch's default init times ``weight_scale`` (larger weights
    make states and gates move visibly in tests); returns the model folder."""
    torch.manual_seed(seed)
    model = CharLM(cell, len(vocabulary), embedding, hidden, layers)  # type: ignore[arg-type]
    if weight_scale != 1.0:
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(weight_scale)
    spec = ModelSpec(
        name=name,
        cell=cell,  # type: ignore[arg-type]
        layers=layers,
        hidden=hidden,
        embedding=embedding,
        vocabulary=vocabulary,
        provenance=Provenance(
            corpus=f"random weights ({purpose})",
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
