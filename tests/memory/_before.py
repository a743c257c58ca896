"""The memory's per-keystroke code as it was before its fast paths (commit 0274420), kept
verbatim as the general path the fast ones must equal bit for bit (test_fast_paths.py)."""

from __future__ import annotations

import math
import sys
import zlib
from array import array
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from cellserve.memory.features import _LOG_MATCH, EXPERTS, HOST_FEATURES, _log_occ
from cellserve.memory.mixer import _PRESENT, EPS, Mixer, _masked_softmax
from cellserve.memory.window import (
    _EMPTY_HEADS,
    _REBASE_AT,
    _SEEDS,
    MATCH_MAX,
    MAX_ORDER,
    ORDERS,
    MemoryPrediction,
    SessionMemory,
    _bits_for,
)


class BeforeMemory(SessionMemory):
    """A SessionMemory whose push, nbytes and predictions run the code from before."""

    def push(self, ids: Iterable[int]) -> None:
        """Appends characters (vocabulary ids) to the text."""
        data = bytes(ids)
        if data and self._head is _EMPTY_HEADS:
            self._head = [array("i", [-1]) * (self._mask + 1) for _ in ORDERS]
        at = 0
        while at < len(data):  # in segments: the tables grow (or the numbering rebases) between
            n = min(len(data) - at, self._grow_at - self._len)
            self._push_events(data[at : at + n])
            at += n
            if self._len >= _REBASE_AT:
                self._rebase()
            elif self._len >= self._grow_at:
                self._resize(_bits_for(min(self._len, self._keep), self._full_bits))
        self.version += 1

    def _push_events(self, ids: bytes) -> None:
        buf, head, prev, cap, mask, crc = self._buf, self._head, self._prev, self._cap, self._mask, zlib.crc32
        for c in ids:
            pos = self._len
            buf.append(c)
            i = pos - self._off
            slot = pos % cap
            for j, k in enumerate(ORDERS):
                pr = prev[j]
                if i < k:  # no context of this order before the text's start: no event
                    if slot == len(pr):
                        pr.append(-1)
                    continue
                h = head[j]
                b = crc(buf[i - k : i], _SEEDS[j]) & mask
                if slot == len(pr):
                    pr.append(h[b])
                else:
                    pr[slot] = h[b]
                h[b] = pos
            self._len = pos + 1
            if len(buf) > 2 * self._keep:  # amortized: drop text no rewind can reach
                cut = len(buf) - self._keep
                del buf[:cut]
                self._off += cut

    def nbytes(self) -> int:
        """Bytes this memory holds (hash tables, chains, text): for capacity metrics."""
        tables = sum(a.buffer_info()[1] * a.itemsize for a in self._head)
        chains = sum(a.buffer_info()[1] * a.itemsize for a in self._prev)
        return tables + chains + sys.getsizeof(self._buf)

    def _predict(self, extra: bytes, base_len: int) -> MemoryPrediction:
        """Predictions for the first ``base_len`` characters of this text followed by
        ``extra`` (a fork's own characters). Events at or after ``base_len`` are skipped
        without counting as links, so the result equals a memory that never read them."""
        end = base_len + len(extra)
        start = max(0, end - self.window)
        buf, off = self._buf, self._off
        local0 = max(off, base_len - MAX_ORDER - MATCH_MAX - 1)
        local = bytes(buf[local0 - off : base_len - off]) + extra  # positions [local0, end)

        def char_at(p: int) -> int:
            return local[p - local0] if p >= local0 else buf[p - off]

        nexts: list[bytes] = []
        best_pos, best_k = -1, 0
        occ, max_links, startswith = self._occ, self._links, buf.startswith
        none_longer = False  # a shorter context never occurs: no longer one can
        for j, k in enumerate(ORDERS):
            lo = start + k  # an event at p counts when its context p-k.. lies in the window
            if none_longer or end - k < start or end < k:
                nexts.append(b"")
                continue
            ctx = local[end - k - local0 : end - local0]
            found = bytearray()
            newest = -1
            # the fork's own characters first (newest), then the parent's chain
            p = end - 1
            while p >= base_len and p >= lo and len(found) < occ:
                if local[p - k - local0 : p - local0] == ctx:
                    found.append(local[p - local0])
                    newest = p if newest < 0 else newest
                p -= 1
            complete = True  # the walk saw every occurrence (no cap cut it short)
            if len(found) < occ:
                prev, cap = self._prev[j], self._cap
                heads = self._head[j]
                p = heads[zlib.crc32(ctx, _SEEDS[j]) & self._mask] if heads else -1
                links = 0
                while p >= lo:
                    if p < base_len:  # events at or after base_len: not in this text (a fork's past)
                        if links >= max_links:
                            complete = False
                            break
                        links += 1
                        if startswith(ctx, p - k - off):
                            found.append(buf[p - off])
                            newest = p if newest < 0 else newest
                            if len(found) >= occ:
                                break
                    p = prev[p % cap]
            nexts.append(bytes(found))
            if newest >= 0:
                best_pos, best_k = newest, k
            elif complete:
                none_longer = True
        if best_pos < 0:
            return MemoryPrediction(tuple(nexts), -1, 0)
        m = best_k
        while m < MATCH_MAX and best_pos - m - 1 >= start and char_at(best_pos - m - 1) == char_at(end - m - 1):
            m += 1
        return MemoryPrediction(tuple(nexts), char_at(best_pos), m)


def memory_arrays_many_before(preds: Sequence[MemoryPrediction], vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
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


def _row_linear(x: torch.Tensor, layer: torch.nn.Linear) -> torch.Tensor:
    return (x[:, None, :] * layer.weight).sum(-1) + layer.bias


@torch.no_grad()
def mix_before(mixer: Mixer, logprobs: torch.Tensor, dists: torch.Tensor, host: torch.Tensor) -> torch.Tensor:
    lp = logprobs.float()
    p = lp.exp()
    entropy = -(p * lp).sum(-1, keepdim=True) / 4.0
    top = lp.max(-1, keepdim=True).values / 4.0
    present = host[:, _PRESENT]
    agree = torch.log((dists * p[:, None, :]).sum(-1) + 1e-6) / 8.0 * present
    feats = torch.cat([entropy, top, agree, host], dim=-1)
    logits = _row_linear(torch.relu(_row_linear(feats, mixer.hidden)), mixer.out)
    g = _masked_softmax(logits, host[:, _PRESENT])
    mixed = g[:, :1] * lp.exp() + (g[:, 1:, None] * dists).sum(1)
    v = lp.shape[-1]
    return torch.log(mixed * (1.0 - EPS) + EPS / v)
