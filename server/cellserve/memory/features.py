"""The memory's prediction as arrays: expert distributions and host-side features.

Experts: one per context order (the empirical distribution of the characters that followed
the context's recent occurrences) and the match model (all mass on the predicted character).
An absent expert (context never seen in the window) has an all-zero row and ``present`` 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from . import window
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
    [P, HOST_FEATURES]), float32. One bincount for every expert of every point (code = (point *
    EXPERTS + expert) * V + character; the match model's character weighs 1), so a step's
    memory features cost a few numpy calls, not a few per point; each bin sums the same weights
    in the same order as one point alone would, so the arrays do not depend on which other
    points share the call."""
    native = window._native
    if native is not None:  # the same arithmetic in C (memory/_window.c: ``fill``)
        dists = np.zeros((len(preds), EXPERTS, vocab_size), dtype=np.float32)
        host = np.zeros((len(preds), HOST_FEATURES), dtype=np.float32)
        native.fill(preds, dists, host, vocab_size, _LOG_OCC_OF, _LOG_MATCH_OF)
        return dists, host
    orders = len(ORDERS)
    p_n, v = len(preds), vocab_size
    host = np.zeros((p_n, HOST_FEATURES), dtype=np.float32)
    nexts = [nx for pred in preds for nx in pred.nexts]
    counts_of = np.array([len(nx) for nx in nexts], dtype=np.int64)
    n = counts_of.astype(np.float64)
    chars = np.frombuffer(b"".join(nexts), dtype=np.uint8).astype(np.int64)
    group = np.arange(p_n * orders)
    codes = chars + np.repeat((group + group // orders) * v, counts_of)  # (p * EXPERTS + j) * V
    weights = np.repeat(1.0 / np.maximum(n, 1.0), counts_of)
    matched = [(p, pred.match_char, pred.match_len) for p, pred in enumerate(preds) if pred.match_char >= 0]
    at = np.array([p for p, _, _ in matched], dtype=np.int64)
    match_codes = (at * EXPERTS + orders) * v + np.array([c for _, c, _ in matched], dtype=np.int64)
    sums = np.bincount(
        np.concatenate([codes, match_codes]),
        np.concatenate([weights, np.ones(len(matched))]),
        minlength=p_n * EXPERTS * v,
    )
    dists = sums.astype(np.float32).reshape(p_n, EXPERTS, v)
    seen = n > 0
    per = host[:, : 3 * orders].reshape(p_n, orders, 3)
    per[:, :, 0] = seen.reshape(p_n, orders)
    per[:, :, 1] = _log_occ(counts_of).reshape(p_n, orders)
    if chars.size:  # each order's largest share: the largest of its characters' sums (float32
        # rounding keeps the order, so this is the float32 array's maximum over V)
        firsts = np.cumsum(counts_of) - counts_of
        share = np.zeros(p_n * orders)
        share[seen] = np.maximum.reduceat(sums[codes], firsts[seen])
        per[:, :, 2] = share.reshape(p_n, orders)
    if matched:
        host[at, -3] = 1.0
        host[at, -2] = _LOG_MATCH_OF[[m for _, _, m in matched]]
        host[at, -1] = [min(m, 16) / 16.0 for _, _, m in matched]
    return dists, host


def _log_occ_table(top: int) -> np.ndarray:
    table: np.ndarray = np.array([math.log1p(float(k)) / _LOG_OCC for k in range(top + 1)], dtype=np.float64)
    return table


# log1p(count) / log1p(32) by count, read by index (counts are small integers), so the value of
# a count never depends on the length or alignment of the array it sits in; as far as
# ``MemorySettings.occurrences`` reaches, grown on demand past that (the Python path).
_LOG_OCC_OF = _log_occ_table(1024)
# log1p(length) / log1p(MATCH_MAX) by match length, likewise
_LOG_MATCH_OF: np.ndarray = np.array([math.log1p(m) / _LOG_MATCH for m in range(MATCH_MAX + 1)], dtype=np.float64)


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
