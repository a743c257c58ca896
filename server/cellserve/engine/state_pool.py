"""The state pool: every session's recurrent state in a few preallocated device tensors.

One model's pool is ``arity`` tensors (h, and c for LSTM) of [layers, capacity, hidden]; a
session (or a completion's scratch state) owns one slot index along dim 1. Gathering the states
of a batch is one ``index_select`` per tensor and writing them back one ``index_copy_``: there
are no per-session tensor objects, so a keystroke costs no allocation.

Thread split: slot bookkeeping (``alloc``/``free``) runs on the asyncio loop; the tensors are
only touched by the device worker thread (``ensure_capacity``, ``gather``, ``scatter``...).
Growth happens in the worker at the start of an iteration, so it never races a running step:
``alloc`` only promises an index below ``slots_max`` and the next plan's ``capacity`` asks the
worker to grow first.
"""

from __future__ import annotations

import torch

from ..errors import CapacityExceeded


class SlotAllocator:
    """Free list of slot indices (loop thread). Lowest indices are reused first so the
    allocated tensors stay as small as the live set allows."""

    def __init__(self, chunk: int, slots_max: int) -> None:
        self.chunk = chunk
        self.slots_max = slots_max
        self.reserved = 0  # indices [0, reserved) have been handed out at least once
        self._free: list[int] = []  # a stack: freed indices, reused LIFO
        self.used = 0

    def alloc(self) -> int:
        if self._free:
            slot = self._free.pop()
        elif self.reserved < self.slots_max:
            slot = self.reserved
            self.reserved += 1
        else:
            raise CapacityExceeded("no free state slots", retry_after_s=1.0)
        self.used += 1
        return slot

    def free(self, slot: int) -> None:
        self._free.append(slot)
        self.used -= 1

    @property
    def free_count(self) -> int:
        return len(self._free) + (self.slots_max - self.reserved)

    def wanted_capacity(self) -> int:
        """Capacity the tensors need: ``reserved`` rounded up to a whole chunk, capped."""
        chunks = -(-self.reserved // self.chunk)
        return min(max(chunks, 1) * self.chunk, self.slots_max)


class StatePool:
    """The tensors (worker thread only)."""

    def __init__(
        self, layers: int, hidden: int, arity: int, device: torch.device, dtype: torch.dtype = torch.float32
    ) -> None:
        self.layers, self.hidden, self.arity = layers, hidden, arity
        self.device, self.dtype = device, dtype
        self.tensors: list[torch.Tensor] = [self._zeros(0) for _ in range(arity)]  # each [L, cap, H]

    def _zeros(self, slots: int) -> torch.Tensor:
        return torch.zeros(self.layers, slots, self.hidden, device=self.device, dtype=self.dtype)

    @property
    def capacity(self) -> int:
        return self.tensors[0].shape[1]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors)

    def ensure_capacity(self, slots: int) -> None:
        """Grows to ``slots`` (already rounded to a chunk by the allocator); never shrinks,
        so a slot index stays valid for its owner."""
        if slots > self.capacity:
            extra = slots - self.capacity
            self.tensors = [torch.cat([t, self._zeros(extra)], dim=1) for t in self.tensors]

    def gather(self, slots: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """slots [B] int64 (on the device) -> state: ``arity`` tensors of [L, B, H] (copies)."""
        return tuple(t.index_select(1, slots) for t in self.tensors)

    def scatter(self, slots: torch.Tensor, state: tuple[torch.Tensor, ...]) -> None:
        """Writes state ([L, B, H] x arity) into ``slots`` [B]; slots must be distinct."""
        for t, s in zip(self.tensors, state, strict=True):
            t.index_copy_(1, slots, s)
