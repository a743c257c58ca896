"""Children never outlive the parent: the kernel kills them when it dies (PR_SET_PDEATHSIG),
even by SIGKILL, when the parent's own cleanup cannot run. And a started child's heap is kept
out of the garbage collector's full passes (``freeze_startup_heap``)."""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import signal
import sys

log = logging.getLogger("cellserve.supervisor")
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent_pid: int) -> None:
    """Asks the kernel to SIGKILL this process when ``parent_pid`` (its parent) exits. If the
    parent is already gone (it died before this call), exits at once."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
            log.warning("cannot ask for a parent-death signal (errno %d)", ctypes.get_errno())
    if os.getppid() != parent_pid:
        os._exit(1)


def freeze_startup_heap() -> None:
    """Moves everything allocated while starting (modules, models, servers) to the collector's
    permanent generation, once the process is about to serve. A full collection then scans only
    what serving allocated instead of the whole startup heap (with torch imported, some 200k
    objects: tens of milliseconds per pass, under the interpreter lock), while the objects in
    flight that full passes exist for are still collected. The price: a cycle among startup
    objects that becomes garbage later is never freed."""
    gc.collect()
    gc.freeze()
