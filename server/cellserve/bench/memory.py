"""Memory per idle session: open sessions (unary OpenSession, never touched again) on a
cellserve server and read its RSS at each count, against the raw state bytes a session needs
(layers x hidden x arity x 4 bytes in fp32)."""

from __future__ import annotations

import time
from typing import Any

from ..nn.checkpoint import read_spec
from .loadgen import Workload, run_load
from .model import ModelRef
from .procs import ServerProc

SETTLE_S = 1.0


def raw_state_bytes(ref: ModelRef) -> int:
    s = read_spec(ref.folder)
    return s.layers * s.hidden * (2 if s.cell == "lstm" else 1) * 4


def measure(server: ServerProc, ref: ModelRef, counts: list[int], workers: int) -> dict[str, Any]:
    # one session opened and closed first: imports, thread pools and the first pool chunk are
    # part of the baseline, not of the sessions
    run_load(server.target, Workload("open_sessions", 1), 1)
    time.sleep(SETTLE_S)
    base = server.rss_bytes()
    raw = raw_state_bytes(ref)
    rows = []
    opened = 1
    for n in sorted(counts):
        r = run_load(server.target, Workload("open_sessions", n - opened), workers)
        opened += r["opened"]
        time.sleep(SETTLE_S)  # the engine writes the new sessions' start states
        rss = server.rss_bytes()
        per = (rss - base) / max(1, opened - 1)
        rows.append(
            {
                "sessions": opened,
                "rss_bytes": rss,
                "rss_delta_bytes": rss - base,
                "rss_per_session_bytes": per,
                "raw_state_bytes": raw,
                "overhead_ratio": per / raw,
                "open_failures": r["failures"],
                "opens_per_s": r["opens_per_s"],
                "error_samples": r["error_samples"],
            }
        )
    return {"baseline_rss_bytes": base, "raw_state_bytes_per_session": raw, "points": rows}
