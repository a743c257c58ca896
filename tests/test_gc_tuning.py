"""``tune_gc``: what a server process does to Python's cyclic collector once it has loaded
what it serves (``Settings.gc_young_threshold``)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from cellserve.boot import tune_gc
from cellserve.config import Settings


@pytest.fixture
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


def test_loaded_objects_are_frozen_and_young_collections_wait(restored_gc: None) -> None:
    gc.unfreeze()
    loaded = [{"weights": [i]} for i in range(1000)]  # what a server loaded before serving
    _, older, oldest = gc.get_threshold()
    tune_gc(Settings(gc_young_threshold=12_345))
    assert gc.get_threshold() == (12_345, older, oldest)  # only the young generation's changes
    assert gc.get_freeze_count() >= len(loaded)  # never walked again by a collection
    before = gc.get_count()[0]
    made = [[i] for i in range(1000)]  # 1000 new containers: far below the threshold
    assert gc.get_count()[0] >= before + len(made) - 10  # no young collection ran meanwhile


def test_zero_leaves_python_defaults(restored_gc: None) -> None:
    gc.unfreeze()
    threshold = gc.get_threshold()
    tune_gc(Settings(gc_young_threshold=0))
    assert gc.get_threshold() == threshold
    assert gc.get_freeze_count() == 0
