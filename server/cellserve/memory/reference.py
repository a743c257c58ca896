"""The offline reference: the model and the memory over a text, mixed, one position at a time.

Served distributions must equal these (oracle tests), and ``cellserve eval`` and
``cellserve train-mixer`` measure with them. Position t is the prediction after reading
characters 0..t (of the character t + 1).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from ..nn.checkpoint import LoadedModel
from .features import memory_arrays, memory_arrays_many
from .mixer import Mixer
from .settings import MemorySettings
from .window import MemoryFork, SessionMemory

PIECE = 8192  # characters per model forward (the state carries across pieces)
BATCH = 4096  # rows mixed at once


@torch.no_grad()
def model_logprobs(loaded: LoadedModel, ids: torch.Tensor, piece: int = PIECE) -> torch.Tensor:
    """[T, V] float32: the model's log-probabilities after each character, from the zero state."""
    model = loaded.model
    state = model.init_state(1)
    out = []
    for a in range(0, ids.numel(), piece):
        logits, state = model(ids[a : a + piece][None], state)
        out.append(torch.log_softmax(logits[0].float(), dim=-1))
    return torch.cat(out) if out else torch.zeros(0, len(loaded.vocab))


def memory_along(
    ids: Sequence[int], vocab_size: int, settings: MemorySettings | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(dists [E, V], host [HOST_FEATURES]) after each character of the text."""
    mem = SessionMemory(settings)
    for c in ids:
        mem.push((c,))
        yield memory_arrays(mem.predict(), vocab_size)


def arrays_of(preds: Sequence[MemoryFork | SessionMemory], vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stacked memory arrays of several memories or forks: ([B, E, V], [B, HOST_FEATURES])."""
    dists, host = memory_arrays_many([m.predict() for m in preds], vocab_size)
    return torch.from_numpy(dists), torch.from_numpy(host)


@torch.no_grad()
def mix_along(mem: SessionMemory, ids: Sequence[int], model_lp: torch.Tensor, mixer: Mixer) -> torch.Tensor:
    """Reads ``ids`` into ``mem`` one character at a time; returns [T, V], the mixed
    distribution after each (model_lp [T, V]: the model's after each, on any device)."""
    v = model_lp.shape[1]
    out = torch.empty_like(model_lp, dtype=torch.float32)
    for a in range(0, len(ids), BATCH):
        b = min(len(ids), a + BATCH)
        preds = []
        for c in ids[a:b]:
            mem.push((c,))
            preds.append(mem.predict())
        dists, host = memory_arrays_many(preds, v)
        dev = model_lp.device
        out[a:b] = mixer.mix(model_lp[a:b], torch.from_numpy(dists).to(dev), torch.from_numpy(host).to(dev))
    return out


def mixed_logprobs(
    model_lp: torch.Tensor, ids: Sequence[int], mixer: Mixer, settings: MemorySettings | None = None
) -> torch.Tensor:
    """[T, V]: the mixed distribution after each character of a text read by a fresh memory
    (model_lp from ``model_logprobs``)."""
    return mix_along(SessionMemory(settings), ids, model_lp, mixer)


class ForkMixing:
    """Mixing for a batched beam search (``nn.decode.beam_search_batch``'s ``mix``): each beam
    carries a memory fork; an extended beam forks its parent's and pushes its new character,
    so generated text updates the forks only."""

    def __init__(self, mixer: Mixer, forks: list[MemoryFork], vocab_size: int) -> None:
        self.mixer = mixer
        self.forks = forks
        self.vocab_size = vocab_size

    def __call__(self, logprobs: torch.Tensor, parent: torch.Tensor | None, tok: torch.Tensor | None) -> torch.Tensor:
        if parent is not None and tok is not None:
            new = []
            for p, t in zip(parent.tolist(), tok.tolist(), strict=True):
                f = self.forks[p].fork()
                f.push((t,))
                new.append(f)
            self.forks = new
        dists, host = arrays_of(self.forks, self.vocab_size)
        dev = logprobs.device
        return self.mixer.mix(logprobs, dists.to(dev), host.to(dev))
