"""The state pool: every session's recurrent state in a few preallocated device tensors.

One model's pool is ``arity`` tensors (h, and c for LSTM) of [layers, capacity, hidden]; a
session (or a completion's scratch state) owns one slot index along dim 1. Gathering the states
of a batch is one ``index_select`` per tensor and writing them back one ``index_copy_``: there
are no per-session tensor objects, so a keystroke costs no allocation.

Thread split: slot bookkeeping (``alloc``/``free``) is the engine core's, under its lock; the
tensors are only touched by the device worker thread (``ensure_capacity``, ``gather``,
``scatter``...).

Stable addresses: the tensors are reallocated only when the pool grows, which happens when the
allocator's high-water mark passes the capacity (a few times in a server's life: growth is
geometric, and freed slots are reused lowest-first). Steady-state iterations never reallocate,
so a captured CUDA graph replays on the same storage; ``generation`` counts the growths, so a
capture knows when it must be redone. Each model has two pools of this class: the sessions'
states and the rewind checkpoints (``CheckpointRef`` slots), both counted in ``state_bytes``.
Growth happens in the worker at the start of an iteration, so it never races a running step:
``alloc`` only promises an index below ``slots_max`` and the next plan's ``capacity`` asks the
worker to grow first.

Growth is geometric (by half the capacity, at least a chunk): growing copies the whole pool,
so growing by a fixed chunk made opening n sessions cost O(n^2) bytes copied (the figures:
docs/measurements.md, "State pool growth"). The new tail is left uninitialised (``torch.empty``): every slot is
written before it is read (a new owner's first iteration writes its start state), and pages
never written stay out of the process's resident memory, so spare capacity costs address
space, not RSS.
"""

from __future__ import annotations

import torch

from ..errors import CapacityExceeded


class SlotError(RuntimeError):
    """A slot freed twice or never allocated: a bookkeeping bug, refused."""


class SlotAllocator:
    """Free list of slot indices (loop thread). Lowest indices are reused first so the
    allocated tensors stay as small as the live set allows."""

    def __init__(self, chunk: int, slots_max: int) -> None:
        self.chunk = chunk
        self.slots_max = slots_max
        self.reserved = 0  # indices [0, reserved) have been handed out at least once
        self._free: list[int] = []  # a stack: freed indices, reused LIFO
        self._is_free = bytearray()  # per reserved index: 1 while it is on the free stack
        self.used = 0
        self._capacity = 0  # the capacity last asked for (never shrinks)

    def alloc(self) -> int:
        if self._free:
            slot = self._free.pop()
            self._is_free[slot] = 0
        elif self.reserved < self.slots_max:
            slot = self.reserved
            self.reserved += 1
            self._is_free.append(0)
        else:
            raise CapacityExceeded("no free state slots", retry_after_s=1.0)
        self.used += 1
        return slot

    def free(self, slot: int) -> None:
        """Returns ``slot`` to the free list. A slot that is not allocated (freed twice, or
        never handed out) raises ``SlotError`` and changes nothing: two owners sharing a
        slot would read each other's state (a rewind restoring another session's text)."""
        if not 0 <= slot < self.reserved or self._is_free[slot]:
            raise SlotError(f"slot {slot} is not allocated")
        self._is_free[slot] = 1
        self._free.append(slot)
        self.used -= 1

    @property
    def free_count(self) -> int:
        return len(self._free) + (self.slots_max - self.reserved)

    def wanted_capacity(self) -> int:
        """Capacity the tensors need: at least ``reserved``; when that outgrows the current
        capacity, 1.5x the current capacity or more, rounded up to a whole chunk, capped."""
        if self._capacity == 0 or self.reserved > self._capacity:
            grown = max(self.reserved, self._capacity + self._capacity // 2, 1)
            self._capacity = min(-(-grown // self.chunk) * self.chunk, self.slots_max)
        return self._capacity


class StatePool:
    """The tensors (worker thread only)."""

    def __init__(
        self, layers: int, hidden: int, arity: int, device: torch.device, dtype: torch.dtype = torch.float32
    ) -> None:
        self.layers, self.hidden, self.arity = layers, hidden, arity
        self.device, self.dtype = device, dtype
        self.tensors: list[torch.Tensor] = [self._zeros(0) for _ in range(arity)]  # each [L, cap, H]
        self.generation = 0  # bumped at every growth: tensor addresses changed

    def _zeros(self, slots: int) -> torch.Tensor:
        return torch.zeros(self.layers, slots, self.hidden, device=self.device, dtype=self.dtype)

    def _empty(self, slots: int) -> torch.Tensor:
        return torch.empty(self.layers, slots, self.hidden, device=self.device, dtype=self.dtype)

    @property
    def capacity(self) -> int:
        return self.tensors[0].shape[1]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors)

    def ensure_capacity(self, slots: int) -> None:
        """Grows to ``slots`` (the allocator's ``wanted_capacity``); never shrinks, so a slot
        index stays valid for its owner. Existing slots keep their state; new ones are
        uninitialised until written."""
        if slots > self.capacity:
            grown = []
            for t in self.tensors:
                g = self._empty(slots)
                g[:, : t.shape[1]].copy_(t)
                grown.append(g)
            self.tensors = grown
            self.generation += 1

    def gather(self, slots: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """slots [B] int64 (on the device) -> state: ``arity`` tensors of [L, B, H] (copies)."""
        return tuple(t.index_select(1, slots) for t in self.tensors)

    def scatter(self, slots: torch.Tensor, state: tuple[torch.Tensor, ...]) -> None:
        """Writes state ([L, B, H] x arity) into ``slots`` [B]; slots must be distinct."""
        for t, s in zip(self.tensors, state, strict=True):
            t.index_copy_(1, slots, s)
