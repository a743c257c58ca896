"""The memory's prediction as arrays: expert distributions and host-side features.

Experts: one per context order (the empirical distribution of the characters that followed
the context's recent occurrences) and the match model (all mass on the predicted character).
An absent expert (context never seen in the window) has an all-zero row and ``present`` 0.
"""

from __future__ import annotations

import math

import numpy as np

from .window import MATCH_MAX, ORDERS, MemoryPrediction

EXPERTS = len(ORDERS) + 1  # context orders, then the match model
HOST_FEATURES = 3 * len(ORDERS) + 3
_LOG_OCC = math.log1p(32.0)
_LOG_MATCH = math.log1p(float(MATCH_MAX))


def memory_arrays(pred: MemoryPrediction, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(dists [EXPERTS, V] float32, host [HOST_FEATURES] float32) of one prediction.

    host: per order (present, log1p(count) scaled, share of the most frequent next character),
    then for the match model (present, log1p(length) scaled, length/16 capped at 1)."""
    dists = np.zeros((EXPERTS, vocab_size), dtype=np.float32)
    host = np.zeros(HOST_FEATURES, dtype=np.float32)
    for j, nx in enumerate(pred.nexts):
        n = len(nx)
        if n:
            counts = np.bincount(np.frombuffer(nx, dtype=np.uint8), minlength=vocab_size)[:vocab_size]
            dists[j] = counts / n
            host[3 * j : 3 * j + 3] = (1.0, math.log1p(n) / _LOG_OCC, counts.max() / n)
    if pred.match_char >= 0:
        dists[-1, pred.match_char] = 1.0
        m = pred.match_len
        host[-3:] = (1.0, math.log1p(m) / _LOG_MATCH, min(m, 16) / 16.0)
    return dists, host


def present_of(host: np.ndarray) -> np.ndarray:
    """[..., EXPERTS] 1.0 where the expert has a prediction (read from the host features)."""
    idx = [3 * j for j in range(len(ORDERS))] + [HOST_FEATURES - 3]
    return np.asarray(host[..., idx])
