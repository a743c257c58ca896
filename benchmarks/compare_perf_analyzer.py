#!/usr/bin/env python3
"""perf_analyzer and our own load generator on the same sequences, in one run, one server.

    .venv/bin/python benchmarks/compare_perf_analyzer.py                 # writes docs/benchmarks/
    .venv/bin/python benchmarks/compare_perf_analyzer.py --concurrency 1,4 --window 10
    .venv/bin/python benchmarks/compare_perf_analyzer.py --quick --out /tmp/pa   # a smoke run

One `cellserve serve` (default settings, `--cpu-threads 1` as in `cellserve bench`) serves every
row. For each concurrency C, one after the other:

0. an unrecorded warm-up (a fresh server's first steps are slow);
1. perf_analyzer 2.51 (benchmarks/perf_analyzer.sh: its own venv, see that file) with
   `--streaming --sequence-length 20 --concurrency-range C:C`: C streams, each running sequences
   of 20 requests, one keystroke each (the first 20 characters of --text), START on the first
   request, END on the last;
2. our load generator (cellserve.bench.loadgen, workload `sequences`, surface `kserve`): the same
   requests on the same surface, C streams, closed loop;
3. our load generator on the native surface (`surface native`): the same keystrokes, a
   `Session` stream per sequence (open, 20 appends, close).

Each row gets the server's own view too: ModelStatistics before and after (requests counted,
their mean time in the server from reading to answering, the engine's mean queue wait and
device time per row). Rows 1 and 2 send the same bytes; if their infer/s or latency differ
beyond the noise, the server's view says whether the difference is in the client or the server.
perf_analyzer measures over stable windows of --window seconds (at most 5 trials, 50%
stability); ours over one window of the same length after a warm-up.

Writes `perf_analyzer_compare.md` and `.json` under --out. Exits 3 when perf_analyzer cannot be
installed. Do not run it on a machine shared with other work and call the figures benchmarks.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import grpc
from cellserve.bench.loadgen import Workload, default_workers, run_load
from cellserve.bench.procs import ServerProc
from cellserve_client._proto.inference import grpc_service_pb2 as kpb
from cellserve_client._proto.inference import grpc_service_pb2_grpc as krpc

ROOT = Path(__file__).resolve().parents[1]
PA_SCRIPT = ROOT / "benchmarks" / "perf_analyzer.sh"
SEQUENCE_LENGTH = 20  # perf_analyzer.sh sends --sequence-length 20
DEFAULT_TEXT = "for name in sorted(os.listdir(path)):"


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def server_view(target: str, model: str) -> dict[str, int]:
    """The model's ModelStatistics counters now."""
    with grpc.insecure_channel(target) as ch:
        r = krpc.GRPCInferenceServiceStub(ch).ModelStatistics(kpb.ModelStatisticsRequest(name=model), timeout=30)
    (s,) = r.model_stats
    st = s.inference_stats
    return {
        "requests": st.success.count,
        "request_ns": st.success.ns,
        "fails": st.fail.count,
        "executions": s.execution_count,
        "queued": st.queue.count,
        "queue_ns": st.queue.ns,
        "rows": st.compute_infer.count,
        "row_device_ns": st.compute_infer.ns,
    }


def server_delta(before: dict[str, int], after: dict[str, int], window_s: float | None) -> dict[str, Any]:
    d = {k: after[k] - before[k] for k in after}
    return {
        "requests": d["requests"],
        "fails": d["fails"],
        "mean_in_server_ms": d["request_ns"] / d["requests"] / 1e6 if d["requests"] else None,
        "mean_queue_ms": d["queue_ns"] / d["queued"] / 1e6 if d["queued"] else None,
        "mean_device_ms_per_row": d["row_device_ns"] / d["rows"] / 1e6 if d["rows"] else None,
        "rows_per_execution": d["rows"] / d["executions"] if d["executions"] else None,
        "window_s": window_s,
    }


