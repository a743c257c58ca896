"""The engine core process's capacity (``cellserve.bench.capacity``, the bench's ``scaling``
workload runs it too): the core process of ``serve --frontends`` alone, driven over its socket
by the frontends' own client with no gRPC, N sessions each appending one character and awaiting
its answer, on a CPU of its own when there are two or more. Prints keystrokes/s, rows per step,
the core process's CPU per keystroke and its CPU use in cores, beside the model's own batched
step per row at N (the bench's ceiling) and the difference, which issue 18 wants at most 30 us.

    .venv/bin/python scripts/core_capacity.py [N] [SECONDS] [--warmup S] [--model NAME]
"""

from __future__ import annotations

import argparse

from cellserve.bench.capacity import measure_core
from cellserve.bench.ceiling import Ceiling
from cellserve.bench.model import ModelRef
from cellserve.config import default_model_dir


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("n", type=int, nargs="?", default=256)
    ap.add_argument("seconds", type=float, nargs="?", default=8.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--model", default="python-lstm")
    a = ap.parse_args()
    ref = ModelRef(default_model_dir(), a.model, "")
    r = measure_core(ref, "cpu", 1, a.n, a.warmup, a.seconds)
    ceiling = Ceiling(ref, "cpu", 1).keystrokes(a.n, 2.0)
    per_ks, model = r["cpu_ms_per_keystroke"] * 1e3, ceiling["step_s"] / a.n * 1e6
    print(
        f"N={a.n}{' (core pinned)' if r['pinned'] else ''}: {r['keystrokes_per_s']:.0f} keystrokes/s, "
        f"{r['rows_per_step']:.1f} rows per step; core process {per_ks:.1f} us per keystroke, {r['cores']:.2f} cores; "
        f"the model's own step {model:.1f} us per row ({ceiling['precision']}): {per_ks - model:+.1f} us beyond it"
    )


if __name__ == "__main__":
    main()
