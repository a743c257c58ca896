"""The memory of one session: hashed contexts of several orders and a match model over the
last ``window`` characters of its text.

What it predicts is a pure function of that text (the window), by construction:

- every character at position p is an *event* of order k (its context: the k characters
  before it); an event counts while it and its context lie inside the window. Events are kept
  in per-order hash chains (zlib-style: ``head[bucket]`` is the newest position of a bucket,
  ``prev[position]`` the one before it); a lookup walks a chain newest first, verifies the
  context bytes (so hash collisions never count) and stops at the window's start, which is
  how old text leaves the statistics without any work when the window slides;
- ``pop`` undoes ``push`` exactly (chains are last-in first-out), so a rewind leaves the
  memory as if the rewound text had never been typed; the text kept (window + ``max_rewind``)
  is what such a rewind needs. The chains live in a ring of window + ``max_rewind`` + 17
  slots, so text typed again after a pop can reuse the slots of older positions that a later,
  deeper pop (or a fork that far back) would read: past ``max_rewind`` below the longest the
  text has been since, a pop rebuilds the tables from the kept text instead (exact by
  construction, a few milliseconds for a full window) and a fork is refused;
- the hash (crc32 with a per-order seed) and the table sizes depend on nothing but the
  settings, so every process, every chunking of the same text, and a memory rebuilt from the
  window's text (``rebuild``, ``restore``) predict the same.

A fork (``fork``) is an overlay for generated text (completions, beams): it appends
characters of its own and never changes its parent. It stays exact while the parent reads on
(a search keeps running while its session types): only a ``pop`` below the fork's point, or
text older than the rewind margin, invalidates it.
"""

from __future__ import annotations

import os
import sys
import zlib
from array import array
from collections import deque
from collections.abc import Iterable
from types import ModuleType
from typing import NamedTuple

from .settings import MemorySettings

ORDERS = (2, 3, 4, 5, 6, 8, 12, 16)  # context lengths with statistics of their own
MAX_ORDER = ORDERS[-1]
MATCH_MAX = 64  # longest match length tracked (the match model's feature saturates there)
_native: ModuleType | None  # the per-keystroke loops in C (_window.c, built by setup.py): this
# module's Python is their reference, and the fallback where the extension was not built or
# CELLSERVE_NATIVE_MEMORY=0
try:
    from . import _window

    _native = None if os.environ.get("CELLSERVE_NATIVE_MEMORY", "1") == "0" else _window
except ImportError:  # pragma: no cover - a build without a C compiler
    _native = None
_SEEDS = tuple((k * 0x9E3779B1) & 0xFFFFFFFF for k in ORDERS)
_REBASE_AT = 1 << 30  # positions stay int32: past this the memory renumbers from its kept text
_RING_STEP = 256  # the fewest ring slots the chains grow by (``_ring_up_to``)


class MemoryPrediction(NamedTuple):
    """What the memory knows about the next character.

    ``nexts[j]``: the characters (vocabulary ids) that followed the most recent occurrences of
    the current context of order ``ORDERS[j]`` inside the window, newest first (at most
    ``occurrences``); ``match_char``: the character after the newest occurrence of the longest
    context found (-1: none); ``match_len``: how many characters that occurrence shares with
    the current end of the text (at most ``MATCH_MAX``). (A named tuple: made once per served
    point, and read by index in the C loops.)"""

    nexts: tuple[bytes, ...]
    match_char: int
    match_len: int


_POPS_KEPT = 16
_EMPTY_HEADS: list[array[int]] = [array("i") for _ in ORDERS]  # shared, never written


def _bucket_bits(window: int) -> int:
    """Buckets per order at a full window: about the window (1 to 2 events per bucket)."""
    return max(8, window.bit_length() - 1)


_MIN_BITS = 6


def _bits_for(held: int, full: int) -> int:
    """Buckets per order for ``held`` characters of kept text: the tables grow with the text
    (doubling) up to the full window's, so a memory's bytes follow the text it holds. A pure
    function of the kept text's length, so a restored or rebuilt memory has the same tables."""
    return min(full, max(_MIN_BITS, held.bit_length() - 1))


