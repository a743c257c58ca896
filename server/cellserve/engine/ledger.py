"""The admission ledger: the counters that must be exact across engine-core processes.

Admission (``engine/admission.py``) keeps a tenant's quotas exact however many core processes
serve its sessions (docs/design-notes.md, "Several core processes"): a quota does not
split into per-core shares, so the cores count in one place, this ledger, and every
read-check-write happens under its one lock, so two processes can never pass a cap together.
One server with one core process runs the same code over a private buffer with no lock.

What it holds, in one flat buffer of 8-byte words (int64 read through ``memoryview.cast("q")``,
float64 through ``cast("d")``, both views of the same bytes):

- a header: a magic word, the table's capacity, the live sessions of all tenants, the tenants
  holding at least one session (the fair-share reserve rule counts them), and the slots taken;
- a table of tenant slots, each: the tenant's key, its live sessions, its running completion
  alternatives, and its characters-per-second token bucket (a flag set at its first charge,
  the tokens, the last refill in ``time.monotonic()`` seconds: CLOCK_MONOTONIC, one clock for
  every process of a Linux machine).

Tenants are found by open addressing (linear probing) on an 8-byte BLAKE2b digest of the name
(0 marks an empty slot, so a digest of 0 is stored as 1). Slots are never freed, so slots never
move and each process caches name -> slot. Tenant names come from the tokens file, a finite
set, so a fixed capacity (``DEFAULT_TENANTS``) suffices; a full table refuses a new tenant
with ``CapacityExceeded``. Two names with one digest would share a slot (one in 2**64 per pair).

Storage: ``Ledger.local()`` is a bytearray with a no-op lock (one process).
``Ledger.create_shared(ctx)``, in the parent, makes a ``SharedMemory`` segment and a lock of
``ctx`` (a POSIX semaphore) and returns a ``LedgerHandle``, picklable as an argument of a
process started by ``ctx``; each child calls ``Ledger.attach(handle)``. The parent unlinks
(``handle.close()``, in its teardown); children only close.

The resource tracker (Python 3.11, where attaching a ``SharedMemory`` registers it too): a
process started by a ``multiprocessing`` context (spawn included) shares its parent's tracker,
which unlinks what is still registered only when its last user exits, so a child's exit unlinks
nothing. The usual "fix", ``resource_tracker.unregister`` in the child, is wrong here: on the
shared tracker it drops the parent's registration (the parent's unlink then makes the tracker
print a KeyError, and a parent that dies leaks the segment). So a child attaches plainly, and a
process not started through ``multiprocessing`` (its own tracker) must not attach.

The caller holds ``lock`` around the lookups (``slot``, ``find``) and the counters: one
``with ledger.lock:`` around a whole check-then-count (``Admission`` does).
"""

from __future__ import annotations

import hashlib
import weakref
from multiprocessing.context import BaseContext
from multiprocessing.shared_memory import SharedMemory
from types import TracebackType
from typing import Protocol

from ..errors import CapacityExceeded

DEFAULT_TENANTS = 65_536  # slots: 3 MiB (48 bytes each)
TABLE_FULL_RETRY_S = 60.0  # a full table is the operator's to fix: no use retrying soon

_MAGIC = 0x3152_4547_4445_4C43  # "CLEDGER1" little-endian: a segment made by this module
# header words
_H_MAGIC, _H_CAPACITY, _H_SESSIONS, _H_HOLDERS, _H_USED = range(5)
_HEADER = 8  # words (3 spare)
# the words of a tenant slot, at _HEADER + slot * _SLOT
_KEY, _SESSIONS, _COMPLETIONS, _BUCKET_SET, _TOKENS, _REFILLED = range(6)  # _TOKENS, _REFILLED: float64
_SLOT = 6
_WORD = 8


class Lock(Protocol):
    def __enter__(self) -> object: ...

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None, /) -> None: ...


class _NoLock:
    """The local ledger's lock: one process, core thread only (as ``Admission`` was)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None, /) -> None:
        return None


def tenant_key(name: str) -> int:
    """The tenant's nonzero 8-byte key (signed, as the int64 view stores it)."""
    key = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little", signed=True)
    return key or 1  # 0 marks an empty slot


def _nbytes(tenants: int) -> int:
    return (_HEADER + tenants * _SLOT) * _WORD


class LedgerHandle:
    """What a parent hands to each core process it starts (a ``Process`` argument): the
    segment's name, the table's capacity and the lock. The parent's own handle also holds the
    segment it made, so ``close()`` there unlinks it; a copy pickled to a child holds nothing
    to unlink."""

    def __init__(self, name: str, tenants: int, lock: Lock, shm: SharedMemory | None = None) -> None:
        self.name = name
        self.tenants = tenants
        self.lock = lock
        self._shm = shm

    def __reduce__(self) -> tuple[type[LedgerHandle], tuple[str, int, Lock]]:
        return (LedgerHandle, (self.name, self.tenants, self.lock))  # never the segment itself

    def close(self) -> None:
        """The parent's teardown: unlinks the segment (once; a no-op in a child's copy).
        Ledgers still attached keep their mapping until they close."""
        shm, self._shm = self._shm, None
        if shm is not None:
            shm.close()
            shm.unlink()


