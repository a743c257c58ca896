"""CPU kernel choice for recurrent calls.

oneDNN (torch.backends.mkldnn) is the faster path for long sequences but adds milliseconds of
fixed cost to a small single step; callers that run many tiny steps turn it off around them
(the engine's runner documents the measurements behind its rule).
``torch.backends.mkldnn.flags()`` would do this too, but it also re-sets the TF32 switch, which
warns on every entry in CPU builds, so this touches only ``enabled``. The switch is
process-wide: use it from the one thread that runs torch.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

import torch

# Single steps [B, 1] on CPU use the native kernel below this many rows, oneDNN from it on
# (measured: docs/measurements.md, "Kernel choice on CPU").
ONEDNN_MIN_STEP_BATCH = 128


def step_kernel(model_device: torch.device, rows: int) -> AbstractContextManager[None]:
    """The kernel choice for one single-step call of ``rows`` rows."""
    return onednn(model_device.type != "cpu" or rows >= ONEDNN_MIN_STEP_BATCH)


@contextmanager
def onednn(enabled: bool) -> Iterator[None]:
    mk = torch.backends.mkldnn
    prev = bool(mk.enabled)
    if not mk.is_available() or prev == enabled:  # type: ignore[no-untyped-call]
        yield
        return
    mk.enabled = enabled  # type: ignore[assignment]  # a ContextProp: assigning sets the flag
    try:
        yield
    finally:
        mk.enabled = prev  # type: ignore[assignment]