def run_perf_analyzer(target: str, model: str, text: str, concurrency: int, window_s: float) -> dict[str, Any]:
    cmd = [str(PA_SCRIPT), "--target", target, "--model", model, "--text", text, "--"]
    cmd += ["--concurrency-range", f"{concurrency}:{concurrency}", "--measurement-interval", str(int(window_s * 1000))]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    if out.returncode == 3:
        sys.stderr.write(out.stderr)
        raise SystemExit(3)
    if out.returncode != 0:
        raise RuntimeError(f"perf_analyzer failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    (row,) = list(csv.DictReader(out.stdout.split("results.csv\n", 1)[1].splitlines()))

    def ms(column: str) -> float | None:
        v = row.get(column)
        return float(v) / 1000.0 if v not in (None, "") else None  # perf_analyzer writes microseconds

    return {
        "command": shlex.join(cmd),
        "infer_per_s": float(row["Inferences/Second"]),
        "latency_ms": {
            "mean": mean_latency_ms(row),
            "p50": ms("p50 latency"),
            "p90": ms("p90 latency"),
            "p95": ms("p95 latency"),
            "p99": ms("p99 latency"),
        },
        "errors": None,  # perf_analyzer stops on an error; the server's fail count is in the row
        "csv": row,
    }


# perf_analyzer's CSV has no average latency column: its console "Avg latency" is the sum of
# these mean components (client send, network and server, queue, compute, client receive).
PA_LATENCY_PARTS = (
    "Client Send",
    "Network+Server Send/Recv",
    "Server Queue",
    "Server Compute Input",
    "Server Compute Infer",
    "Server Compute Output",
    "Client Recv",
)


def mean_latency_ms(row: dict[str, str]) -> float | None:
    if any(not row.get(k) for k in PA_LATENCY_PARTS):
        return None
    return sum(float(row[k]) for k in PA_LATENCY_PARTS) / 1000.0


def warm_up(target: str, model: str, text: str, seconds: float) -> None:
    """A fresh server's first steps are slow (allocation, oneDNN's first weight reorders): one
    unrecorded run, so that the first row does not pay for them."""
    run_ours(target, model, text, 1, seconds, 0.0, "kserve")


def run_ours(
    target: str, model: str, text: str, concurrency: int, window_s: float, warmup_s: float, surface: str
) -> dict[str, Any]:
    w = Workload(
        kind="sequences",
        sessions=concurrency,
        warmup_s=warmup_s,
        window_s=window_s,
        model=model,
        surface=surface,
        sequence_length=SEQUENCE_LENGTH,
        sequence_text=text[:SEQUENCE_LENGTH],
    )
    r = run_load(target, w, default_workers())
    lat = r["latency_ms"]
    return {
        "infer_per_s": r["throughput_rps"],
        "latency_ms": {k: lat.get(k) for k in ("mean", "p50", "p90", "p95", "p99")},
        "errors": r["errors"],
        "error_samples": r["error_samples"],
    }


def _f(x: float | None, fmt: str = "{:.2f}") -> str:
    return "n/a" if x is None else fmt.format(x)


def write_report(out: Path, meta: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "perf_analyzer_compare.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [
        "# perf_analyzer and our load generator on the same sequences",
        "",
        f"Command: `{meta['command']}`, {meta['date']} ({meta['machine']}). Model `{meta['model']}`; "
        f"sequences of {SEQUENCE_LENGTH} requests, one keystroke each of `{meta['text'][:SEQUENCE_LENGTH]}`; "
        f"{meta['window_s']:g} s windows. Written by benchmarks/compare_perf_analyzer.py (how: its docstring).",
        "",
    ]
    if meta.get("note"):
        lines += [f"**{meta['note']}**", ""]
    lines += [
        "| C | tool | surface | infer/s | mean ms | p50 | p90 | p95 | p99 | client errors "
        "| server: requests | in server ms | queue ms | device ms/row | rows/batch |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lat, sv = r["latency_ms"], r["server"]
        lines.append(
            f"| {r['concurrency']} | {r['tool']} | {r['surface']} | {r['infer_per_s']:.1f} | {_f(lat['mean'])} | "
            f"{_f(lat['p50'])} | {_f(lat['p90'])} | {_f(lat['p95'])} | {_f(lat['p99'])} | "
            f"{_f(r['errors'], '{:d}') if r['errors'] is not None else 'n/a'} | "
            f"{sv['requests']} ({sv['fails']} failed) | {_f(sv['mean_in_server_ms'])} | {_f(sv['mean_queue_ms'])} | "
            f"{_f(sv['mean_device_ms_per_row'])} | {_f(sv['rows_per_execution'], '{:.1f}')} |"
        )
    lines += [
        "",
        "Server columns are ModelStatistics deltas over the whole row (warm-up and perf_analyzer's "
        "trials included): requests answered on the KServe surface (0 for the native rows, which "
        "the front does not count), their mean time from being read to being answered, and from "
        "the engine (every surface) the mean wait from submission to the iteration that ran an "
        "operation, the device time per row and rows per batch.",
        "",
    ]
    (out / "perf_analyzer_compare.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", help="an already running server (host:port); default: start one")
    p.add_argument("--model", default="python-lstm")
    p.add_argument("--text", default=DEFAULT_TEXT, help="the keystrokes; the first 20 make every sequence")
    p.add_argument("--concurrency", type=_ints, default=[1, 4], help="concurrent sequences (default 1,4)")
    p.add_argument("--window", type=float, default=5.0, help="measurement window, seconds (default 5)")
    p.add_argument("--warmup", type=float, default=2.0, help="our load generator's warm-up, seconds")
    p.add_argument("--quick", action="store_true", help="smoke: concurrency 1, 1 s windows")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    p.add_argument("--note", default="", help="a remark printed under the header (e.g. the conditions)")
    a = p.parse_args(argv)
    if len(a.text) < SEQUENCE_LENGTH:
        p.error(f"--text needs at least {SEQUENCE_LENGTH} characters")
    if a.quick:
        a.concurrency, a.window, a.warmup = [1], 1.0, 0.5
    server = None
    if a.target is None:
        server = ServerProc(
            "cellserve",
            [sys.executable, "-m", "cellserve.cli", "serve", "--host", "127.0.0.1", "--port", "0",
             "--metrics-host", "127.0.0.1", "--metrics-port", "0", "--cpu-threads", "1", "--log-level", "warning"],
        )  # fmt: skip
    target = a.target or server.target  # type: ignore[union-attr]
    rows: list[dict[str, Any]] = []
    try:
        warm_up(target, a.model, a.text, max(1.0, a.warmup))
        for c in a.concurrency:
            runs: list[tuple[str, str, Callable[[], dict[str, Any]]]] = [
                ("perf_analyzer 2.51", "kserve", partial(run_perf_analyzer, target, a.model, a.text, c, a.window)),
                (
                    "cellserve loadgen",
                    "kserve",
                    partial(run_ours, target, a.model, a.text, c, a.window, a.warmup, "kserve"),
                ),
                (
                    "cellserve loadgen",
                    "native",
                    partial(run_ours, target, a.model, a.text, c, a.window, a.warmup, "native"),
                ),
            ]
            for tool, surface, run in runs:
                before = server_view(target, a.model)
                result = run()
                after = server_view(target, a.model)
                rows.append(
                    {
                        "concurrency": c,
                        "tool": tool,
                        "surface": surface,
                        **result,
                        "server": server_delta(before, after, a.window),
                    }
                )
                print(f"C={c} {tool} ({surface}): {result['infer_per_s']:.1f} infer/s", flush=True)
    finally:
        if server is not None:
            server.stop()
    meta = {
        "command": shlex.join(["benchmarks/compare_perf_analyzer.py", *(argv if argv is not None else sys.argv[1:])]),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} CPUs, Python {platform.python_version()}, load {os.getloadavg()[0]:.1f}",
        "model": a.model,
        "text": a.text,
        "window_s": a.window,
        "note": a.note,
    }
    write_report(a.out, meta, rows)
    print(f"wrote {a.out / 'perf_analyzer_compare.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
