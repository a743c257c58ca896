"""Where a paced typist's keystroke spends its time inside the server: a `cellserve serve` on
the shipped models with timing marks around the calls a keystroke passes (the stream's submit,
the post to the core thread, the core's add and step, the hand-off back to the event loop,
the response written), one session typing Python source at RATE keystrokes per second.
Prints the client's p50 and, per mark, the median milliseconds after the stream read the
request. Extra arguments go to `cellserve serve` (e.g. `--set speculation=false`).

    .venv/bin/python scripts/trace_typist.py RATE [SERVE ARGS...]

The marks are installed by a sitecustomize module this script writes to a temporary folder
and puts on the server's PYTHONPATH; the server writes the medians to a file every 2 s.
"""

from __future__ import annotations

import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path

from cellserve.bench.loadgen import percentiles, source_text
from cellserve.bench.procs import ServerProc, cellserve_cmd
from cellserve.bench.speculation import Typing, _type

SITECUSTOMIZE = """
import os, statistics, sys, threading, time

marks = []


def _wrap(cls, name, label):
    f = getattr(cls, name)

    def g(*a, **k):
        marks.append((label + ">", time.perf_counter()))
        try:
            return f(*a, **k)
        finally:
            marks.append((label + "<", time.perf_counter()))

    setattr(cls, name, g)


def _install():
    from cellserve.api import stream
    from cellserve.engine import core, engine, loop

    _wrap(stream.SessionStream, "_submit", "submit")
    _wrap(loop.CoreLoop, "post", "post")
    _wrap(core.EngineCore, "add", "add")
    _wrap(core.EngineCore, "step", "step")
    _wrap(engine.Engine, "_hand_off", "handoff")
    _wrap(engine.Engine, "_on_step", "onstep")
    _wrap(stream.SessionStream, "_written", "written")


def _dump():
    per, cur = {}, None
    for label, t in list(marks):
        if label == "submit>":
            cur = {label: t}
        elif cur is not None and label not in cur:
            cur[label] = t
            if label == "written>":  # one keystroke, from its submit to its response
                for k, v in cur.items():
                    per.setdefault(k, []).append((v - cur["submit>"]) * 1e3)
                cur = None
    rows = sorted(per.items(), key=lambda kv: statistics.median(kv[1]))
    with open(os.environ["TRACE_OUT"], "w") as fh:
        for k, v in rows:
            fh.write(f"{k:10s} n={len(v):4d} p50={statistics.median(v):.3f} ms\\n")


def _run():
    names = ("cellserve.api.stream", "cellserve.engine.engine", "cellserve.engine.loop", "cellserve.engine.core")
    while not all(n in sys.modules for n in names) or not hasattr(sys.modules[names[0]], "SessionStream"):
        time.sleep(0.01)
    time.sleep(0.2)  # the modules finish importing
    _install()
    while True:
        time.sleep(2.0)
        _dump()


threading.Thread(target=_run, daemon=True).start()
"""


def main() -> None:
    rate, extra = float(sys.argv[1]), sys.argv[2:]
    with tempfile.TemporaryDirectory(prefix="cellserve-trace-") as tmp:
        (Path(tmp) / "sitecustomize.py").write_text(SITECUSTOMIZE)
        out = Path(tmp) / "marks.txt"
        cmd = cellserve_cmd("models", "python-lstm", "cpu", 1, 64) + extra
        server = ServerProc("cellserve", cmd, env={"PYTHONPATH": tmp, "TRACE_OUT": str(out)})
        try:
            w = Typing(keystrokes=int(min(15 * rate, 600)), rate=rate)
            lat = asyncio.run(_type(server.target, source_text(), w, random.Random(0)))
            time.sleep(2.5)  # one more dump
        finally:
            server.stop()
        p = percentiles(lat)
        print(f"{rate:g} keystrokes/s: client p50 {p['p50']:.2f} ms, mean {p['mean']:.2f} ms")
        print(out.read_text() if out.exists() else "no marks written")


if __name__ == "__main__":
    main()
