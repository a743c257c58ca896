"""Handoff between replicas through Redis, measured: drain time and first-request latency after
the move, for N sessions (default 1,000 and 10,000), and the store's cost per session.

Starts a redis-server and two `cellserve serve` replicas (A, B) on free loopback ports, all
processes of this run. N sessions are opened on A and each types a 32-character piece; then A
gets SIGTERM and its drain writes every session to Redis (the drain time is the replica's own
log line, "wrote N sessions to the store in X s", and the wall time until A exits). Then, on B,
a sample of the moved sessions gets one Append each: the first touches the store (take, open,
adopt, then the step); a second Append of the same session is the baseline of a held session.
Reported: drain seconds, handoff latency p50/p99 against the held baseline in the same run,
record bytes (what `--session-store-sync-s` writes per idle session per interval).

    .venv/bin/python scripts/bench_handoff.py [N ...] [--sample 200] [--model python-lstm]

Needs redis-server on PATH. Run it on a quiet machine; figures from a busy one mean little.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
from cellserve_client._proto.cellserve.v1 import service_pb2 as svc
from cellserve_client._proto.cellserve.v1 import service_pb2_grpc as rpc
from cellserve_client._proto.cellserve.v1 import types_pb2 as types

PIECE = "import os\nfrom typing import Any\n"  # 32 characters per session
KEY = "bench-handoff-snapshot-key"
LISTENING = re.compile(r"cellserve listening on (\S+):(\d+) \(grpc\)")
WROTE = re.compile(r"wrote (\d+) sessions to the store in ([0-9.]+) s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(tmp: str) -> tuple[subprocess.Popen[bytes], str]:
    exe = shutil.which("redis-server")
    if exe is None:
        sys.exit("bench_handoff: redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", tmp],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    sys.exit("bench_handoff: redis-server did not start")


class Replica:
    def __init__(self, url: str, deployment: str, model: str, sessions: int, log: Path) -> None:
        self.log = log
        env = {**os.environ, "CELLSERVE_SNAPSHOT_KEY": KEY, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        cmd = [
            sys.executable, "-m", "cellserve.cli", "serve", "--host", "127.0.0.1", "--port", "0",
            "--metrics-port", "0", "--frontends", "0", "--cpu-threads", "1", "--default-model", model,
            "--max-sessions", str(sessions + 16), "--drain-grace", "120",
            "--session-store", url, "--set", f"session_store_deployment={deployment}",
        ]  # fmt: skip
        self.err = open(log, "w")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.err, text=True, env=env)
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            m = LISTENING.search(line)
            if m:
                self.target = f"{m.group(1)}:{m.group(2)}"
                return
        sys.exit(f"bench_handoff: a replica did not start; see {log}")

    def stop(self) -> float:
        t0 = time.perf_counter()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=600)
        took = time.perf_counter() - t0
        self.err.close()
        return took

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if not self.err.closed:
            self.err.close()


async def open_and_type(target: str, n: int, concurrency: int = 64) -> list[str]:
    async with grpc.aio.insecure_channel(target) as ch:
        stub = rpc.CellserveServiceStub(ch)
        sem = asyncio.Semaphore(concurrency)

        async def one() -> str:
            async with sem:
                sid = (await stub.OpenSession(svc.OpenSessionRequest())).session.session_id
                await stub.Append(svc.AppendRequest(session_id=sid, offset=0, input=types.Input(text=PIECE), top_k=5))
                return sid

        return list(await asyncio.gather(*(one() for _ in range(n))))


async def first_and_second(target: str, sids: list[str]) -> tuple[list[float], list[float]]:
    first, second = [], []
    async with grpc.aio.insecure_channel(target) as ch:
        stub = rpc.CellserveServiceStub(ch)
        for sid in sids:  # one at a time: latency, not throughput
            for k, out in enumerate((first, second)):
                req = svc.AppendRequest(session_id=sid, offset=len(PIECE) + k, input=types.Input(text="x"), top_k=5)
                t0 = time.perf_counter()
                await stub.Append(req)
                out.append(time.perf_counter() - t0)
    return first, second


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def record_bytes(url: str, deployment: str) -> float:
    import redis

    r = redis.Redis.from_url(url)
    keys = list(r.scan_iter(f"cellserve:{deployment}:*", count=1000))[:500]
    sizes = [r.strlen(k) for k in keys]
    r.close()
    return statistics.mean(sizes) if sizes else 0.0


def run(n: int, sample: int, model: str, tmp: str) -> dict[str, float]:
    redis_proc, url = start_redis(tmp)
    deployment = "bench" + secrets.token_hex(3)
    a = Replica(url, deployment, model, n, Path(tmp) / f"a-{n}.log")
    b = Replica(url, deployment, model, n, Path(tmp) / f"b-{n}.log")
    try:
        t0 = time.perf_counter()
        sids = asyncio.run(open_and_type(a.target, n))
        typed_s = time.perf_counter() - t0
        exit_s = a.stop()
        m = WROTE.search(a.log.read_text())
        if m is None or int(m.group(1)) != n:
            sys.exit(f"bench_handoff: A did not write its {n} sessions; see {a.log}")
        size = record_bytes(url, deployment)
        first, second = asyncio.run(first_and_second(b.target, sids[:sample]))
        return {
            "sessions": n,
            "open_and_type_s": typed_s,
            "drain_write_s": float(m.group(2)),
            "drain_exit_s": exit_s,
            "record_bytes": size,
            "handoff_p50_ms": pct(first, 0.5) * 1e3,
            "handoff_p99_ms": pct(first, 0.99) * 1e3,
            "held_p50_ms": pct(second, 0.5) * 1e3,
            "held_p99_ms": pct(second, 0.99) * 1e3,
        }
    finally:
        a.kill()
        b.kill()
        redis_proc.kill()
        redis_proc.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("sessions", nargs="*", type=int, default=[1000, 10000])
    p.add_argument("--sample", type=int, default=200, help="moved sessions whose first request is timed on B")
    p.add_argument("--model", default="python-lstm")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run(n, min(a.sample, n), a.model, tmp) for n in a.sessions]
    print(
        "| sessions | drain: write to Redis | drain: SIGTERM to exit | record | first request after the move "
        "p50 / p99 | held session p50 / p99 | sync at 60 s, per 1,000 sessions typing |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['sessions']:,} | {r['drain_write_s']:.2f} s | {r['drain_exit_s']:.2f} s | "
            f"{r['record_bytes'] / 1024:.1f} KiB | {r['handoff_p50_ms']:.1f} / {r['handoff_p99_ms']:.1f} ms | "
            f"{r['held_p50_ms']:.1f} / {r['held_p99_ms']:.1f} ms | "
            f"{r['record_bytes'] * 1000 / 60 / 1024:.0f} KiB/s |"
        )


if __name__ == "__main__":
    main()
