"""The offline reference of a served session memory, for the wire tests of every folder: the
model's full-sequence log-probs mixed with a memory over the same text (``memory/reference.py``),
with the memory settings a server on default settings serves."""

from __future__ import annotations

from pathlib import Path

import torch
from cellserve.config import Settings
from cellserve.engine.memory_mix import memory_settings
from cellserve.memory.mixer import Mixer
from cellserve.memory.reference import mixed_logprobs, model_logprobs
from cellserve.nn.checkpoint import LoadedModel, load_model

MEMORY_MODEL = "tiny-mem"  # the model of the ``memory_model_dir`` fixture (tests/conftest.py)


def offline(model_dir: Path, text: str, mixed: bool = True) -> tuple[LoadedModel, torch.Tensor]:
    """[len(text), V] next-character log-probs after each prefix (mixed: with the memory)."""
    lm = load_model(model_dir / MEMORY_MODEL)
    ids = lm.vocab.encode(text)
    lp = model_logprobs(lm, torch.tensor(ids))
    if mixed:
        settings = memory_settings(Settings(model_dir=model_dir))
        lp = mixed_logprobs(lp, ids, Mixer.load(model_dir / MEMORY_MODEL), settings)
    return lm, lp