class Ledger:
    def __init__(self, buf: memoryview, lock: Lock, shm: SharedMemory | None = None) -> None:
        """Over ``buf`` (a header and table already written); use ``local``, ``attach``."""
        self.lock = lock
        self._q = buf.cast("q")
        self._d = buf.cast("d")
        buf.release()  # the casts hold the buffer; a view left open would keep the segment from closing
        # The views are released, then the segment closed, by close(), when the ledger is
        # collected or at exit, whichever comes first: left to interpreter shutdown, the
        # segment's own __del__ could come first and fail on the views still open (BufferError).
        self._unmap = weakref.finalize(self, _unmap, self._q, self._d, shm)
        if self._q[_H_MAGIC] != _MAGIC:
            self.close()
            raise ValueError("not an admission ledger")
        self.capacity = self._q[_H_CAPACITY]
        self._slots: dict[str, int] = {}  # name -> slot: slots never move, so no lock to read this

    @classmethod
    def local(cls, tenants: int = DEFAULT_TENANTS) -> Ledger:
        """A ledger of this process alone (private memory, no lock)."""
        _check_capacity(tenants)
        buf = memoryview(bytearray(_nbytes(tenants)))
        _write_header(buf, tenants)
        return cls(buf, _NoLock())

    @staticmethod
    def create_shared(ctx: BaseContext, tenants: int = DEFAULT_TENANTS) -> LedgerHandle:
        """A shared ledger made by the parent of the processes that count in it (started by
        ``ctx``); the parent keeps the handle and closes it (unlinks) in its teardown."""
        _check_capacity(tenants)
        shm = SharedMemory(create=True, size=_nbytes(tenants))  # zero-filled
        try:
            _write_header(_buf(shm), tenants)
        except BaseException:
            shm.close()
            shm.unlink()
            raise
        return LedgerHandle(shm.name, tenants, ctx.Lock(), shm)

    @classmethod
    def attach(cls, handle: LedgerHandle) -> Ledger:
        """The shared ledger of ``handle``, in a process started with it (or its parent).
        No ``resource_tracker.unregister``: see the module docstring."""
        shm = SharedMemory(name=handle.name)
        return cls(_buf(shm)[: _nbytes(handle.tenants)], handle.lock, shm)

    def close(self) -> None:
        """Unmaps a shared ledger (never unlinks: the parent's handle does); the ledger is
        unusable after. Idempotent."""
        self._unmap()

    # ---- tenants (caller holds the lock) --------------------------------------------------------
    def slot(self, name: str) -> int:
        """The tenant's slot, taken on its first use by any process; a full table raises
        CapacityExceeded."""
        i = self._slots.get(name)
        if i is None:
            i = self._probe(name, claim=True)
        return i

    def find(self, name: str) -> int:
        """The tenant's slot, or -1 if no process has taken one for it (a read takes none)."""
        i = self._slots.get(name)
        if i is None:
            i = self._probe(name, claim=False)
        return i

    def _probe(self, name: str, claim: bool) -> int:
        key = tenant_key(name)
        q, cap = self._q, self.capacity
        i = key % cap
        for _ in range(cap):
            k = q[_HEADER + i * _SLOT + _KEY]
            if k == key:
                self._slots[name] = i
                return i
            if k == 0:  # the end of the probe chain: the name has no slot yet
                if not claim:
                    return -1
                q[_HEADER + i * _SLOT + _KEY] = key
                q[_H_USED] += 1
                self._slots[name] = i
                return i
            i = (i + 1) % cap
        if not claim:
            return -1
        raise CapacityExceeded(
            f"this server counts at most {cap} tenants and has no room for another; "
            "the operator must raise its tenant capacity",
            retry_after_s=TABLE_FULL_RETRY_S,
        )

    def tenants(self) -> int:
        """Slots taken."""
        return self._q[_H_USED]

    # ---- counters (caller holds the lock) -------------------------------------------------------
    def sessions(self, slot: int) -> int:
        return self._q[_HEADER + slot * _SLOT + _SESSIONS]

    def add_session(self, slot: int, delta: int) -> None:
        """``delta`` sessions (+1 or -1) for the tenant, the total and the holders kept in step;
        the count never goes below 0."""
        q = self._q
        at = _HEADER + slot * _SLOT + _SESSIONS
        before = q[at]
        after = max(0, before + delta)
        q[at] = after
        q[_H_SESSIONS] += after - before
        q[_H_HOLDERS] += (after > 0) - (before > 0)

    def total_sessions(self) -> int:
        return self._q[_H_SESSIONS]

    def holders(self) -> int:
        """Tenants holding at least one session."""
        return self._q[_H_HOLDERS]

    def completions(self, slot: int) -> int:
        return self._q[_HEADER + slot * _SLOT + _COMPLETIONS]

    def add_completions(self, slot: int, delta: int) -> None:
        at = _HEADER + slot * _SLOT + _COMPLETIONS
        self._q[at] = max(0, self._q[at] + delta)

    def bucket(self, slot: int) -> tuple[float, float] | None:
        """(tokens, last refill) of the tenant's bucket, or None before its first charge."""
        at = _HEADER + slot * _SLOT
        if not self._q[at + _BUCKET_SET]:
            return None
        return self._d[at + _TOKENS], self._d[at + _REFILLED]

    def set_bucket(self, slot: int, tokens: float, refilled: float) -> None:
        at = _HEADER + slot * _SLOT
        self._d[at + _TOKENS] = tokens
        self._d[at + _REFILLED] = refilled
        self._q[at + _BUCKET_SET] = 1


def _buf(shm: SharedMemory) -> memoryview:
    buf = shm.buf
    assert buf is not None  # None only once closed
    return buf


def _unmap(q: memoryview[int], d: memoryview[float], shm: SharedMemory | None) -> None:
    q.release()
    d.release()
    if shm is not None:
        shm.close()


def _write_header(buf: memoryview, tenants: int) -> None:
    q = buf[: _HEADER * _WORD].cast("q")
    q[_H_MAGIC] = _MAGIC
    q[_H_CAPACITY] = tenants
    q.release()


def _check_capacity(tenants: int) -> None:
    if tenants < 1:
        raise ValueError("a ledger needs at least one tenant slot")
