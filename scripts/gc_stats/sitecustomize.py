"""Loaded by every Python process started with this folder on PYTHONPATH (``cpu_by_thread.py``
with GC=1 does that): times the garbage collector's passes per generation with the thread CPU
clock and writes, every second, ``<pid>.json`` into $GC_STATS_DIR: the process's CPU so far,
the seconds and passes per generation, and how many objects are frozen (``gc.freeze``)."""

import gc
import json
import os
import threading
import time

_DIR = os.environ.get("GC_STATS_DIR", "")
_spent = [0.0, 0.0, 0.0]
_passes = [0, 0, 0]
_started: dict[int, float] = {}


def _timed(phase: str, info: dict[str, int]) -> None:
    me = threading.get_ident()
    if phase == "start":
        _started[me] = time.thread_time()
    elif me in _started:
        generation = info["generation"]
        _spent[generation] += time.thread_time() - _started.pop(me)
        _passes[generation] += 1


def _write() -> None:
    while True:
        time.sleep(1.0)
        stats = {"cpu_s": time.process_time(), "gc_s": _spent, "passes": _passes, "frozen": gc.get_freeze_count()}
        with open(os.path.join(_DIR, f"{os.getpid()}.json"), "w") as f:
            json.dump(stats, f)


if _DIR:
    gc.callbacks.append(_timed)
    threading.Thread(target=_write, name="gc-stats", daemon=True).start()
