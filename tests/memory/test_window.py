"""The session memory is a pure function of its window's text: rewind, sliding, snapshot,
forks and chunking are checked against ``SessionMemory.rebuild`` of the same text."""

from __future__ import annotations

import random
from pathlib import Path

import cellserve.evaluation
import pytest
from _loops import memory_loops  # noqa: F401  (autouse: every test on both implementations)
from cellserve.memory.settings import MemorySettings
from cellserve.memory.window import MemoryPrediction, SessionMemory

SRC = Path(cellserve.evaluation.__file__).read_text()


def ids_of(text: str) -> list[int]:
    return [ord(c) - 31 if 32 <= ord(c) < 127 else 1 for c in text]


TEXT = ids_of(SRC)


def trace(mem: SessionMemory, ids: list[int]) -> list[MemoryPrediction]:
    """Predictions after each character pushed (and before the first)."""
    out = [mem.predict()]
    for c in ids:
        mem.push((c,))
        out.append(mem.predict())
    return out


def test_predictions_are_not_trivial() -> None:
    m = SessionMemory.rebuild(TEXT[:3000])
    p = m.predict()
    assert p.match_char >= 0 and p.match_len >= 2
    assert sum(len(n) for n in p.nexts) > 10


def test_rewind_equals_never_having_typed() -> None:
    s = MemorySettings(max_rewind=500)
    a, b, c = TEXT[:2000], TEXT[2000:2300], TEXT[4000:4400]
    typed = SessionMemory.rebuild(a + b, s)
    typed.pop(len(b))
    never = SessionMemory.rebuild(a, s)
    assert typed.predict() == never.predict()
    assert typed.text() == never.text()
    assert trace(typed, c) == trace(never, c)


def test_rewind_beyond_reach_fails_and_changes_nothing() -> None:
    s = MemorySettings(window=64, max_rewind=16)
    m = SessionMemory.rebuild(TEXT[:1000], s)
    before = (m.predict(), m.text(), len(m))
    with pytest.raises(ValueError, match="cannot rewind"):
        m.pop(m.rewindable() + 1)
    assert (m.predict(), m.text(), len(m)) == before
    assert m.rewindable() >= 16


@pytest.mark.parametrize("window", [64, 300])
def test_window_slides_and_bytes_stay_bounded(window: int) -> None:
    s = MemorySettings(window=window, max_rewind=32)
    m = SessionMemory(s)
    sizes = []
    for k in range(0, 6000, 500):
        m.push(TEXT[k : k + 500])
        sizes.append(m.nbytes())
        # only the window counts: a memory of the last window + rewind characters agrees
        suffix = TEXT[max(0, k + 500 - window - 32) : k + 500]
        assert m.predict() == SessionMemory.rebuild(suffix, s).predict()
    # past a few windows the memory stops growing (its text buffer varies by at most the kept text)
    assert max(sizes[4:]) <= sizes[3] + 2 * (window + 32) + 64
    m.pop(32)  # a rewind after sliding re-exposes older text exactly
    assert m.predict() == SessionMemory.rebuild(TEXT[: 6000 - 32], s).predict()


def test_snapshot_restore_round_trip() -> None:
    s = MemorySettings(window=512, max_rewind=64)
    m = SessionMemory.rebuild(TEXT[:5000], s)
    r = SessionMemory.restore(m.snapshot(), s)
    assert len(m.snapshot()) == 512 + 64
    assert r.predict() == m.predict()
    r.pop(40)
    m.pop(40)
    assert r.predict() == m.predict()
    assert trace(r, TEXT[6000:6300]) == trace(m, TEXT[6000:6300])


def test_chunked_equals_unchunked() -> None:
    s = MemorySettings(window=1024)
    whole = SessionMemory.rebuild(TEXT[:4000], s)
    rng = random.Random(1)
    chunked = SessionMemory(s)
    k = 0
    while k < 4000:
        n = rng.randint(1, 300)
        chunked.push(TEXT[k : min(k + n, 4000)])
        k += n
    assert chunked.predict() == whole.predict() and chunked.text() == whole.text()


