"""The memory's arrays of many points at once equal each point's alone, whatever the points
sharing the call, and the features mean what features.py says."""

from __future__ import annotations

import math
import random

import numpy as np
from _loops import memory_loops  # noqa: F401  (autouse: every test on both implementations)
from cellserve.memory.features import EXPERTS, HOST_FEATURES, memory_arrays, memory_arrays_many
from cellserve.memory.settings import MemorySettings
from cellserve.memory.window import ORDERS, MemoryPrediction, SessionMemory

V = 103


def predictions_along(text: str, window: int = 512) -> list[MemoryPrediction]:
    mem = SessionMemory(MemorySettings(window=window))
    out = []
    for ch in text:
        mem.push((ord(ch) % V,))
        out.append(mem.predict())
    return out


def test_many_equals_one_by_one_in_any_grouping() -> None:
    text = "def f(x):\n    return x + 1\n\n" * 12 + "class A:\n    def f(self):\n        return 2\n" * 6
    preds = predictions_along(text)
    assert any(p.match_char >= 0 for p in preds) and any(any(p.nexts) for p in preds)
    singles = [memory_arrays(p, V) for p in preds]
    rng = random.Random(7)
    for _ in range(20):
        idx = rng.sample(range(len(preds)), rng.randint(1, 40))
        dists, host = memory_arrays_many([preds[i] for i in idx], V)
        assert dists.shape == (len(idx), EXPERTS, V) and host.shape == (len(idx), HOST_FEATURES)
        assert dists.dtype == np.float32 and host.dtype == np.float32
        for row, i in enumerate(idx):
            assert np.array_equal(dists[row], singles[i][0])
            assert np.array_equal(host[row], singles[i][1])


def test_features_of_one_point() -> None:
    pred = MemoryPrediction(nexts=(bytes([5, 5, 7]),) + (b"",) * (len(ORDERS) - 1), match_char=9, match_len=20)
    dists, host = memory_arrays(pred, V)
    assert dists[0, 5] == np.float32(2 / 3) and dists[0, 7] == np.float32(1 / 3)
    assert not dists[1:-1].any()
    assert dists[-1, 9] == 1.0 and dists[-1].sum() == 1.0
    assert host[0] == 1.0 and host[1] == np.float32(math.log1p(3) / math.log1p(32))
    assert host[2] == np.float32(2 / 3)
    assert not host[3 : 3 * len(ORDERS)].any()
    assert host[-3] == 1.0 and host[-2] == np.float32(math.log1p(20) / math.log1p(64)) and host[-1] == 1.0


def test_empty_predictions() -> None:
    empty = MemoryPrediction(nexts=(b"",) * len(ORDERS), match_char=-1, match_len=0)
    dists, host = memory_arrays_many([empty, empty], V)
    assert not dists.any() and not host.any()
    dists, host = memory_arrays_many([], V)
    assert dists.shape == (0, EXPERTS, V) and host.shape == (0, HOST_FEATURES)
