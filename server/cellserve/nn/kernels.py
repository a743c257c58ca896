"""CPU kernel choice for recurrent steps.

oneDNN (torch.backends.mkldnn) is the faster path for long sequences but adds milliseconds of
fixed cost to a small single step; callers that run many tiny steps turn it off around them.
``torch.backends.mkldnn.flags()`` would do this too, but it also re-sets the TF32 flag and
warns on every entry, so this sets only ``enabled``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def onednn(enabled: bool) -> Iterator[None]:
    prev = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = enabled
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = prev
