"""Two trees' servers side by side: server CPU per keystroke of a `cellserve serve` run from
tree A and one from tree B (each a checkout with its memory extension built: `python setup.py
build_ext --inplace` there, or this tree), both up at once, closed-loop N sessions (the bench's
load generator), in ROUNDS pairs of back-to-back windows whose order alternates (A then B, B
then A, ...): the bench's ``alternating_windows``, as its efficiency pairs use it. A change's
effect on the server is the per-round difference: both figures of a round come from the same
minute, which on a shared box matters more than anything else (docs/measurements.md).

    git worktree add /tmp/before <commit> && (cd /tmp/before && python setup.py build_ext --inplace)
    .venv/bin/python scripts/ab_servers.py /tmp/before . [--n 256] [--rounds 6] [--window 6]
    .venv/bin/python scripts/ab_servers.py . . --b-args "--set speculation=false"   (one tree, two settings)
    .venv/bin/python scripts/ab_servers.py /tmp/before . --complete 16 --rounds 2   (completions)

Prints each round (server CPU, us per keystroke, and keystrokes/s) and the medians of B - A
and B / A of the CPU and of B / A of the throughput. ``--a-args`` / ``--b-args``: more
`cellserve serve` arguments for that side. ``--complete B``: the bench's completion load
instead (B sessions each asking for a greedy 32-character completion, reading it to the end,
asking again); each round prints generated characters per second and the completion p50, and
the median B / A of the characters per second."""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
from pathlib import Path

from cellserve.bench.loadgen import Workload
from cellserve.bench.procs import ServerProc, cellserve_cmd
from cellserve.bench.suite import alternating_windows
from cellserve.config import default_model_dir


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("a", type=Path, help="tree A (its server/ is put first on the server's PYTHONPATH)")
    ap.add_argument("b", type=Path, help="tree B")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--window", type=float, default=6.0)
    ap.add_argument("--warmup", type=float, default=1.5)
    ap.add_argument("--model", default="python-lstm")
    ap.add_argument("--a-args", default="", help="more `cellserve serve` arguments for A (one string)")
    ap.add_argument("--b-args", default="", help="more `cellserve serve` arguments for B")
    ap.add_argument("--complete", type=int, default=0, metavar="B", help="B concurrent completions, not keystrokes")
    a = ap.parse_args()
    trees = {"A": a.a.resolve(), "B": a.b.resolve()}
    for t in trees.values():
        if not (t / "server" / "cellserve").is_dir():
            sys.exit(f"{t}: no server/cellserve here")
    cmd = cellserve_cmd(str(default_model_dir()), a.model, "cpu", 1, max(10_000, a.n))
    extra = {"A": shlex.split(a.a_args), "B": shlex.split(a.b_args)}
    servers = {
        k: ServerProc(f"cellserve-{k}", cmd + extra[k], {"PYTHONPATH": str(t / "server")}) for k, t in trees.items()
    }
    try:
        if a.complete:
            _completions(servers, Workload("complete", a.complete, a.warmup, a.window), a.rounds)
            return
        diffs: list[float] = []
        ratios: list[float] = []
        speeds: list[float] = []
        w = Workload("closed", a.n, a.warmup, a.window)
        for r, res in enumerate(alternating_windows(servers, a.rounds, w, 2)):
            got = {k: 1e3 * res[k]["server_cpu_ms_per_request"] for k in servers}
            rps = {k: res[k]["throughput_rps"] for k in servers}
            diffs.append(got["B"] - got["A"])
            ratios.append(got["B"] / got["A"])
            speeds.append(rps["B"] / rps["A"])
            print(
                f"round {r + 1}: A {got['A']:.1f}, B {got['B']:.1f} us/keystroke (B - A {diffs[-1]:+.1f}); "
                f"A {rps['A']:.0f}, B {rps['B']:.0f} keystrokes/s",
                flush=True,
            )
        print(
            f"median over {a.rounds} rounds: B - A {statistics.median(diffs):+.1f} us/keystroke "
            f"(range {min(diffs):+.1f} to {max(diffs):+.1f}), B / A {statistics.median(ratios):.3f}; "
            f"keystrokes/s B / A {statistics.median(speeds):.3f} (range {min(speeds):.3f} to {max(speeds):.3f})"
        )
        _check_alive(servers)
    finally:
        for s in servers.values():
            s.stop()


def _completions(servers: dict[str, ServerProc], w: Workload, rounds: int) -> None:
    speeds: list[float] = []
    for r, res in enumerate(alternating_windows(servers, rounds, w, 2)):
        cps = {k: res[k]["chars_per_s"] for k in servers}
        p50 = {k: res[k]["latency_ms"]["p50"] for k in servers}
        speeds.append(cps["B"] / cps["A"])
        print(
            f"round {r + 1}: B={w.sessions} A {cps['A']:.0f}, B {cps['B']:.0f} chars/s; "
            f"completion p50 A {p50['A']:.1f}, B {p50['B']:.1f} ms",
            flush=True,
        )
    print(
        f"median over {rounds} rounds: chars/s B / A {statistics.median(speeds):.3f} "
        f"(range {min(speeds):.3f} to {max(speeds):.3f})"
    )
    _check_alive(servers)


def _check_alive(servers: dict[str, ServerProc]) -> None:
    for k, s in servers.items():
        if not s.alive():
            sys.exit(f"server {k} died:\n" + "".join(s.stderr_tail))


if __name__ == "__main__":
    main()