class SessionMemory:
    """One session's memory (see the module docstring). Vocabulary ids must be < 256."""

    def __init__(self, settings: MemorySettings | None = None) -> None:
        s = settings or MemorySettings()
        self.settings = s
        self.window = s.window
        self._keep = s.window + s.max_rewind  # characters of text kept
        self._cap = self._keep + MAX_ORDER + 1  # ring size of the prev arrays (> any walked span)
        # the tables' full size: the window's, or what the kept text can fill if that is less
        self._full_bits = min(_bucket_bits(s.window), max(_MIN_BITS, self._keep.bit_length() - 1))
        self._occ = s.occurrences
        self._links = s.max_links
        self._pop_serial = 0
        self._clear()

    def _clear(self) -> None:
        # the hash heads are allocated on the first push: a session that never typed holds
        # no tables (its bytes are its text's); ``_EMPTY`` reads as "no event" everywhere
        self._set_bits(_MIN_BITS)
        self._set_tables(_EMPTY_HEADS)
        self._buf = bytearray()  # text positions [self._off, self._len)
        self._off = 0
        self._len = 0
        self._high = 0  # the longest the text has been since the ring was (re)built
        # grows on every push, pop and clear, never repeats: a fork that found itself valid at
        # a version stays valid while the version is the same (``MemoryFork.predict_after``)
        self.version = getattr(self, "version", -1) + 1
        # forks check that their point is still there: the lowest length each pop (or a
        # clear: -1) left, by serial number (the latest _POPS_KEPT)
        self._pops: deque[tuple[int, int]] = deque(maxlen=_POPS_KEPT)
        self._pop_serial += 1
        self._pops.append((self._pop_serial, -1))

    # --- text in and out ---------------------------------------------------------------
    def __len__(self) -> int:
        """Characters read since the memory started (the text's length)."""
        return self._len

    def _set_bits(self, bits: int) -> None:
        self._bits = bits
        self._mask = (1 << bits) - 1
        # the text length at which the tables double (none once they are the full window's)
        self._grow_at = 1 << (bits + 1) if bits < self._full_bits else _REBASE_AT

    def _set_tables(self, head: list[array[int]]) -> None:
        """New hash heads and empty chains; ``_orders`` holds each order's (length, seed,
        head, chain) for the per-character loops."""
        self._head = head
        self._prev = [array("i") for _ in ORDERS]
        self._orders = tuple(zip(ORDERS, _SEEDS, self._head, self._prev, strict=True))

    def _resize(self, bits: int) -> None:
        """Rebuilds the tables at ``bits`` from the text. Only while the memory holds all its
        text from position 0 (tables grow and shrink below the full window only, where no text
        was dropped yet), so every position, and every fork's point, stays the same."""
        assert self._off == 0
        text = bytes(self._buf)
        self._set_bits(bits)
        self._reread(text, 0)

    def _reread(self, text: bytes, at: int) -> None:
        """Fresh tables of the current size, then ``text`` read again as positions ``at`` on."""
        self._set_tables([array("i", [-1]) * (self._mask + 1) for _ in ORDERS])
        if at:  # ring slots are addressed by position: all of them exist before it fills from ``at``
            for pr in self._prev:
                pr.extend(array("i", [-1]) * self._cap)
        self._buf = bytearray()
        self._len = at
        self._push_events(text)
        self._high = self._len

    def push(self, ids: Iterable[int]) -> None:
        """Appends characters (vocabulary ids) to the text."""
        data = bytes(ids)
        pos = self._len
        if len(data) == 1 and _native is not None and pos + 1 < self._grow_at and self._head is not _EMPTY_HEADS:
            # a keystroke where the tables need no growth: ``_push_events`` of one character
            # (in C), then the bookkeeping below, without the calls
            buf = self._buf
            buf.append(data[0])
            if pos >= len(self._prev[0]) and pos < self._cap:
                self._ring_up_to(pos + 1)
            _native.events(buf, len(buf) - 1, pos, self._orders, self._cap, self._mask)
            self._len = pos = pos + 1
            if len(buf) > 2 * self._keep:
                self._trim()
            self.version += 1
            if pos > self._high:
                self._high = pos
            return
        self._push_many(data)

    def _push_many(self, data: bytes) -> None:
        """``push``'s general path (any length; the tables may grow or the numbering rebase)."""
        if data and self._head is _EMPTY_HEADS:
            self._set_tables([array("i", [-1]) * (self._mask + 1) for _ in ORDERS])
        if self._len + len(data) < self._grow_at:  # a keystroke: no growth or rebase on the way
            self._push_events(data)
            self.version += 1
            if self._len > self._high:
                self._high = self._len
            return
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
        if self._len > self._high:
            self._high = self._len

    def _push_events(self, ids: bytes) -> None:
        """Reads ``ids`` on: the bytes appended, each character's events chained, text no rewind
        can reach dropped (``_trim``)."""
        native = _native
        if native is None:
            self._push_events_py(ids)
            return
        buf, cap, keep, at, total = self._buf, self._cap, self._keep, 0, len(ids)
        while at < total:  # in segments that end where the Python would drop text
            n = min(total - at, 2 * keep + 1 - len(buf))
            i0, pos0 = len(buf), self._len
            if n == 1:  # a keystroke
                buf.append(ids[at])
            else:  # one by one: the buffer grows (and over-allocates: ``nbytes``) as the Python's
                for c in ids[at : at + n]:
                    buf.append(c)
            self._ring_up_to(pos0 + n)
            native.events(buf, i0, pos0, self._orders, cap, self._mask)
            self._len = pos0 + n
            at += n
            self._trim()

    def _ring_up_to(self, end: int) -> None:
        """The chains' ring slots of the positions below ``end`` exist (those added hold -1).
        They grow ahead, by an eighth of what they hold and at least ``_RING_STEP`` (never past
        the ring's size): keystrokes then add slots once per many characters, not one each.
        Slots past the text hold -1 until written; nothing reads them (the chains' links point
        below the text's end, and ``pop`` reads only slots of positions it removes)."""
        prev = self._prev
        have = len(prev[0])
        if have >= min(self._cap, end):
            return
        grow = array("i", [-1]) * (min(self._cap, max(end, have + max(_RING_STEP, have >> 3))) - have)
        for pr in prev:
            pr.extend(grow)

    def _push_events_py(self, ids: bytes) -> None:
        buf, cap, mask, crc, orders = self._buf, self._cap, self._mask, zlib.crc32, self._orders
        first = self._prev[0]  # every order's chain has the same length
        for c in ids:
            pos = self._len
            buf.append(c)
            i = pos - self._off
            slot = pos % cap
            if i < MAX_ORDER:  # near the text's start: orders with no context before it have no event
                for k, seed, h, pr in orders:
                    if i < k:
                        if slot == len(pr):
                            pr.append(-1)
                        continue
                    b = crc(buf[i - k : i], seed) & mask
                    if slot == len(pr):
                        pr.append(h[b])
                    else:
                        pr[slot] = h[b]
                    h[b] = pos
            elif slot < len(first):  # the ring slot exists (wrapped, or written before a pop)
                for k, seed, h, pr in orders:
                    b = crc(buf[i - k : i], seed) & mask
                    pr[slot] = h[b]
                    h[b] = pos
            else:
                for k, seed, h, pr in orders:
                    b = crc(buf[i - k : i], seed) & mask
                    pr.append(h[b])
                    h[b] = pos
            self._len = pos + 1
            self._trim()

    def _trim(self) -> None:
        """Drops the text no rewind can reach once the kept text exceeds twice ``_keep``
        (amortized: after each character read)."""
        buf = self._buf
        if len(buf) > 2 * self._keep:
            cut = len(buf) - self._keep
            del buf[:cut]
            self._off += cut

    def rewindable(self) -> int:
        """How many characters ``pop`` can remove exactly (at least ``max_rewind`` once the
        text is longer than that)."""
        return self._len if self._off == 0 else max(0, self._len - self._off - self.window)

    def _exact_at(self, at: int) -> bool:
        """The ring still holds every chain link a prediction at ``at`` (or pops down to it)
        reads: no slot of a position that recent was reused by text typed since (the ring
        has window + max_rewind + MAX_ORDER + 1 slots; a walk reads links no further back than
        the window and the longest order)."""
        reused_below = self._high - self._cap  # positions below this had their slot reused
        return reused_below <= 0 or at - self.window - MAX_ORDER >= reused_below

    def _rebuild_to(self, end: int) -> None:
        """The tables rebuilt from the kept text up to ``end``, positions unchanged: what a pop
        too deep for the ring does (``_exact_at``). Every fork is invalid afterwards."""
        off = self._off
        if off == 0:  # the whole text is kept: tables sized for what is left, as after a pop
            self._set_bits(_bits_for(min(end, self._keep), self._full_bits))
        # (else full-size tables: they grow only while nothing was dropped)
        self._reread(bytes(self._buf[: end - off]), off)
        self.version += 1
        self._pop_serial += 1
        self._pops.append((self._pop_serial, -1))  # below every fork

    def pop(self, n: int) -> None:
        """Removes the last ``n`` characters: afterwards the memory equals one that never read
        them. Raises ValueError beyond ``rewindable()``."""
        if n < 0 or n > self.rewindable():
            raise ValueError(f"cannot rewind {n} characters: the memory keeps {self.rewindable()} back")
        if not self._exact_at(self._len - n):  # the ring reused slots that pop would read
            self._rebuild_to(self._len - n)
            return
        buf, head, prev, cap, mask, crc = self._buf, self._head, self._prev, self._cap, self._mask, zlib.crc32
        for _ in range(n):
            pos = self._len - 1
            i = pos - self._off
            slot = pos % cap
            for j, k in enumerate(ORDERS):
                if i < k:
                    break
                head[j][crc(buf[i - k : i], _SEEDS[j]) & mask] = prev[j][slot]
            del buf[-1]
            self._len = pos
        self.version += 1
        bits = _bits_for(min(self._len, self._keep), self._full_bits)
        if bits < self._bits:  # the tables shrink with the text (as a memory that never read it)
            self._resize(bits)
        self._pop_serial += 1
        self._pops.append((self._pop_serial, self._len))

    def intact_since(self, serial: int, at: int) -> bool:
        """True when the first ``at`` characters are as they were at pop serial ``serial`` and
        still within reach (a fork made then at ``at`` predicts exactly)."""
        if self._len - self.rewindable() > at or not self._exact_at(at):
            return False
        if serial == self._pop_serial:
            return True
        if not self._pops or self._pops[0][0] > serial + 1:
            return False  # pops since then fell out of the log: assume the worst
        return all(low >= at for s, low in self._pops if s > serial)

    def text(self) -> bytes:
        """The kept text (window + rewind margin, or less): what snapshots carry."""
        return bytes(self._buf[-self._keep :]) if self._keep else b""

    def snapshot(self) -> bytes:
        return self.text()

    @classmethod
    def rebuild(cls, ids: Iterable[int], settings: MemorySettings | None = None) -> SessionMemory:
        """The memory of a text read from the start: the reference the incremental one must
        equal (and how a snapshot is restored)."""
        m = cls(settings)
        m.push(ids)
        return m

    restore = rebuild

    def _rebase(self) -> None:
        kept = self.text()
        self._clear()
        self.push(kept)

    def nbytes(self) -> int:
        """Bytes this memory holds (hash tables, chains, text): for capacity metrics."""
        head, prev = self._head[0], self._prev[0]  # every order's are the same size
        return len(ORDERS) * (len(head) * head.itemsize + len(prev) * prev.itemsize) + sys.getsizeof(self._buf)

    # --- predictions -------------------------------------------------------------------
    def predict(self) -> MemoryPrediction:
        return self._predict(b"", self._len)

    def predict_after(self, ids: Iterable[int]) -> MemoryPrediction:
        """The prediction after this text and then ``ids``, without reading them: what
        ``fork().predict_after(ids)`` gives, without the fork. (The runner's keystroke rows
        carry the session's memory itself: nothing changes it between the plan and the pick.)"""
        return self._predict(bytes(ids), self._len)

    def fork(self, at: int | None = None) -> MemoryFork:
        """An overlay for generated text, on this text or on its first ``at`` characters (at
        least ``len(self) - rewindable()``): the memory as of an earlier point, without
        rewinding (evaluation forks many points of a text at once)."""
        at = self._len if at is None else at
        if not self._len - self.rewindable() <= at <= self._len:
            raise ValueError(f"cannot fork at {at}: the memory keeps {self.rewindable()} characters back")
        if not self._exact_at(at):
            raise ValueError(
                f"cannot fork at {at}: more than max_rewind characters below the longest the text has been"
            )
        fork = MemoryFork(self, b"", at)
        fork._checked = self.version  # valid: just checked
        return fork

    def _predict(self, extra: bytes, base_len: int) -> MemoryPrediction:
        """Predictions for the first ``base_len`` characters of this text followed by
        ``extra`` (a fork's own characters). Events at or after ``base_len`` are skipped
        without counting as links, so the result equals a memory that never read them.

        This runs once per served point, so it avoids work the common cases do not need: a
        memory (or a fork with no characters of its own) reads its text in place, with no
        copy and no scan of its own characters; each order's walk stops at the first context
        that cannot occur (too long for the window, or a shorter one never seen)."""
        native = _native
        if native is not None:
            nx, char, m = native.predict(
                self._buf,
                self._off,
                extra,
                self._orders,
                self._cap,
                self._mask,
                self.window,
                self._occ,
                self._links,
                base_len,
            )
            return MemoryPrediction(nx, char, m)
        end = base_len + len(extra)
        start = max(0, end - self.window)
        buf, off = self._buf, self._off
        local: bytes | bytearray
        if extra:  # positions [local0, end): the parent's tail (contexts, match), then extra
            local0 = max(off, base_len - MAX_ORDER - MATCH_MAX)
            local = bytes(buf[local0 - off : base_len - off]) + extra
        else:
            local0, local = off, buf
        nexts = [b""] * len(ORDERS)
        best_pos, best_k = -1, 0
        occ, max_links, startswith, cap, mask, crc32 = (
            self._occ,
            self._links,
            buf.startswith,
            self._cap,
            self._mask,
            zlib.crc32,
        )
        for j, (k, seed, heads, prev) in enumerate(self._orders):
            lo = start + k  # an event at p counts when its context p-k.. lies in the window
            if end - k < start:
                break  # the context (and every longer one) reaches before the window
            ctx = local[end - k - local0 : end - local0]
            found = bytearray()
            newest = -1
            if extra:  # the fork's own characters first (newest), then the parent's chain
                p = end - 1
                while p >= base_len and p >= lo and len(found) < occ:
                    if local[p - k - local0 : p - local0] == ctx:
                        found.append(local[p - local0])
                        newest = p if newest < 0 else newest
                    p -= 1
            complete = True  # the walk saw every occurrence (no cap cut it short)
            if len(found) < occ:
                p = heads[crc32(ctx, seed) & mask] if heads else -1
                while p >= base_len:  # events at or after base_len (newest first): not in this text
                    p = prev[p % cap]
                want = occ - len(found)
                for _ in range(max_links):  # each link is an event of the window before base_len
                    if p < lo:
                        break
                    if startswith(ctx, p - k - off):
                        if newest < 0:
                            newest = p
                        found.append(buf[p - off])
                        want -= 1
                        if not want:
                            break
                    p = prev[p % cap]
                else:
                    complete = p < lo
            nexts[j] = bytes(found)
            if newest >= 0:
                best_pos, best_k = newest, k
            elif complete:
                break  # this context never occurs in the window: no longer one can
        if best_pos < 0:
            return MemoryPrediction(tuple(nexts), -1, 0)
        # the match: how far back from best_pos the text agrees with its end (at most
        # MATCH_MAX, inside the window); the last best_k characters agree by construction
        top = min(MATCH_MAX, best_pos - start)
        here = local[end - top - local0 : end - local0]
        there: bytes | bytearray
        if best_pos < base_len:  # the parent's event: the text before it is the parent's
            there, char = buf[best_pos - top - off : best_pos - off], buf[best_pos - off]
        else:  # one of the fork's own characters
            there, char = local[best_pos - top - local0 : best_pos - local0], local[best_pos - local0]
        m = best_k
        while m < top and there[top - m - 1] == here[top - m - 1]:
            m += 1
        return MemoryPrediction(tuple(nexts), char, m)


