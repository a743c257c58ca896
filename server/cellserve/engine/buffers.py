"""Persistent staging buffers for the runner's per-iteration index inputs (slots, tokens, result
points): one host buffer (pinned on CUDA) and one device buffer per call site, grown
geometrically and never shrunk, so a steady-state iteration allocates no input tensors and a
GPU gets each input in one asynchronous copy from pinned memory (instead of a dozen
``torch.tensor(list, device=...)`` calls, each a pageable, synchronous copy).

Worker thread only. A returned tensor is a view of its call site's buffer, valid until that
call site is used again: every iteration ends with its one device->host copy, which orders
all earlier work on the device before the next iteration overwrites the host buffers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


class InputBuffers:
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._on_cpu = device.type == "cpu"
        self._host: dict[str, torch.Tensor] = {}
        self._np: dict[str, np.ndarray] = {}  # each host buffer's numpy view (made once: it costs a call)
        self._dev: dict[str, torch.Tensor] = {}

    def ints(self, site: str, values: Sequence[int]) -> torch.Tensor:
        """``values`` as an int64 tensor [len(values)] on the device."""
        n = len(values)
        host = self._host.get(site)
        if host is None or host.numel() < n:
            size = max(n, 2 * (0 if host is None else host.numel()), 16)
            host = torch.empty(size, dtype=torch.int64, pin_memory=not self._on_cpu)
            self._host[site] = host
            self._np[site] = host.numpy()
            if not self._on_cpu:
                self._dev[site] = torch.empty(size, dtype=torch.int64, device=self.device)
        self._np[site][:n] = values
        h = host[:n]
        if self._on_cpu:
            return h
        d = self._dev[site][:n]
        d.copy_(h, non_blocking=True)
        return d
