"""scripts/cpu_by_thread.py's per-thread reading (DETAIL=1): user and system CPU, waits,
preemptions and minor faults of each thread, read from /proc, and its per-keystroke report."""

from __future__ import annotations

import mmap
import os
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import cpu_by_thread  # noqa: E402

pytestmark = pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads /proc (Linux)")


def _touch_fresh_pages(size: int) -> None:
    """Writes one byte in every page of a new anonymous mapping, on this thread: each write is a
    minor fault whatever the allocator kept from earlier tests (a bytearray of the same size
    can come from heap pages already faulted in, and then costs none)."""
    with mmap.mmap(-1, size) as mm:
        for at in range(0, size, mmap.PAGESIZE):
            mm[at] = 1


def _sleeper(stop: threading.Event) -> None:
    while not stop.wait(0.002):  # each wait is a voluntary switch
        pass


def test_detail_counts_a_threads_waits_and_faults() -> None:
    stop = threading.Event()
    t = threading.Thread(target=_sleeper, args=(stop,))
    t.start()
    try:
        first: cpu_by_thread.Detail = {}
        cpu_by_thread.threads_cpu("me", os.getpid(), first)
        time.sleep(0.1)
        _touch_fresh_pages(8 << 20)
        last: cpu_by_thread.Detail = {}
        reading = cpu_by_thread.threads_cpu("me", os.getpid(), last)
    finally:
        stop.set()
        t.join()
    assert set(last) == set(reading)
    sleeper = next(k for k in last if k[3] == t.native_id)
    main = next(k for k in last if k[3] == os.getpid())
    user, system, vol, invol, faults = (b - a for a, b in zip(first[sleeper], last[sleeper], strict=True))
    assert vol >= 10  # it waited every 2 ms for 0.1 s
    assert user >= 0 and system >= 0 and invol >= 0 and faults >= 0
    assert last[main][4] - first[main][4] >= 1000  # 8 MB of fresh pages: about 2,048 faults
    for key, (u, s, *_rest) in last.items():  # the CPU reading is the detail's user + system
        assert reading[key] == pytest.approx(u + s)


def test_detail_report_prints_per_keystroke(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DETAIL", "1")
    probe = cpu_by_thread.Probe({"server": 1})
    key = ("server", 1, "python", 7)
    probe.readings = [{key: 0.0}, {key: 0.003}]
    probe.details = [{key: (0.0, 0.0, 0, 0, 0)}, {key: (0.002, 0.001, 50, 10, 200)}]
    probe.report(100, {7: "cellserve-core"})
    out = capsys.readouterr().out
    assert "30.0  cellserve-core" in out
    line = next(ln for ln in out.splitlines() if ln.endswith("server: cellserve-core"))
    assert line.split()[:5] == ["20.0", "10.0", "0.500", "0.100", "2.00"]