class MemoryFork:
    """A session memory plus characters of its own (generated text): predicts exactly as the
    parent would after reading them, and never changes the parent. Valid while the parent is
    unchanged (a push or pop on the parent invalidates it: ``predict`` raises)."""

    __slots__ = ("_base", "_serial", "_extra", "_at", "_checked")

    def __init__(self, base: SessionMemory, extra: bytes, at: int) -> None:
        self._base = base
        self._serial = base._pop_serial
        self._extra = bytearray(extra)
        self._at = at
        self._checked = -1  # the parent's version when this fork was last found valid

    def push(self, ids: Iterable[int]) -> None:
        self._extra.extend(ids)

    def fork(self) -> MemoryFork:
        f = MemoryFork(self._base, bytes(self._extra), self._at)
        f._serial, f._checked = self._serial, self._checked
        return f

    def predict(self) -> MemoryPrediction:
        return self.predict_after(())

    def predict_after(self, ids: Iterable[int]) -> MemoryPrediction:
        """The prediction after this fork's text and then ``ids``: ``f = fork(); f.push(ids);
        f.predict()`` without the second fork (the served path's one call per point)."""
        base = self._base
        if base.version != self._checked and not self.valid():
            raise RuntimeError("the parent memory changed since this fork was made")
        extra = self._extra
        return base._predict(bytes(extra) + bytes(ids) if extra else bytes(ids), self._at)

    def valid(self) -> bool:
        """False once the parent lost the text this fork stands on (a pop below its point, a
        reset, or reading on past the rewind margin)."""
        ok = self._base.intact_since(self._serial, self._at)
        if ok:
            self._checked = self._base.version
        return ok

    def __len__(self) -> int:
        return self._at + len(self._extra)
