"""The CPU pick's top-k (memory/_window.c: ``topk``), which a CPU server's every keystroke goes
through: the same entries in the same order as ``torch.topk`` and the probabilities its
``exp`` gives to float32 rounding, equal values in index order, NaN first as torch has it, the
layout the runner's host numbers use, and malformed input refused."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from cellserve.memory import window

NATIVE = window._native

pytestmark = pytest.mark.skipif(NATIVE is None, reason="the memory's C extension is not built")


def host_topk(lsm: torch.Tensor, rows: list[int], k: int) -> tuple[list[list[float]], list[list[int]]]:
    assert NATIVE is not None
    flat = NATIVE.topk(lsm.numpy(), lsm.shape[1], rows, k)
    n = len(rows)
    assert len(flat) == 2 * n * k
    probs = [flat[r * k : (r + 1) * k] for r in range(n)]
    idx = [[int(x) for x in flat[n * k + r * k : n * k + (r + 1) * k]] for r in range(n)]
    assert all(float(i) == x for r in range(n) for i, x in zip(idx[r], flat[n * k + r * k :], strict=False))
    return probs, idx


@pytest.mark.parametrize(("v", "k"), [(103, 5), (103, 1), (103, 103), (7, 3), (258, 40)])
def test_it_is_torch_topk(v: int, k: int) -> None:
    g = torch.Generator().manual_seed(v * 100 + k)
    lsm = torch.log_softmax(torch.randn(9, v, generator=g) * 3, dim=-1)
    rows = [4, 0, 8, 4]  # any order, repeats allowed
    probs, idx = host_topk(lsm, rows, k)
    vals, want = lsm[rows].topk(k, dim=-1)
    assert idx == want.tolist()
    got = torch.tensor(probs, dtype=torch.float32)
    assert torch.allclose(got, vals.exp(), rtol=2e-7, atol=0.0)


def test_equal_values_come_in_index_order_and_nan_first() -> None:
    row = torch.tensor([[-2.0, -1.0, -3.0, -1.0, -1.0, -5.0]])
    probs, idx = host_topk(row, [0], 4)
    assert idx == [[1, 3, 4, 0]]
    assert all(abs(p - math.exp(-1.0)) < 1e-7 for p in probs[0][:3])
    nan = torch.tensor([[-2.0, float("nan"), -1.0, float("nan")]])
    probs, idx = host_topk(nan, [0], 3)
    assert idx == [[1, 3, 2]] and math.isnan(probs[0][0]) and math.isnan(probs[0][1])
    inf = torch.tensor([[-math.inf, -math.inf, -0.5]])
    probs, idx = host_topk(inf, [0], 3)
    assert idx == [[2, 0, 1]] and probs[0][1:] == [0.0, 0.0]


def test_malformed_input_is_refused() -> None:
    assert NATIVE is not None
    lsm = np.zeros((2, 5), dtype=np.float32)
    with pytest.raises(IndexError):
        NATIVE.topk(lsm, 5, [2], 1)
    with pytest.raises(IndexError):
        NATIVE.topk(lsm, 5, [-1], 1)
    with pytest.raises(ValueError):
        NATIVE.topk(lsm, 5, [0], 6)  # k > v
    with pytest.raises(ValueError):
        NATIVE.topk(lsm, 5, [0], 0)
    with pytest.raises(ValueError):
        NATIVE.topk(lsm, 4, [0], 1)  # not [N, 4] float32
    with pytest.raises(TypeError):
        NATIVE.topk(lsm, 5, 3, 1)
    assert NATIVE.topk(lsm, 5, [], 2) == []
