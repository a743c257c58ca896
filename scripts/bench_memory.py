"""The session memory's CPU per keystroke, by piece: N sessions, each with TEXT characters of
this repository's server sources already read, then per keystroke

- ``point``: the runner's keystroke point (``MemoryFork.predict_after``: the row's fork and
  the keystroke);
- ``predict``: ``SessionMemory.predict`` at the end of the text (no characters of its own);
- ``arrays``: ``memory_arrays_many`` of the N keystroke points, per point;
- ``mix``: ``Mixer.mix`` (the shipped python-lstm mixer) of N rows, per row;
- ``point_arrays``: the runner's whole host side (forks, predictions, arrays), per point;
- ``push``: the commit's ``SessionMemory.push`` of one character;
- ``nbytes``: ``SessionMemory.nbytes`` (the commit asks after every landed piece);
- ``rebuild``: ``SessionMemory.rebuild`` of a session's text (a restore), per character (4
  sessions).

CPU per call (``time.thread_time``), the best of REPEATS passes. Runs whatever ``cellserve``
is importable, so an A/B is the same command with another tree's ``server`` first on
PYTHONPATH; ``CELLSERVE_NATIVE_MEMORY=0`` runs the memory's Python loops instead of its C
extension (``memory/_window.c``):

    .venv/bin/python scripts/bench_memory.py [--n 256] [--text 120 4000 40000] [--repeats 5]
    PYTHONPATH=/path/to/other/server .venv/bin/python scripts/bench_memory.py ...
    CELLSERVE_NATIVE_MEMORY=0 .venv/bin/python scripts/bench_memory.py ...
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import cellserve
import torch
from cellserve.config import default_model_dir
from cellserve.engine.memory_mix import point_arrays
from cellserve.engine.plan import Row
from cellserve.memory import window
from cellserve.memory.features import memory_arrays_many
from cellserve.memory.mixer import Mixer
from cellserve.memory.window import MemoryFork, MemoryPrediction, SessionMemory
from cellserve.nn.checkpoint import load_model


def source_ids(encode: Callable[[str], list[int]]) -> list[int]:
    root = Path(__file__).resolve().parents[1] / "server" / "cellserve"
    return encode("".join(f.read_text() for f in sorted(root.rglob("*.py"))))


def best(repeats: int, calls: int, fn: Callable[[], object]) -> float:
    """Microseconds of thread CPU per call: the fastest of ``repeats`` runs of ``fn`` (which
    makes ``calls`` calls)."""
    times = []
    for _ in range(repeats):
        t0 = time.thread_time()
        fn()
        times.append(time.thread_time() - t0)
    return 1e6 * min(times) / calls


def measure(length: int, ids: list[int], n: int, rep: int, mixer: Mixer, v: int) -> dict[str, float]:
    starts = [(i * 7919) % (len(ids) - length - 2 * rep - 2) for i in range(n)]
    mems = [SessionMemory.rebuild(ids[s : s + length]) for s in starts]
    nxt = [ids[s + length] for s in starts]
    rows = [Row([c], src=None, memory=m.fork()) for m, c in zip(mems, nxt, strict=True)]
    points = [(i, 1) for i in range(n)]

    def keystroke_points() -> list[MemoryPrediction]:
        out = []
        for r in rows:
            assert isinstance(r.memory, MemoryFork)
            out.append(r.memory.predict_after(r.tokens))
        return out

    preds = keystroke_points()
    lp = torch.log_softmax(torch.randn(n, v, generator=torch.Generator().manual_seed(0)), -1)
    dists, host = point_arrays(rows, points, v)
    res = {
        "point": best(rep, n, keystroke_points),
        "predict": best(rep, n, lambda: [m.predict() for m in mems]),
        "arrays": best(rep, n, lambda: memory_arrays_many(preds, v)),
        "mix": best(rep, n, lambda: mixer.mix(lp, dists, host)),
        "point_arrays": best(rep, n, lambda: point_arrays(rows, points, v)),
        "nbytes": best(rep, n, lambda: [m.nbytes() for m in mems]),
    }
    pushed = [0]

    def push_one() -> None:  # the next character of each session's text
        k = pushed[0]
        for m, s in zip(mems, starts, strict=True):
            m.push((ids[s + length + k],))
        pushed[0] += 1

    res["push"] = best(rep, n, push_one)
    texts = [ids[s : s + length] for s in starts[:4]]
    res["rebuild"] = best(rep, 4 * length, lambda: [SessionMemory.rebuild(t) for t in texts])
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--text", type=int, nargs="+", default=[120, 4000, 40000])
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(1)
    folder = default_model_dir() / "python-lstm"
    loaded = load_model(folder)
    mixer = Mixer.load(folder)
    v = len(loaded.vocab)
    ids = source_ids(lambda s: list(loaded.vocab.encode(s)))
    loops = "C" if window._native is not None else "Python"
    print(
        f"cellserve from {Path(cellserve.__file__).parent} (memory loops: {loops}); N={a.n}; us of CPU per call, best of {a.repeats}"
    )
    for length in a.text:
        res = measure(length, ids, a.n, a.repeats, mixer, v)
        print(f"text {length:6d}: " + "  ".join(f"{k} {t:6.2f}" for k, t in res.items()))


if __name__ == "__main__":
    main()
