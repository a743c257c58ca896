"""The memory's prediction as arrays: expert distributions and host-side features.

Experts: one per context order (the empirical distribution of the characters that followed
the context's recent occurrences) and the match model (all mass on the predicted character).
An absent expert (context never seen in the window) has an all-zero row and ``present`` 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

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
    dists, host = memory_arrays_many((pred,), vocab_size)
    return dists[0], host[0]


def memory_arrays_many(preds: Sequence[MemoryPrediction], vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``memory_arrays`` of several predictions at once: (dists [P, EXPERTS, V], host
    [P, HOST_FEATURES]), float32. One bincount for every order of every point (code = (point *
    orders + order) * V + character), so a step's memory features cost a few numpy calls, not a
    few per point; each bin sums the same weights in the same order as one point alone would, so
    the arrays do not depend on which other points share the call."""
    orders = len(ORDERS)
    p_n = len(preds)
    dists = np.zeros((p_n, EXPERTS, vocab_size), dtype=np.float32)
    host = np.zeros((p_n, HOST_FEATURES), dtype=np.float32)
    lens = [len(nx) for pred in preds for nx in pred.nexts]
    if any(lens):
        chars = np.frombuffer(b"".join(nx for pred in preds for nx in pred.nexts), dtype=np.uint8).astype(np.int64)
        counts_of = np.array(lens)
        n = counts_of.astype(np.float64)
        codes = chars + np.repeat(np.arange(len(lens)) * vocab_size, lens)
        weights = np.repeat(1.0 / np.maximum(n, 1.0), lens)
        counts = np.bincount(codes, weights, minlength=len(lens) * vocab_size).reshape(p_n, orders, vocab_size)
        dists[:, :orders] = counts
        seen = (n > 0).reshape(p_n, orders)
        per = host[:, : 3 * orders].reshape(p_n, orders, 3)
        per[:, :, 0] = seen
        per[:, :, 1] = _log_occ(counts_of).reshape(p_n, orders)
        per[:, :, 2] = np.where(seen, dists[:, :orders].max(axis=2), 0.0)
    for p, pred in enumerate(preds):
        if pred.match_char >= 0:
            dists[p, -1, pred.match_char] = 1.0
            m = pred.match_len
            host[p, -3:] = (1.0, math.log1p(m) / _LOG_MATCH, min(m, 16) / 16.0)
    return dists, host


def _log_occ_table(top: int) -> np.ndarray:
    table: np.ndarray = np.array([math.log1p(float(k)) / _LOG_OCC for k in range(top + 1)], dtype=np.float64)
    return table


# log1p(count) / log1p(32) by count, read by index (counts are small integers), so the value of
# a count never depends on the length or alignment of the array it sits in; grown on demand
# past the default occurrences (``MemorySettings.occurrences``).
_LOG_OCC_OF = _log_occ_table(64)


def _log_occ(counts: np.ndarray) -> np.ndarray:
    global _LOG_OCC_OF
    top = int(counts.max()) if counts.size else 0
    if top >= len(_LOG_OCC_OF):
        _LOG_OCC_OF = _log_occ_table(top)
    out: np.ndarray = _LOG_OCC_OF[counts]
    return out


def present_of(host: np.ndarray) -> np.ndarray:
    """[..., EXPERTS] 1.0 where the expert has a prediction (read from the host features)."""
    idx = [3 * j for j in range(len(ORDERS))] + [HOST_FEATURES - 3]
    return np.asarray(host[..., idx])
