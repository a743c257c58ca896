"""The memory's fast paths equal its general path (the code from before them, _before.py) bit
for bit: predictions of memories and of forks with and without characters of their own,
rewinds, window slides, table growth, the link and occurrence caps; the memory's own arrays
and bytes after every push and pop; the features; the mixed log-probs."""

from __future__ import annotations

import random
from pathlib import Path

import cellserve.evaluation
import pytest
import torch
from _before import BeforeMemory, memory_arrays_many_before, mix_before
from _loops import memory_loops  # noqa: F401  (autouse: every test on both implementations)
from cellserve.memory.features import memory_arrays_many
from cellserve.memory.mixer import Mixer
from cellserve.memory.settings import MemorySettings
from cellserve.memory.window import MemoryPrediction, SessionMemory

SRC = [ord(c) - 31 if 32 <= ord(c) < 127 else 1 for c in Path(cellserve.evaluation.__file__).read_text()]
V = 103


def same_state(a: SessionMemory, b: SessionMemory) -> None:
    """``a``'s chains may hold ring slots ahead of the text (grown ahead, all -1: ``a._prev``
    is ``b._prev`` then -1s), and its bytes count them."""
    have = len(b._prev[0])
    assert [pr[:have] for pr in a._prev] == b._prev
    assert all(set(pr[have:]) <= {-1} for pr in a._prev)
    assert (a._head, a._buf, a._off, a._len, a.version) == (b._head, b._buf, b._off, b._len, b.version)
    ahead = len(a._prev[0]) - have
    assert a.nbytes() == b.nbytes() + ahead * len(a._prev) * a._prev[0].itemsize


def random_text(rng: random.Random) -> list[int]:
    if rng.random() < 0.5:  # small alphabets: long chains, many occurrences, collisions
        alpha = rng.choice([2, 3, 10, 90])
        return [rng.randrange(1, alpha + 1) for _ in range(rng.randrange(0, 2500))]
    at = rng.randrange(0, len(SRC) - 4000)
    return SRC[at : at + rng.randrange(0, 4000)]


@pytest.mark.parametrize("seed", range(6))
def test_memory_and_forks_equal_the_general_path(seed: int) -> None:
    """Random texts in random pieces, rewinds, and forks at random points (within the rewind
    margin since the deepest text read) with and without characters of their own."""
    rng = random.Random(seed)
    checked = 0
    for _ in range(25):
        s = MemorySettings(
            window=rng.choice([64, 100, 300, 2000]),
            max_rewind=rng.choice([0, 16, 100]),
            occurrences=rng.choice([1, 3, 32]),
            max_links=rng.choice([1, 2, 5, 256]),
        )
        text = random_text(rng)
        fast, general = SessionMemory(s), BeforeMemory(s)
        at = deepest = 0
        while at < len(text):
            n = rng.choice([1, 1, 1, 2, 7, 200])
            fast.push(text[at : at + n])
            general.push(text[at : at + n])
            at += n
            deepest = max(deepest, len(fast))
            # a rewind stays exact within the margin below the deepest text read
            reach = max(0, min(fast.rewindable(), s.max_rewind - (deepest - len(fast))))
            if rng.random() < 0.2:
                r = rng.randint(0, reach)
                fast.pop(r)
                general.pop(r)
                reach -= r
            same_state(fast, general)
            assert fast.predict() == general._predict(b"", len(general))
            point = len(fast) - rng.randint(0, reach)
            own = [rng.randrange(1, 91) for _ in range(rng.choice([0, 1, 1, 2, 5, 40]))]
            f = fast.fork(point)
            f.push(own)
            assert f.predict() == general._predict(bytes(own), point)
            checked += 1
    assert checked > 100


def test_served_memory_equals_the_general_path_across_growth_and_slides() -> None:
    """The served settings: a keystroke at a time through every table doubling and past the
    window, a keystroke fork at every point, rewinds of the engine's depth."""
    s = MemorySettings(window=4096, max_rewind=256)
    fast, general = SessionMemory(s), BeforeMemory(s)
    rng = random.Random(3)
    for t, c in enumerate(SRC[:9000]):
        fast.push((c,))
        general.push((c,))
        if t % 7 == 0:
            same_state(fast, general)
            f = fast.fork()
            f.push((SRC[t + 1],))
            assert f.predict() == general._predict(bytes((SRC[t + 1],)), len(general))
        if t % 1000 == 999:
            r = rng.randint(0, 256)
            fast.pop(r)
            general.pop(r)
            same_state(fast, general)
            fast.push(SRC[t - r + 1 : t + 1])
            general.push(SRC[t - r + 1 : t + 1])
    assert fast.predict() == general._predict(b"", len(general))


def predictions(seed: int, n: int) -> list[MemoryPrediction]:
    rng = random.Random(seed)
    mem = SessionMemory(MemorySettings(window=512))
    out = []
    for _ in range(n):
        mem.push(SRC[rng.randrange(0, 20000) :][: rng.randint(1, 60)])
        out.append(mem.predict())
    out.append(MemoryPrediction((b"",) * 8, -1, 0))  # nothing known
    out.append(MemoryPrediction((b"",) * 8, 7, 64))  # a match only
    out.append(MemoryPrediction((b"\x01" * 32,) + (b"",) * 7, -1, 0))  # one order only
    return out


@pytest.mark.parametrize("seed", range(3))
def test_features_and_mix_equal_the_general_path(seed: int) -> None:
    preds = predictions(seed, 60)
    random.Random(seed).shuffle(preds)
    torch.manual_seed(seed)
    mixer = Mixer()
    with torch.no_grad():
        for p in mixer.parameters():
            p.normal_(0, 1.0)
    lp = torch.log_softmax(torch.randn(len(preds), V) * 3, -1)
    for part in (preds, preds[:1], preds[-3:], []):
        d, h = memory_arrays_many(part, V)
        d0, h0 = memory_arrays_many_before(part, V)
        assert d.dtype == d0.dtype and h.dtype == h0.dtype
        assert d.tobytes() == d0.tobytes() and h.tobytes() == h0.tobytes()
        dt, ht = torch.from_numpy(d), torch.from_numpy(h)
        assert torch.equal(mixer.mix(lp[: len(part)], dt, ht), mix_before(mixer, lp[: len(part)], dt, ht))
