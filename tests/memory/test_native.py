"""The memory's C extension: built wherever a compiler and Python's headers were, from the
source in the tree, and refusing a broken state with an exception instead of reading out of
bounds. (That it computes what the Python computes, bit for bit, is every other memory test:
each runs on both implementations, ``_loops.py``.)"""

from __future__ import annotations

from array import array
from pathlib import Path

import cellserve.memory.window as window
import pytest
from _loops import NATIVE
from cellserve.memory.settings import MemorySettings
from cellserve.memory.window import SessionMemory
from extensions import assert_built_from, assert_missing_only_without_a_compiler

SOURCE = Path(window.__file__).with_name("_window.c")


built = pytest.mark.skipif(NATIVE is None, reason="the memory's C extension is not built")


@pytest.mark.skipif(NATIVE is not None, reason="built")
def test_built_where_a_compiler_is() -> None:  # runs only when the extension is missing
    assert_missing_only_without_a_compiler("CELLSERVE_NATIVE_MEMORY")


@built
def test_built_from_the_current_source() -> None:
    assert_built_from(NATIVE, SOURCE)


@built
def test_a_broken_state_raises_instead_of_reading_out_of_bounds() -> None:
    m = SessionMemory(MemorySettings(window=64, max_rewind=0))
    m.push(b"abcabcabcabc")
    del m._head[0][1:]  # a hash table with fewer buckets than the mask reaches
    with pytest.raises(IndexError):
        m.push(b"xyzxyzxyz")
    m = SessionMemory(MemorySettings(window=64, max_rewind=0))
    m.push(b"abcabcabcabc")
    for h in m._head:
        h[:] = array("i", [9999]) * len(h)  # heads pointing past the text ...
    for pr in m._prev:
        del pr[len(m) :]  # ... whose ring slots do not exist (the chains grow ahead of the text)
    with pytest.raises(IndexError):
        m.predict()
    with pytest.raises(ValueError):
        NATIVE.predict(m._buf, 5, b"", m._orders, m._cap, m._mask, m.window, 1, 1, 2)  # base below the kept text
    with pytest.raises(TypeError):
        NATIVE.events(m._buf, 0, 0, ((2, 1, [0], [0]),), m._cap, m._mask)  # lists, not arrays
