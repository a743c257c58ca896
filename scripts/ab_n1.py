"""N=1 keystroke latency, A/B in one run: two `cellserve serve` processes on the shipped models,
A from another source tree (the baseline), B from this one, each with one session typing one
character at a time on a stream. The keystrokes alternate between A and B (the order swapped
every round), so a busy machine slows both alike; the result is the ratio of the p50s.

    git archive main server | tar -x -C /tmp/base      # the baseline's server package
    .venv/bin/python scripts/ab_n1.py /tmp/base/server [SECONDS]
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time

import grpc
from cellserve_client._proto.cellserve.v1 import service_pb2 as svc
from cellserve_client._proto.cellserve.v1 import service_pb2_grpc as rpc
from cellserve_client._proto.cellserve.v1 import types_pb2 as types

Req = svc.SessionRequest


def start(pythonpath: str | None) -> tuple[subprocess.Popen[str], str]:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    args = ["--host", "127.0.0.1", "--port", "0", "--metrics-host", "127.0.0.1", "--metrics-port", "0"]
    server = subprocess.Popen(
        [sys.executable, "-m", "cellserve.cli", "serve", *args, "--cpu-threads", "1"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert server.stdout is not None
    for line in server.stdout:
        if m := re.search(r"listening on (\S+):(\d+)", line):
            return server, f"{m.group(1)}:{m.group(2)}"
    raise RuntimeError("the server exited before listening")


class Typist:
    def __init__(self, target: str) -> None:
        self.channel = grpc.aio.insecure_channel(target)
        self.call = rpc.CellserveServiceStub(self.channel).Session()
        self.offset = 0
        self.lat: list[float] = []

    async def open(self) -> None:
        await self.call.write(Req(request_id=1, open=Req.Open()))
        await self.call.read()

    async def key(self, record: bool) -> None:
        t0 = time.perf_counter()
        req = Req.Append(offset=self.offset, input=types.Input(text="a"))
        await self.call.write(Req(request_id=self.offset + 2, append=req))
        await self.call.read()
        if record:
            self.lat.append(time.perf_counter() - t0)
        self.offset += 1

    async def close(self) -> None:
        await self.call.done_writing()
        await self.channel.close()


async def ab(targets: tuple[str, str], seconds: float) -> tuple[list[float], list[float]]:
    a, b = Typist(targets[0]), Typist(targets[1])
    await a.open()
    await b.open()
    warm = time.monotonic() + 2.0
    end = warm + seconds
    n = 0
    while (now := time.monotonic()) < end:
        first, second = (a, b) if n % 2 == 0 else (b, a)
        await first.key(now > warm)
        await second.key(now > warm)
        n += 1
    await a.close()
    await b.close()
    return sorted(a.lat), sorted(b.lat)


def pct(lat: list[float], q: float) -> float:
    return lat[min(len(lat) - 1, int(len(lat) * q))] * 1e3


def main() -> None:
    base = sys.argv[1]
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 10.0
    servers = [start(base), start(None)]
    try:
        lat_a, lat_b = asyncio.run(ab((servers[0][1], servers[1][1]), seconds))
        for name, lat in (("A (baseline)", lat_a), ("B (this tree)", lat_b)):
            print(f"{name}: {len(lat)} keystrokes, p50 {pct(lat, 0.5):.2f} ms, p90 {pct(lat, 0.9):.2f} ms")
        print(f"p50 ratio B/A: {pct(lat_b, 0.5) / pct(lat_a, 0.5):.2f}")
    finally:
        for server, _ in servers:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
