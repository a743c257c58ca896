#!/usr/bin/env python3
"""Per-row time of one recurrent step (embedding, recurrent layers, head) at each serving precision.

    python scripts/bench_precision.py [--model models/python-lstm] [--batches 1,16,256] [--reps 50]
                                      [--prefill 64,1000]

One torch thread. Each precision runs the module the server steps (``cellserve.nn.precision``),
under the runner's kernel rule (``nn.kernels.step_kernel``: native below 128 rows, oneDNN from
there on; fp32 is also timed with oneDNN off at every size). int8 is the served fixed-range
module; torch's dynamic quantization (per-call activation ranges, not batch-invariant) is timed
beside it for comparison. Prints the median and the best of ``--reps`` steps per batch size, in
microseconds per step and per row, then one row's prefill of ``--prefill`` characters (one
sequence call, as the runner makes it). Numbers from a machine shared with other work are
smokes: say so when quoting them.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from cellserve.nn import precision as prec
from cellserve.nn.checkpoint import load_model
from cellserve.nn.kernels import onednn, step_kernel


def time_step(model: torch.nn.Module, batch: int, reps: int, kernel: bool | None) -> list[float]:
    """Seconds per step of ``batch`` rows; kernel None: the runner's rule, else oneDNN on/off."""
    m = model
    tok = torch.randint(1, 90, (batch, 1))
    state = tuple(torch.randn(m.layers, batch, m.hidden).tanh() for _ in range(m.state_arity))  # type: ignore[attr-defined]
    times = []
    with torch.inference_mode():
        for i in range(reps + 3):
            ctx = step_kernel(m.device, batch) if kernel is None else onednn(kernel)  # type: ignore[attr-defined]
            t0 = time.perf_counter()
            with ctx:
                out, _ = m.rnn_forward(m.embed(tok), state)  # type: ignore[attr-defined,operator]
                m.head(out[:, 0])  # type: ignore[operator]
            if i >= 3:  # warm-up: weight packing, allocator
                times.append(time.perf_counter() - t0)
    return times


def time_prefill(model: torch.nn.Module, chars: int, reps: int) -> list[float]:
    """Seconds per prefill of one row of ``chars`` tokens (one sequence call and the head on
    every position, oneDNN on: the runner's plain prefill)."""
    m = model
    tok = torch.randint(1, 90, (1, chars))
    state = tuple(torch.zeros(m.layers, 1, m.hidden) for _ in range(m.state_arity))  # type: ignore[attr-defined]
    times = []
    with torch.inference_mode(), onednn(True):
        for i in range(reps + 1):
            t0 = time.perf_counter()
            out, _ = m.rnn_forward(m.embed(tok), state)  # type: ignore[attr-defined,operator]
            m.head(out)  # type: ignore[operator]
            if i >= 1:
                times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=Path(__file__).resolve().parents[1] / "models" / "python-lstm")
    p.add_argument("--batches", default="1,16,256")
    p.add_argument("--reps", type=int, default=50)
    p.add_argument("--prefill", default="64,1000", help="prefill lengths in characters ('' for none)")
    a = p.parse_args()
    torch.set_num_threads(1)
    lm = load_model(a.model)
    s = lm.spec
    print(f"{s.name}: {s.cell} {s.layers}x{s.hidden}, embedding {s.embedding}, {len(s.vocabulary)} symbols; 1 thread")
    runs: list[tuple[str, torch.nn.Module, bool | None]] = [
        ("fp32 (runner's kernel rule)", lm.model, None),
        ("fp32 (oneDNN off)", lm.model, False),
    ]
    if "int8" in prec.available(torch.device("cpu")):
        runs.append(("int8 dynamic (torch, old)", prec.quantize_dynamic_int8(lm.model), None))
        runs.append(("int8 fixed-range (served)", prec.convert(lm.model, "int8"), None))
    print(f"{'precision':30} {'rows':>5} {'median us/step':>15} {'best us/step':>13} {'median us/row':>14}")
    for b in (int(x) for x in a.batches.split(",")):
        for name, model, kernel in runs:
            t = time_step(model, b, a.reps, kernel)
            med = statistics.median(t) * 1e6
            print(f"{name:30} {b:>5} {med:>15,.0f} {min(t) * 1e6:>13,.0f} {med / b:>14,.1f}")
    lengths = [int(x) for x in a.prefill.split(",") if x]
    if lengths:
        print(f"\n{'precision':30} {'chars':>5} {'median us/call':>15} {'best us/call':>13} {'median us/char':>14}")
    for n in lengths:
        for name, model, kernel in runs:
            if kernel is False:
                continue
            t = time_prefill(model, n, max(3, a.reps // 10))
            med = statistics.median(t) * 1e6
            print(f"{name:30} {n:>5} {med:>15,.0f} {min(t) * 1e6:>13,.0f} {med / n:>14,.1f}")


if __name__ == "__main__":
    main()
