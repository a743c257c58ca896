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
    lens = [len(nx) for nx in pred.nexts]
    if any(lens):  # one bincount for every order: code = order * V + character
        chars = np.frombuffer(b"".join(pred.nexts), dtype=np.uint8).astype(np.int64)
        n = np.array(lens, dtype=np.float64)
        codes = chars + np.repeat(np.arange(len(lens)) * vocab_size, lens)
        weights = np.repeat(1.0 / np.maximum(n, 1.0), lens)
        dists[:-1] = np.bincount(codes, weights, minlength=len(lens) * vocab_size).reshape(len(lens), vocab_size)
        seen = n > 0
        per = host[: 3 * len(lens)].reshape(len(lens), 3)
        per[:, 0] = seen
        per[:, 1] = np.log1p(n) / _LOG_OCC
        per[:, 2] = np.where(seen, dists[:-1].max(axis=1), 0.0)
    if pred.match_char >= 0:
        dists[-1, pred.match_char] = 1.0
        m = pred.match_len
        host[-3:] = (1.0, math.log1p(m) / _LOG_MATCH, min(m, 16) / 16.0)
    return dists, host


def present_of(host: np.ndarray) -> np.ndarray:
    """[..., EXPERTS] 1.0 where the expert has a prediction (read from the host features)."""
    idx = [3 * j for j in range(len(ORDERS))] + [HOST_FEATURES - 3]
    return np.asarray(host[..., idx])
