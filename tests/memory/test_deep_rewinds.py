"""Rewinds deeper than the chain ring's margin stay exact. The ring holds window + max_rewind +
17 links; text typed after a pop reuses the slots of older positions, so a later pop (or a
fork) reaching further back than ``max_rewind`` below the longest the text has been would read
links of text that is gone (predictions differing from a memory that read the same text, and
chain walks that could loop). Such a pop rebuilds the tables from the kept text; such a fork is
refused. Oracle: ``SessionMemory.rebuild`` of the same text."""

from __future__ import annotations

import random

import pytest
from _loops import memory_loops  # noqa: F401  (autouse: every test on both implementations)
from cellserve.memory.settings import MemorySettings
from cellserve.memory.window import SessionMemory

SMALL = MemorySettings(window=64, max_rewind=16)


def same_as_rebuilt(m: SessionMemory, text: list[int]) -> None:
    assert len(m) == len(text)
    ref = SessionMemory.rebuild(text, m.settings)
    assert m.predict() == ref.predict()


@pytest.mark.timeout(60)
def test_a_pop_past_the_ring_equals_a_memory_that_read_the_rest() -> None:
    """The case that went wrong: 116 characters read, 85 popped (the whole text is kept, so
    rewindable allows it), with the ring (97 slots) wrapped."""
    rng = random.Random(1)
    text = [rng.randrange(1, 4) for _ in range(116)]
    m = SessionMemory.rebuild(text, SMALL)
    m.pop(85)
    same_as_rebuilt(m, text[:31])
    m.push(text[31:60])  # and it reads on exactly
    same_as_rebuilt(m, text[:60])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("seed", range(8))
def test_typing_and_rewinding_at_random_stays_exact(seed: int) -> None:
    """Random pieces and rewinds (any depth the memory allows), across window slides and
    dropped text; after each, the memory predicts as one that read the text from the start,
    and a fork where the memory allows one predicts as the text up to there."""
    rng = random.Random(seed)
    settings = rng.choice([SMALL, MemorySettings(window=100, max_rewind=40), MemorySettings(window=64, max_rewind=0)])
    alpha = rng.choice([2, 3, 8])
    m, text = SessionMemory(settings), []
    for _ in range(300):
        if text and rng.random() < 0.35:
            n = rng.randrange(0, m.rewindable() + 1)
            m.pop(n)
            del text[len(text) - n :]
        else:
            piece = [rng.randrange(1, alpha + 1) for _ in range(rng.randrange(1, 40))]
            m.push(piece)
            text += piece
        same_as_rebuilt(m, text)
        at = rng.randrange(len(text) - m.rewindable(), len(text) + 1)
        try:
            fork = m.fork(at)
        except ValueError:
            continue  # past the ring's margin: refused, never wrong
        extra = [rng.randrange(1, alpha + 1) for _ in range(rng.randrange(0, 5))]
        fork.push(extra)
        assert fork.predict() == SessionMemory.rebuild(text[:at] + extra, settings).predict()


def test_a_fork_made_before_a_deep_pop_is_invalid_after_it() -> None:
    rng = random.Random(3)
    text = [rng.randrange(1, 4) for _ in range(200)]
    m = SessionMemory.rebuild(text, SMALL)
    m.pop(10)
    fork = m.fork()
    m.push(text[190:195])
    m.pop(50)  # deeper than the ring allows: rebuilt
    assert not fork.valid()
    with pytest.raises(RuntimeError):
        fork.predict()
