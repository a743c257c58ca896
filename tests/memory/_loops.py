"""Both implementations of the memory's per-keystroke loops, as an autouse fixture a memory
test module imports (``from _loops import memory_loops``) to run each of its tests on each: the
C extension (memory/_window.c, the default where it was built) and the Python reference in
memory/window.py (the fallback). (A module, not a conftest.py: tests elsewhere import the
top-level conftest by name.)"""

from __future__ import annotations

from collections.abc import Iterator

import cellserve.memory.window as window
import pytest

NATIVE = window._native


@pytest.fixture(autouse=True, params=["native", "python"])
def memory_loops(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if request.param == "native":
        if NATIVE is None:
            pytest.skip("the memory's C extension is not built (no C compiler at install)")
        monkeypatch.setattr(window, "_native", NATIVE)
    else:
        monkeypatch.setattr(window, "_native", None)
    yield request.param
