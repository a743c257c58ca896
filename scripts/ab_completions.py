"""Completion throughput of two trees' servers: a `cellserve serve` on the shipped models from
tree A, then one from tree B (each a checkout with its memory extension built, or this tree),
one at a time, under the bench's completion load (B sessions each asking for a greedy
32-character completion, reading it to the end, asking again), in ROUNDS pairs whose order
alternates (A then B, B then A, ...). Prints each window's generated characters per second,
completion p50 and the server's CPU utilisation.

    git worktree add /tmp/before <commit> && (cd /tmp/before && python setup.py build_ext --inplace)
    .venv/bin/python scripts/ab_completions.py /tmp/before . [--b 16] [--rounds 2] [--window 6]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cellserve.bench.loadgen import Workload, run_load
from cellserve.bench.procs import ServerProc, cellserve_cmd
from cellserve.config import default_model_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a", type=Path, help="tree A (its server/ is put first on the server's PYTHONPATH)")
    ap.add_argument("b", type=Path, help="tree B")
    ap.add_argument("--b", dest="sessions", type=int, default=16, help="concurrent completions")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--window", type=float, default=6.0)
    args = ap.parse_args()
    cmd = cellserve_cmd(str(default_model_dir()), "python-lstm", "cpu", 1, 4096)
    trees = [("A", args.a.resolve()), ("B", args.b.resolve())]
    for r in range(args.rounds):
        for name, tree in trees if r % 2 == 0 else trees[::-1]:
            server = ServerProc(f"cellserve-{name}", cmd, {"PYTHONPATH": str(tree / "server")})
            try:
                res = run_load(
                    server.target,
                    Workload("complete", args.sessions, warmup_s=1.0, window_s=args.window),
                    2,
                    server.cpu_seconds,
                )
            finally:
                server.stop()
            print(
                f"round {r + 1} {name} ({tree}): B={args.sessions} {res['chars_per_s']:.0f} chars/s, "
                f"p50 {res['latency_ms']['p50']:.1f} ms, server CPU {res['server_cpu_util']:.2f} cores, "
                f"errors {res['errors']}",
                flush=True,
            )


if __name__ == "__main__":
    main()
