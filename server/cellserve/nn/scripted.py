"""TorchScript for the per-step tensor code: one Python call, one release of the interpreter lock.

Every torch op called from Python releases the GIL while it runs and takes it back after. In
the server the event loop thread is usually waiting for it, takes it, and keeps it until its
own next wait or the switch interval, so each of a step's small ops can cost the core thread a
hand-over, a wait and colder caches. A scripted function runs all its ops in C++ with the lock
released once. Measured on the 2-core box (docs/measurements.md, "TorchScript kernels"): about
7% less server CPU per keystroke at N=256, and the event loop's share fell too.

"Released once" is Python's side of it: inside the call torch takes the lock again whenever a
Python-owned tensor's C++ reference count falls back to one (to settle its Python object), that
is at each input tensor's last use unless C++ still references it elsewhere. Beside a thread
that never sleeps that is 7-8 waits per call of the int8 step; in the server at N=256 it did
not measurably cost (docs/measurements.md, "The core thread in the server against the core
alone"; ``scripts/gil_handoffs.py``).

``scripted(fn)`` compiles a plain function that is also valid eager Python: the same source
runs either way, op for op, so the results are bit for bit the same (tests/nn/test_scripted.py
checks each kernel both ways). The CPU fuser stays off (torch's default), so no op is fused or
reordered. ``torch.jit.script`` is deprecated upstream; when this torch cannot script, the
eager function is used, with a warning in the log: slower beside a busy event loop, the same
numbers. Environment ``CELLSERVE_TORCHSCRIPT=0`` forces the eager functions.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable
from typing import TypeVar

import torch

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., object])


def enabled() -> bool:
    """Whether kernels are scripted (environment ``CELLSERVE_TORCHSCRIPT``, default on)."""
    return os.environ.get("CELLSERVE_TORCHSCRIPT", "1") not in ("0", "false", "no", "off")


def scripted(fn: F) -> F:
    """``fn`` compiled by TorchScript, or ``fn`` itself when scripting is off or fails."""
    if not enabled():
        return fn
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit's own notice
            out: F = torch.jit.script(fn)
        return out
    except Exception as e:  # any failure leaves the eager function: the same numbers
        log.warning("TorchScript unavailable for %s (%s): running it eagerly", fn.__qualname__, e)
        return fn