def test_fork_isolated_and_exact() -> None:
    s = MemorySettings(window=800, max_rewind=100)
    base = SessionMemory.rebuild(TEXT[:3000], s)
    before = base.predict()
    gen = TEXT[5000:5040]
    f = base.fork()
    f.push(gen)
    g = f.fork()
    g.push(TEXT[100:110])
    assert f.predict() == SessionMemory.rebuild(TEXT[:3000] + gen, s).predict()
    assert g.predict() == SessionMemory.rebuild(TEXT[:3000] + gen + TEXT[100:110], s).predict()
    # predict_after: a fork of the fork, pushed, then predicted (the served point's one call)
    assert f.predict_after(TEXT[100:110]) == g.predict() and len(f) == 3000 + len(gen)
    assert base.fork().predict_after(gen) == f.predict() and base.fork().predict_after([]) == before
    # ... and on the memory itself, without a fork (a keystroke row's), which it leaves as it was
    for extra in ([], TEXT[3000:3001], gen):
        assert base.predict_after(extra) == base.fork().predict_after(extra)
    assert base.predict_after(gen) == f.predict()
    assert base.predict() == before and len(base) == 3000
    # a fork at an earlier point: the memory as of then, plus its own text
    h = base.fork(at=2950)
    h.push(gen)
    assert h.predict() == SessionMemory.rebuild(TEXT[:2950] + gen, s).predict()
    # the parent reading on leaves its forks exact (a search runs on while its session types);
    # a pop below a fork's point (rewind, reset) ends it
    base.push(TEXT[3000:3050])
    assert f.predict() == SessionMemory.rebuild(TEXT[:3000] + gen, s).predict()
    base.pop(30)
    assert f.predict() == SessionMemory.rebuild(TEXT[:3000] + gen, s).predict()
    base.pop(21)
    with pytest.raises(RuntimeError, match="parent memory changed"):
        f.predict()
    assert h.predict() == SessionMemory.rebuild(TEXT[:2950] + gen, s).predict()
    with pytest.raises(ValueError, match="cannot fork"):
        base.fork(at=0)


def test_a_fork_found_valid_is_checked_again_after_any_change() -> None:
    """A fork remembers the parent's version it was last found valid at and skips the check
    while the version is the same: every push, pop and clear changes the version, and it
    never repeats (a pop below the fork and the same text typed again, or a memory cleared
    and refilled to the same length, still end the fork)."""
    s = MemorySettings(window=256, max_rewind=64)
    base = SessionMemory.rebuild(TEXT[:200], s)
    f = base.fork()
    assert f.predict_after(TEXT[200:201]) == SessionMemory.rebuild(TEXT[:201], s).predict()
    base.pop(5)
    base.push(TEXT[195:200])  # the same length and text as when the fork was made
    with pytest.raises(RuntimeError, match="parent memory changed"):
        f.predict_after(TEXT[200:201])
    g = base.fork()
    seen = base.version
    base._rebase()  # cleared and refilled from its kept text: a version never seen before
    assert base.version > seen
    with pytest.raises(RuntimeError, match="parent memory changed"):
        g.predict()


def test_tables_grow_with_the_text_and_stay_exact() -> None:
    """Bytes follow the text held (tables double as it grows, up to the window's); growing,
    shrinking on a rewind, and forks across a growth all predict as a rebuilt memory."""
    s = MemorySettings(window=4096, max_rewind=256)
    m = SessionMemory(s)
    assert m.nbytes() < 200  # a session that never typed: no tables
    m.push(TEXT[:100])
    small = m.nbytes()
    m.push(TEXT[100:4096])
    full = m.nbytes()
    assert small * 10 < full, (small, full)
    m.pop(len(m) - 120)  # back across every doubling: as if the text had never been typed
    assert m.nbytes() == SessionMemory.rebuild(TEXT[:120], s).nbytes()
    f = m.fork()
    f.push(TEXT[5000:5010])
    for a in range(120, 700, 97):  # the parent grows past 128, 256 and 512 characters
        m.push(TEXT[a : a + 97])
        assert m.predict() == SessionMemory.rebuild(TEXT[: a + 97], s).predict()
        assert f.predict() == SessionMemory.rebuild(TEXT[:120] + TEXT[5000:5010], s).predict()
